"""advface.align"""
