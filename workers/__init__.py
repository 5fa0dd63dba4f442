"""The deployable reference worker: ``celery -A workers.app worker -Q critical|standard|optional``."""
