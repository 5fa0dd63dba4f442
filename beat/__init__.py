"""The deployable beat service: ``celery -A beat.app beat``."""
