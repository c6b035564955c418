"""http/middleware"""
