"""The exactly-once payments demo: ``python -m examples.demo`` from the repository root.

It starts a private Redis, two real ``celery worker`` processes and a payments workload
full of duplicates, SIGKILLs workers in the middle of it, and then counts the payment
rows: one per order, none twice, none lost.
"""
