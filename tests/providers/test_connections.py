"""Provider keys at rest: encrypted, never dumped in plaintext, rotatable; the defaults."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from accounts.models import Membership
from providers import selectors as provider_selectors
from providers import services as provider_services
from providers.crypto import decrypt
from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.models import ProviderConnection
from providers.specs import spec_for
from tests.chat.conftest import FAKE_KEY

pytestmark = pytest.mark.django_db

SECRET = "sk-proj-THISisAsecretKEY0123456789abcdWXYZ"


@pytest.fixture
def owner(alice, org_a) -> Membership:
    return Membership.objects.get(user=alice, organization=org_a)


@pytest.fixture
def connection(owner, project_a) -> ProviderConnection:
    return provider_services.connection_create(
        actor=owner, project=project_a, kind="openai", name="Team OpenAI", api_key=SECRET
    )


def dump() -> str:
    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    return out.getvalue()


def test_a_database_dump_holds_no_plaintext_key(connection):
    text = dump()

    assert SECRET not in text
    assert SECRET[-10:] not in text
    assert "sk-…WXYZ" in text  # the hint is all that is stored in clear
    assert decrypt(ProviderConnection.objects.get(pk=connection.pk).api_key_encrypted) == SECRET


def test_rotation_re_encrypts_every_row_and_keys_still_work(connection, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    before = ProviderConnection.objects.get(pk=connection.pk).api_key_encrypted
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]

    out = io.StringIO()
    call_command("rotate_encryption_keys", stdout=out)

    assert "Re-encrypted 1 provider key(s)." in out.getvalue()
    after = ProviderConnection.objects.get(pk=connection.pk).api_key_encrypted
    assert after != before
    assert Fernet(new_key.encode()).decrypt(after.encode()).decode() == SECRET
    settings.FIELD_ENCRYPTION_KEYS = [new_key]  # the old key can now be dropped
    assert decrypt(after) == SECRET


def test_a_key_no_configured_key_opens_gives_a_clear_error(connection, settings, project_a):
    provider_services.connection_model_add(actor=None, connection=connection, name="gpt-4o")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    from core.errors import ServiceError

    with pytest.raises(ServiceError, match="cannot be read with the configured encryption keys"):
        spec_for(project=project_a, model="gpt-4o")


def test_the_provider_spec_never_prints_the_key(connection, project_a):
    provider_services.connection_model_add(actor=None, connection=connection, name="gpt-4o")

    spec = spec_for(project=project_a, model="gpt-4o")

    assert spec.api_key == SECRET
    assert SECRET not in repr(spec)
    assert SECRET not in str(spec)


def test_every_install_has_the_local_model_and_new_projects_default_to_it(project_a):
    local = ProviderConnection.objects.get(organization=None, kind="local")

    assert list(local.models.values_list("name", flat=True)) == [LOCAL_MODEL_NAME]
    assert provider_selectors.default_model_name(project_a) == LOCAL_MODEL_NAME


def test_the_server_openai_key_becomes_a_shared_connection(settings, project_a):
    settings.OPENAI_API_KEY = "sk-server-0123456789abcdefSRVR"

    provider_services.connections_ensure_defaults()
    provider_services.connections_ensure_defaults()  # idempotent

    shared = ProviderConnection.objects.get(organization=None, kind="openai")
    assert shared.api_key_hint == "sk-…SRVR"
    assert "gpt-4o-mini" in provider_selectors.allowed_model_names(project_a)
    assert provider_selectors.default_model_name(project_a) == LOCAL_MODEL_NAME


def test_a_project_connection_is_not_visible_to_other_projects(connection, org_a, project_b):
    from tests.factories import ProjectFactory

    sibling = ProjectFactory(organization=org_a)

    assert connection not in provider_selectors.connections_for_project(sibling)
    assert connection not in provider_selectors.connections_for_project(project_b)


def test_an_allow_list_with_a_default(owner, project_a, connection):
    gpt = provider_services.connection_model_add(actor=None, connection=connection, name="gpt-4o")
    mini = provider_services.connection_model_add(
        actor=None, connection=connection, name="gpt-4o-mini"
    )

    provider_services.project_models_set(
        actor=owner, project=project_a, model_ids=[gpt.pk, mini.pk], default_id=mini.pk
    )

    assert provider_selectors.allowed_model_names(project_a) == ["gpt-4o-mini", "gpt-4o"]
    assert LOCAL_MODEL_NAME not in provider_selectors.allowed_model_names(project_a)


def test_deleting_a_connection_in_use_is_refused_naming_the_use(owner, project_a, connection):
    from core.errors import ServiceError

    gpt = provider_services.connection_model_add(actor=None, connection=connection, name="gpt-4o")
    provider_services.project_models_set(
        actor=owner, project=project_a, model_ids=[gpt.pk], default_id=gpt.pk
    )

    with pytest.raises(ServiceError, match="still in use by Project A: gpt-4o"):
        provider_services.connection_delete(actor=owner, connection=connection)


def test_members_cannot_create_connections(bob, org_a, project_a):
    from core.errors import ServiceError

    member = Membership.objects.get(user=bob, organization=org_a)
    with pytest.raises(ServiceError) as info:
        provider_services.connection_create(
            actor=member, project=project_a, kind="openai", name="x", api_key=FAKE_KEY
        )
    assert info.value.code == "forbidden"


def test_services_refuse_other_organizations_and_global_connections(owner, charlie, org_b):
    from core.errors import ServiceError

    local = ProviderConnection.objects.get(organization=None, kind="local")
    other = Membership.objects.get(user=charlie, organization=org_b)
    theirs = provider_services.connection_create(
        actor=other, project=None, kind="openai", name="B's", api_key=SECRET
    )

    for connection in (local, theirs):
        with pytest.raises(ServiceError) as info:
            provider_services.connection_update(actor=owner, connection=connection, name="x")
        assert info.value.code == "forbidden"
        with pytest.raises(ServiceError):
            provider_services.connection_delete(actor=owner, connection=connection)
        with pytest.raises(ServiceError):
            provider_services.connection_model_add(
                actor=owner, connection=connection, name="gpt-4o"
            )
    assert ProviderConnection.objects.filter(pk__in=[local.pk, theirs.pk]).count() == 2
