"""lmforge.tasks"""
