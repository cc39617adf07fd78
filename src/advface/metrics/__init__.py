"""advface.metrics"""
