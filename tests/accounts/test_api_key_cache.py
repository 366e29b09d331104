"""Keys are kept in memory between calls (core.config_cache): what is kept must never let a key
through that the database would refuse, and guesses must not fill the memory."""

from datetime import timedelta

import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory
from django.utils import timezone

from accounts import api_keys
from accounts.models import ApiKey
from core import config_cache
from tests.conftest import membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def created(alice, org_a, project_a) -> api_keys.CreatedKey:
    return api_keys.api_key_create(
        actor=membership(alice, org_a),
        project=project_a,
        name="CI bot",
        scopes=["chat"],
        expires_at=timezone.now() + timedelta(days=1),
    )


def test_a_kept_key_is_read_once(created, django_assert_num_queries):
    assert api_keys.api_key_authenticate(created.plaintext) == created.key

    with django_assert_num_queries(0):
        kept = api_keys.api_key_authenticate(created.plaintext)

    assert kept == created.key
    assert kept.project.organization_id == created.key.project.organization_id


def test_a_kept_key_revoked_on_its_page_is_refused_at_the_next_call(created, alice, org_a):
    assert api_keys.api_key_authenticate(created.plaintext) is not None

    api_keys.api_key_revoke(actor=membership(alice, org_a), key=ApiKey.objects.get())

    assert api_keys.api_key_authenticate(created.plaintext) is None


def test_a_kept_key_revoked_by_staff_in_the_admin_is_refused_at_the_next_call(created, admin_user):
    assert api_keys.api_key_authenticate(created.plaintext) is not None
    request = RequestFactory().post("/admin/accounts/apikey/")
    request.user = admin_user

    site._registry[ApiKey].revoke(request, ApiKey.objects.all())  # a queryset update()

    assert ApiKey.objects.get().revoked_at is not None
    assert api_keys.api_key_authenticate(created.plaintext) is None


def test_a_kept_key_that_expires_meanwhile_is_refused(created, monkeypatch):
    assert api_keys.api_key_authenticate(created.plaintext) is not None
    later = timezone.now() + timedelta(days=2)

    monkeypatch.setattr(timezone, "now", lambda: later)

    assert api_keys.api_key_authenticate(created.plaintext) is None


def test_unknown_keys_are_not_kept(created):
    guesses = [api_keys.generate_key() for _ in range(50)]

    for guess in guesses:
        assert api_keys.api_key_authenticate(guess) is None

    kept = [key for key in config_cache._entries if key[0] == "api-key"]
    assert kept == []  # a miss is read again, never remembered
