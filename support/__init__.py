"""Fixtures shared by tests/ and bench/: demo digits in the training format, the tiny model, a deployed local endpoint.

Not shipped and not imported by tasks/: test and benchmark support only.
"""
