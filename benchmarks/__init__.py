"""Meridian's benchmarks: ratios measured in one run on one machine, never timed tests.

Run ``.venv/bin/python -m benchmarks --help``.
"""
