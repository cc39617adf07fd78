"""advface.identify"""
