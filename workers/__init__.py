"""The deployable reference worker: ``python -m workers critical|standard|optional``.

That execs ``celery -A workers.app worker -Q <tier> -n <tier>@%h`` with the tier's pool
size from the environment (see :mod:`workers.tiers`).
"""
