"""advface.training"""
