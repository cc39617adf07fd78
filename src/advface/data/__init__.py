"""advface.data"""
