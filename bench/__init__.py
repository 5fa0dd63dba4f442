"""Benchmarks of celery-reliable against plain Celery and celery-once.

Run ``python -m bench.run [--quick]`` from the repository root; see ``bench/README.md``.
"""
