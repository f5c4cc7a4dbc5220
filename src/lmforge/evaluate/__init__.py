"""lmforge.evaluate"""
