"""Project API keys: their shape and checksum, what is stored of them, authentication."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts import api_keys
from accounts.models import ApiKey
from core.errors import ServiceError
from tests.conftest import membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def created(alice, org_a, project_a) -> api_keys.CreatedKey:
    return api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="CI bot", scopes=["chat"]
    )


def test_the_key_has_a_recognisable_shape_and_a_checksum():
    key = api_keys.generate_key()

    assert key.startswith("lgw_")
    assert len(key) == api_keys.KEY_LENGTH == 42
    assert api_keys.is_well_formed(key)
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not api_keys.is_well_formed(typo)
    assert not api_keys.is_well_formed("sk-" + key[3:])
    assert len({api_keys.generate_key() for _ in range(100)}) == 100


def test_only_a_digest_prefix_and_last_four_are_stored(created):
    key = ApiKey.objects.get()
    out = io.StringIO()
    call_command("dumpdata", "accounts.apikey", stdout=out)

    assert created.plaintext not in out.getvalue()
    assert key.digest == api_keys.digest_of(created.plaintext)
    assert key.display == f"{created.plaintext[:12]}…{created.plaintext[-4:]}"
    assert key.scope_list() == ["chat"]


def test_a_key_authenticates_and_records_its_use_cheaply(created):
    first = api_keys.api_key_authenticate(created.plaintext)
    used_at = ApiKey.objects.get().last_used_at

    second = api_keys.api_key_authenticate(created.plaintext)

    assert first == second == created.key
    assert used_at is not None
    assert ApiKey.objects.get().last_used_at == used_at  # not rewritten within the minute


def test_malformed_unknown_revoked_and_expired_keys_all_fail_alike(created, alice, org_a):
    unknown = api_keys.generate_key()
    assert api_keys.api_key_authenticate("lgw_nonsense") is None
    assert api_keys.api_key_authenticate(unknown) is None

    api_keys.api_key_revoke(actor=membership(alice, org_a), key=created.key)
    assert api_keys.api_key_authenticate(created.plaintext) is None

    later = api_keys.api_key_create(
        actor=membership(alice, org_a),
        project=created.key.project,
        name="short-lived",
        scopes=["read"],
        expires_at=timezone.now() + timedelta(days=1),
    )
    ApiKey.objects.filter(pk=later.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_keys.api_key_authenticate(later.plaintext) is None


def test_members_cannot_make_or_revoke_keys(bob, org_a, project_a, created):
    with pytest.raises(ServiceError) as info:
        api_keys.api_key_create(
            actor=membership(bob, org_a), project=project_a, name="x", scopes=["chat"]
        )
    assert info.value.code == "forbidden"
    with pytest.raises(ServiceError):
        api_keys.api_key_revoke(actor=membership(bob, org_a), key=created.key)


def test_an_outsider_cannot_make_keys_for_another_organizations_project(charlie, org_b, project_a):
    with pytest.raises(ServiceError):
        api_keys.api_key_create(
            actor=membership(charlie, org_b), project=project_a, name="x", scopes=["chat"]
        )


@pytest.mark.parametrize("scopes", [[], ["admin"], ["chat", "write"]])
def test_scopes_are_checked(alice, org_a, project_a, scopes):
    with pytest.raises(ServiceError, match="at least one scope"):
        api_keys.api_key_create(
            actor=membership(alice, org_a), project=project_a, name="x", scopes=scopes
        )
