"""The settings profiles, the demo command and the deploy checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from accounts.models import Membership, Organization, Project, User

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "SECRET_KEY": "x" * 30 + "-production-secret-with-enough-variety-0123456789",
    "DATABASE_URL": "postgres://gateway:pw@127.0.0.1:5432/gateway",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "gateway.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://gateway.example.com",
    "EMAIL_URL": "smtp+tls://mailer:pw@smtp.example.com:587",
    "FIELD_ENCRYPTION_KEYS": "3s_AUNnaaNuG5IwIAsFIlviEFWHg9LF_oecoJKLE5bc=",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(  # noqa: S603 - our own manage.py with fixed arguments
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_production_profile_passes_check_deploy():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={**PRODUCTION_ENV, "SECURE_HSTS_PRELOAD": "true"},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_hsts_preload_the_one_warning_left_is_the_documented_one():
    result = manage("check", "--deploy", env=PRODUCTION_ENV)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "(security." in line]
    assert [w.split(")")[0] for w in warnings] == ["?: (security.W021"]
    assert "security.W021" in (ROOT / "README.md").read_text()


def test_the_production_profile_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}

    result = manage("check", env=env)

    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_the_embedded_profile_needs_no_environment():
    result = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CHANNEL_LAYERS['default']['BACKEND'], "
        "s.EMAIL_BACKEND, s.DEBUG)",
        env={},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "core.channel_layers.InMemoryChannelLayer",
        "django.core.mail.backends.console.EmailBackend",
        "True",
    ]


@pytest.mark.django_db
def test_the_demo_command_is_idempotent_and_prints_the_login(capsys, settings):
    settings.DEBUG = True
    call_command("seed_demo")
    call_command("seed_demo")

    out = capsys.readouterr().out
    assert "demo@example.com" in out
    assert "demo-password" in out
    user = User.objects.get(email="demo@example.com")
    assert user.check_password("demo-password")
    assert Organization.objects.count() == 1
    assert Project.objects.count() == 1
    assert Membership.objects.get(user=user).role == "owner"


@pytest.mark.django_db
def test_the_demo_command_refuses_when_debug_is_off(settings):
    from django.core.management.base import CommandError

    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG off"):
        call_command("seed_demo")
