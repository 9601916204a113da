"""Benchmarks of mra-live: speed (``benchmarks/fps.py``) and animation quality (``benchmarks/quality.py``).

They are scripts (``python benchmarks/fps.py --help``, ``python -m benchmarks.quality --help``) that
run from the source tree, as are ``python -m benchmarks.export_bench`` (ONNX Runtime against
PyTorch, per graph), ``python -m benchmarks.cuda_check`` (the CUDA path) and ``python -m
benchmarks.train_bench`` (training step speed); the helper modules here (timing, cost, runners, landmarks, metrics,
clips) are small and importable for tests.
"""
