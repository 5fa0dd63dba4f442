"""Idempotency keys and their two-tier (Redis + database) store."""
