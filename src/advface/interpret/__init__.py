"""advface.interpret"""
