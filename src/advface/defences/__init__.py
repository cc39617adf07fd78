"""advface.defences"""
