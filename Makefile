# celery-reliable: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo test lint unit soak bench bench-quick services clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e ".[dev,bench]"
	touch $@

services:
	@bash scripts/services.sh

## The demo: a worker per tier, beat and Flower; six phases of faults, then an audit (stays up on a terminal).
demo: $(VENV)/.installed
	$(PY) -m examples.demo $(DEMO_ARGS)

## The tests: lint, types, then unit, integration and fault tests on real services.
test: $(VENV)/.installed services lint
	$(PY) -m pytest -ra --durations=15

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check celery_reliable tests examples workers beat bench
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit -q

## Long fault soaks (minutes), not part of `make test`.
soak: $(VENV)/.installed services
	$(PY) -m pytest -m soak -ra

bench: $(VENV)/.installed services
	$(PY) -m bench.run

bench-quick: $(VENV)/.installed services
	$(PY) -m bench.run --quick

## Uncontended lock acquire+release pairs/s against redis-py, python-redis-lock, pottery.
.PHONY: bench-locks
bench-locks: $(VENV)/.installed services
	$(PY) -m bench.locks

## Retries and dead letters: Redis commands per retry, retries/s, dead-letter inserts/s, RSS with 100k retries waiting.
.PHONY: bench-retries
bench-retries: $(VENV)/.installed services
	$(PY) -m bench.retries

## Outbox relay: messages/s from commit to broker, commit-to-publish latency p50/p99 (1 s beat vs NOTIFY).
.PHONY: bench-outbox
bench-outbox: $(VENV)/.installed services
	$(PY) -m bench.outbox

## Rate-limit decisions/s and Redis work per decision against the `limits` library.
.PHONY: bench-ratelimits
bench-ratelimits: $(VENV)/.installed services
	$(PY) -m bench.ratelimits

## Circuit breaker calls/s against pybreaker (memory, Redis storage) and bulkhead acquire+release against redis-py Lock.
.PHONY: bench-guards
bench-guards: $(VENV)/.installed services
	$(PY) -m bench.guards

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
