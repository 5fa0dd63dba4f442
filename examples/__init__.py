"""Runnable, documented examples of celery-reliable (run them from the repository root).

* ``python -m examples.demo``: real workers, SIGKILLs, duplicates, and a proof of
  exactly-once payments.
* ``python -m examples.quickstart``: the README quick start, end to end.
"""
