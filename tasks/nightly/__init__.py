"""nightly"""
