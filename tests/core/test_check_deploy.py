"""The production profile with its operations settings (metrics, logs): `check --deploy` stays
clean, what it cannot run with is refused at start, and it logs JSON lines.

(tests/test_setup.py checks the profile as the README's minimal environment sets it, and the
one warning it leaves on purpose, security.W021.)"""

from __future__ import annotations

import json

from tests.test_setup import PRODUCTION_ENV, manage

METRICS_TOKEN = "m" * 40


def test_check_deploy_is_clean_with_metrics_and_several_processes(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            **PRODUCTION_ENV,
            "SECURE_HSTS_PRELOAD": "true",
            "METRICS_TOKEN": METRICS_TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        },
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_a_guessable_metrics_token_is_refused_at_start():
    result = manage("check", env={**PRODUCTION_ENV, "METRICS_TOKEN": "secret"})

    assert result.returncode != 0
    assert "METRICS_TOKEN must be at least 32 characters" in result.stderr


def test_a_missing_multiprocess_directory_is_refused_at_start(tmp_path):
    result = manage(
        "check", env={**PRODUCTION_ENV, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "nope")}
    )

    assert result.returncode != 0
    assert "PROMETHEUS_MULTIPROC_DIR" in result.stderr


def test_the_production_profile_logs_json_lines_and_counts_its_queries():
    result = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "import logging; from django.conf import settings as s; "
        "logging.getLogger('probe').warning('ready in %s ms', 12); "
        "print(s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'])",
        env=PRODUCTION_ENV,
    )

    assert result.returncode == 0, result.stderr
    [line] = [json.loads(text) for text in result.stderr.splitlines() if "probe" in text]
    assert {key: line[key] for key in ("event", "level", "logger")} == {
        "event": "ready in 12 ms",
        "level": "warning",
        "logger": "probe",
    }
    assert line["timestamp"].endswith("Z")
    # django-prometheus' database backend and our counted cache (core.metrics).
    assert result.stdout.split() == [
        "django_prometheus.db.backends.postgresql",
        "core.metrics.MeteredRedisCache",
    ]
