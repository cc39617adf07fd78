"""advface.attacks"""
