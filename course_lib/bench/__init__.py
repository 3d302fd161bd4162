"""Benchmarks: `python -m course_lib.bench <name>` runs course_lib/bench/<name>.py's main().

Speed claims live here, measured side by side in one run and printed as ratios, never in timed unit tests.
"""
