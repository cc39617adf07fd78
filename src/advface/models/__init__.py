"""advface.models"""
