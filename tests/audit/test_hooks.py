"""Every service that changes money or access records it: who, where, before and after; a
change the service refuses records nothing."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import api_keys
from accounts import services as account_services
from accounts.models import ApiKey, Invitation, Role, hash_token
from audit.models import AuditEvent
from billing import budget_services
from billing.models import Budget
from chat import moderation, personas
from core.errors import ServiceError
from providers import services as provider_services
from providers.models import ConnectionModel, ProviderConnection
from tests.audit.conftest import events, only
from tests.conftest import membership
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SECRET = "sk-proj-THISisAsecretKEY0123456789abcdWXYZ"


def everything_recorded() -> str:
    """Every stored field of every event, as one text: for "the secret is nowhere"."""
    return json.dumps(list(AuditEvent.objects.values()), default=str)


# --- API keys ----------------------------------------------------------------------------------


def test_creating_a_key_records_it_but_never_its_secret(owner, org_a, project_a, alice):
    created = api_keys.api_key_create(
        actor=owner, project=project_a, name="CI bot", scopes=["chat"], requests_per_minute=30
    )

    event = only(org_a, action="api_key.created")
    assert (event.actor, event.actor_label) == (alice, "alice@example.com")
    assert (event.organization, event.project) == (org_a, project_a)
    assert (event.target_type, event.target_id) == ("accounts.apikey", str(created.key.pk))
    assert event.changes == {
        "name": [None, "CI bot"],
        "scopes": [None, "chat"],
        "requests_per_minute": [None, 30],
    }
    assert created.plaintext not in everything_recorded()
    assert created.key.digest not in everything_recorded()


def test_revoking_a_key_records_it_once(owner, org_a, project_a):
    key = api_keys.api_key_create(actor=owner, project=project_a, name="k", scopes=["chat"]).key

    api_keys.api_key_revoke(actor=owner, key=key)
    api_keys.api_key_revoke(actor=owner, key=key)  # already revoked: nothing changes

    event = only(org_a, action="api_key.revoked")
    assert event.changes == {"revoked_at": [None, key.revoked_at.isoformat()]}


def test_a_member_refused_a_key_records_nothing(bob, org_a, project_a):
    with pytest.raises(ServiceError):
        api_keys.api_key_create(
            actor=membership(bob, org_a), project=project_a, name="mine", scopes=["chat"]
        )

    assert events() == []


# --- members, invitations, the organization ----------------------------------------------------


def test_inviting_records_the_address_and_role(owner, org_a):
    result = account_services.member_invite(
        actor=owner, email="Dana@Example.com", role="admin", site_url="http://testserver/"
    )

    event = only(org_a, action="member.invited")
    assert event.target_label == "dana@example.com"
    assert event.target_id == str(result.invitation.pk)
    assert event.changes == {"email": [None, "dana@example.com"], "role": [None, "admin"]}
    assert result.invitation.token_digest not in everything_recorded()


def test_an_invitation_refused_records_nothing(bob, org_a):
    with pytest.raises(ServiceError):
        account_services.member_invite(
            actor=membership(bob, org_a), email="x@example.com", role="member", site_url="/"
        )

    assert events() == []


def invitation(org_a, alice, email="dana@example.com", role=Role.MEMBER) -> Invitation:
    return Invitation.objects.create(
        organization=org_a,
        email=email,
        role=role,
        token_digest=hash_token("the-token"),
        invited_by=alice,
        expires_at=timezone.now() + timedelta(days=7),
    )


def test_resending_and_revoking_an_invitation_are_recorded(owner, org_a, alice):
    sent = invitation(org_a, alice)

    account_services.invitation_resend(actor=owner, invitation=sent, site_url="/")
    account_services.invitation_revoke(actor=owner, invitation=sent)

    assert [e.action for e in events(org_a)] == ["invitation.resent", "invitation.revoked"]
    assert only(org_a, action="invitation.revoked").changes == {
        "email": ["dana@example.com", None],
        "role": ["member", None],
    }


def test_joining_by_an_invitation_is_recorded_as_the_newcomer(org_a, alice):
    invitation(org_a, alice, role=Role.ADMIN)
    dana = UserFactory(email="dana@example.com")

    account_services.invitation_accept(token="the-token", user=dana)

    event = only(org_a, action="member.joined")
    assert (event.actor, event.target_label) == (dana, "dana@example.com")
    assert event.changes == {"role": [None, "admin"]}


def test_a_role_change_records_before_and_after(owner, org_a, bob):
    account_services.membership_change_role(
        actor=owner, membership=membership(bob, org_a), role=Role.ADMIN
    )

    event = only(org_a, action="member.role_changed")
    assert event.changes == {"role": ["member", "admin"]}
    assert (event.target_type, event.target_id) == ("accounts.user", str(bob.pk))
    assert event.target_label == "bob@example.com"


def test_a_refused_role_change_records_nothing(owner, org_a):
    with pytest.raises(ServiceError, match="at least one owner"):
        account_services.membership_change_role(actor=owner, membership=owner, role=Role.MEMBER)

    assert events() == []


def test_removing_a_member_is_recorded(owner, org_a, bob):
    account_services.membership_remove(actor=owner, membership=membership(bob, org_a))

    event = only(org_a, action="member.removed")
    assert (event.target_label, event.changes) == ("bob@example.com", {"role": ["member", None]})


def test_the_two_factor_requirement_is_recorded_only_when_it_changes(owner, org_a, alice):
    with pytest.raises(ServiceError):  # alice has no second factor yet: refused
        account_services.organization_set_two_factor_requirement(actor=owner, required=True)
    assert events() == []
    TOTPDevice.objects.create(user=alice, name="phone", confirmed=True)

    account_services.organization_set_two_factor_requirement(actor=owner, required=True)
    account_services.organization_set_two_factor_requirement(actor=owner, required=True)

    event = only(org_a, action="organization.two_factor_changed")
    assert event.changes == {"require_two_factor": [False, True]}


def test_deleting_a_project_is_recorded_and_keeps_its_name(owner, org_a, project_a):
    account_services.project_delete(actor=owner, project=project_a)

    event = only(org_a, action="project.deleted")
    assert (event.project, event.project_name) == (None, "Project A")


# --- connections -------------------------------------------------------------------------------


def connection(owner, project_a) -> ProviderConnection:
    return provider_services.connection_create(
        actor=owner, project=project_a, kind="openai", name="Team OpenAI", api_key=SECRET
    )


def test_a_new_connection_shows_its_key_only_as_changed(owner, org_a, project_a):
    made = connection(owner, project_a)

    event = only(org_a, action="connection.created")
    assert (event.project, event.target_id) == (project_a, str(made.pk))
    assert event.changes["name"] == [None, "Team OpenAI"]
    assert event.changes["api_key"] == "changed"
    assert SECRET not in everything_recorded()
    assert SECRET[-4:] not in everything_recorded()  # not even the hint


def test_a_connection_change_records_what_changed(owner, org_a, project_a):
    made = connection(owner, project_a)

    provider_services.connection_update(
        actor=owner,
        connection=made,
        name="Renamed",
        api_key="sk-another-secret-key-1234",
        timeout=30,
    )

    event = only(org_a, action="connection.updated")
    assert event.changes == {
        "name": ["Team OpenAI", "Renamed"],
        "timeout": [60.0, 30],
        "api_key": "changed",
    }
    assert "sk-another" not in everything_recorded()


def test_a_refused_connection_change_records_nothing(owner, org_a, bob, project_a):
    made = connection(owner, project_a)

    with pytest.raises(ServiceError):
        provider_services.connection_update(
            actor=membership(bob, org_a), connection=made, name="Mine now"
        )
    with pytest.raises(ServiceError):
        provider_services.connection_create(
            actor=owner, project=project_a, kind="openai_compatible", name="no address"
        )

    assert [e.action for e in events()] == ["connection.created"]


def test_models_added_and_removed_by_hand_are_recorded(owner, org_a, project_a):
    made = connection(owner, project_a)
    provider_services.connection_model_add(actor=None, connection=made, name="listed-by-server")

    model = provider_services.connection_model_add(actor=owner, connection=made, name="gpt-4o")
    provider_services.connection_model_remove(actor=owner, model=model)

    assert [e.action for e in events(org_a)] == [
        "connection.created",
        "connection_model.added",
        "connection_model.removed",
    ]
    assert only(org_a, action="connection_model.added").changes == {
        "connection": [None, "Team OpenAI"],
        "model": [None, "gpt-4o"],
    }


def test_a_model_in_use_is_not_removed_nor_recorded(owner, org_a, project_a):
    made = connection(owner, project_a)
    model = provider_services.connection_model_add(actor=owner, connection=made, name="gpt-4o")
    provider_services.project_models_set(
        actor=owner, project=project_a, model_ids=[model.pk], default_id=model.pk
    )

    with pytest.raises(ServiceError):
        provider_services.connection_model_remove(actor=owner, model=model)
    with pytest.raises(ServiceError):
        provider_services.connection_delete(actor=owner, connection=made)

    assert ConnectionModel.objects.filter(pk=model.pk).exists()
    assert [e.action for e in events(org_a)] == [
        "connection.created",
        "connection_model.added",
        "project_models.changed",
    ]
    assert only(org_a, action="project_models.changed").changes == {
        "models": [[], ["gpt-4o"]],
        "default": [None, "gpt-4o"],
    }


def test_deleting_a_connection_is_recorded(owner, org_a, project_a):
    made = connection(owner, project_a)

    provider_services.connection_delete(actor=owner, connection=made)

    event = only(org_a, action="connection.deleted")
    assert (event.target_label, event.changes["name"]) == ("Team OpenAI", ["Team OpenAI", None])


def test_a_preset_connection_is_recorded(owner, org_a, project_a):
    provider_services.connection_create_preset(
        actor=owner, project=project_a, preset="gemini", api_key="AIza-secret-gemini-key"
    )

    event = only(org_a)  # its catalog models are part of the preset, not separate events
    assert (event.action, event.changes["name"]) == ("connection.created", [None, "Gemini"])
    assert "AIza" not in everything_recorded()


# --- budgets and rate limits -------------------------------------------------------------------


def test_a_budget_is_recorded_from_creation_to_deletion(owner, org_a, project_a):
    budget = budget_services.budget_create(
        actor=owner, scope=Budget.Scope.PROJECT, project=project_a, limit_usd=Decimal("25")
    )
    budget = budget_services.budget_update(
        actor=owner, budget=budget, limit_usd=Decimal("40.50"), soft_thresholds=[90]
    )
    budget_services.budget_update(actor=owner, budget=budget, limit_usd=Decimal("40.5"))  # same
    budget_services.budget_delete(actor=owner, budget=budget)

    created, updated, deleted = events(org_a)
    assert (created.action, updated.action, deleted.action) == (
        "budget.created",
        "budget.updated",
        "budget.deleted",
    )
    assert created.project == project_a
    assert created.changes["limit_usd"] == [None, "25"]
    assert created.changes["project"] == [None, str(project_a)]
    assert updated.changes == {
        "limit_usd": ["25", "40.5"],
        "soft_thresholds": ["50,80,100", "90"],
    }
    assert deleted.changes["limit_usd"] == ["40.5", None]


def test_a_refused_budget_change_records_nothing(owner, org_a, bob):
    budget = budget_services.budget_create(actor=owner, scope="organization", limit_usd=10)

    with pytest.raises(ServiceError):
        budget_services.budget_update(actor=owner, budget=budget, limit_usd=Decimal("-1"))
    with pytest.raises(ServiceError):
        budget_services.budget_delete(actor=membership(bob, org_a), budget=budget)

    assert [e.action for e in events()] == ["budget.created"]


def test_rate_limits_record_before_and_after(owner, org_a, project_a):
    budget_services.rate_limit_set(
        actor=owner, project=project_a, requests_per_minute=60, tokens_per_minute=None
    )
    budget_services.rate_limit_set(
        actor=owner, project=project_a, requests_per_minute=None, tokens_per_minute=None
    )
    with pytest.raises(ServiceError):
        budget_services.rate_limit_set(
            actor=owner, project=project_a, requests_per_minute=0, tokens_per_minute=None
        )

    first, second = events(org_a, action="rate_limit.changed")
    assert first.changes == {"requests_per_minute": [None, 60]}
    assert second.changes == {"requests_per_minute": [60, None]}
    assert first.target_id == str(project_a.pk)


def test_a_keys_own_rate_limits_are_recorded(owner, org_a, project_a):
    key = api_keys.api_key_create(actor=owner, project=project_a, name="k", scopes=["chat"]).key

    budget_services.api_key_rate_limits_set(
        actor=owner, key=key, requests_per_minute=10, tokens_per_minute=1000
    )

    event = only(org_a, action="rate_limit.changed")
    assert (event.target_type, event.target_id) == ("accounts.apikey", str(key.pk))
    assert event.changes == {"requests_per_minute": [None, 10], "tokens_per_minute": [None, 1000]}
    assert ApiKey.objects.get(pk=key.pk).requests_per_minute == 10


# --- personas and moderation -------------------------------------------------------------------


def test_personas_are_recorded_with_their_before_and_after(owner, org_a, project_a, alice):
    persona = personas.persona_create(
        project=project_a, changes={"name": "Lawyer", "tag": "law"}, actor=owner
    )
    personas.persona_update(persona=persona, changes={"system_prompt": "Be precise."}, actor=owner)
    personas.persona_delete(persona=persona, actor=owner)

    created, updated, deleted = events(org_a)
    assert created.action == "persona.created"
    assert created.changes["tag"] == [None, "law"]
    assert (updated.action, updated.changes) == (
        "persona.updated",
        {"system_prompt": ["", "Be precise."]},
    )
    assert (deleted.action, deleted.actor) == ("persona.deleted", alice)


def test_a_refused_persona_records_nothing(project_a, owner):
    with pytest.raises(ServiceError):  # the shipped @chatbot has the tag
        personas.persona_create(project=project_a, changes={"name": "X", "tag": "chatbot"})
    persona = personas.personas_for(project_a)[0]
    with pytest.raises(ServiceError):
        personas.persona_update(persona=persona, changes={"color": "red"}, actor=owner)

    assert events() == []


def test_moderation_changes_are_recorded(owner, org_a, bob, project_a):
    moderation.moderation_update(
        actor=owner, project=project_a, enabled=True, check_replies=False, patterns="spam: buy"
    )
    with pytest.raises(ServiceError):
        moderation.moderation_update(
            actor=owner, project=project_a, enabled=True, check_replies=True, patterns="bad: ("
        )
    with pytest.raises(ServiceError):
        moderation.moderation_update(
            actor=membership(bob, org_a),
            project=project_a,
            enabled=False,
            check_replies=False,
            patterns="",
        )

    event = only(org_a)
    assert (event.action, event.project) == ("moderation.changed", project_a)
    assert event.changes == {
        "moderation_enabled": [False, True],
        "moderation_patterns": ["", "spam: buy"],
    }
