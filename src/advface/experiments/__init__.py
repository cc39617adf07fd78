"""advface.experiments"""
