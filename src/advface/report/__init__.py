"""advface.report"""
