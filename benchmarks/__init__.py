"""Benchmarks of mra-live: speed (``benchmarks/fps.py``) and animation quality (``benchmarks/quality.py``).

They are scripts (``python benchmarks/fps.py --help``, ``python -m benchmarks.quality --help``) that
run from the source tree; the helper modules here (timing, cost, runners, landmarks, metrics,
clips) are small and importable for tests.
"""
