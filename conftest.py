"""Shared pytest set-up for unit tests and notebook runs (nbval)."""
import os

# Notebook kernels inherit this environment: widgets draw their static fallback (no frontend under nbval),
# and hashing is fixed so printed outputs are reproducible.
os.environ.setdefault("COURSE_WIDGETS", "static")
os.environ.setdefault("PYTHONHASHSEED", "0")
