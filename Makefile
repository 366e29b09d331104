# The two commands a newcomer needs: `make run` and `make test` (see README.md).
# Each creates or reuses .venv, installs the pinned requirements when they changed, and migrates.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
FAKE_UPSTREAM_PORT ?= 8001
export FAKE_UPSTREAM_PORT

.PHONY: run test lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.run-deps: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

# Embedded default: SQLite, in-memory channel layer, a Celery worker on a file-system broker,
# the fake OpenAI upstream the chat talks to until the local model lands, and Daphne on http://$(HOST):$(PORT)/ and a demo login printed below.
run: $(VENV)/.run-deps
	$(PY) manage.py migrate --noinput
	@trap 'kill $$worker $$upstream 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/celery -A config worker --pool=solo --loglevel=info >> var/celery-worker.log 2>&1 & \
	worker=$$!; \
	echo "Celery worker started (log: var/celery-worker.log)"; \
	$(PY) manage.py run_fake_upstream --port $(FAKE_UPSTREAM_PORT) >> var/fake-upstream.log 2>&1 & \
	upstream=$$!; \
	echo "Fake OpenAI upstream on 127.0.0.1:$(FAKE_UPSTREAM_PORT) (log: var/fake-upstream.log)"; \
	$(PY) manage.py seed_demo --url http://$(HOST):$(PORT)/ && \
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) config.asgi:application

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check .

# Lint, Django's system checks, no missing migrations, then the test suite.
test: $(VENV)/.test-deps
	$(VENV)/bin/ruff check .
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py check
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/pytest
