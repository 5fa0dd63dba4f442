# The image every service in docker-compose.yml runs: celery-reliable (installed as a
# package, with Flower), the reference worker (workers/) and the beat service (beat/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

# The library first, so this layer is rebuilt only when the library changes.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY celery_reliable ./celery_reliable
RUN pip install ".[flower]" && rm -rf /src/build /src/*.egg-info

# The deployable code, importable as workers.app and beat.app (PYTHONPATH above).
WORKDIR /app
COPY workers ./workers
COPY beat ./beat

# Celery warns loudly when run as root; run as an unprivileged user.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app celery
USER celery

CMD ["celery", "-A", "workers.app", "worker", "-Q", "standard", "-n", "standard@%h", "-l", "info"]
