"""The models that left chat (connections, their models, the project allow-list to providers;
Idempotency-Key answers to core) keep every row: a database populated as on the last commit
before the move is migrated to the new layout, and everything is found through the new models.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader

# The last migration of each app before the move: what a database of that day has applied.
BEFORE_THE_MOVE = [
    ("accounts", "0004_apikey_requests_per_minute_apikey_tokens_per_minute"),
    ("chat", "0006_idempotency_streams_and_people"),
    ("billing", "0005_budget_api_key"),
]
PROVIDER_KEY = "sk-proj-moved-with-its-row-0123456789abcd"
MOVED = {
    "providerconnection": "providers",
    "connectionmodel": "providers",
    "projectmodel": "providers",
    "idempotentrequest": "core",
}


def _latest() -> list[tuple[str, str]]:
    return sorted(MigrationLoader(connection).graph.leaf_nodes())


def _populate(apps: Any) -> dict[str, Any]:
    """A small install as the old layout stored it, through the models of that day."""
    from providers.crypto import encrypt, key_hint

    get = apps.get_model
    user = get("accounts", "User").objects.create(email="dana@example.com", password="!")
    org = get("accounts", "Organization").objects.create(name="Org", slug="org")
    get("accounts", "Membership").objects.create(user=user, organization=org, role="owner")
    project = get("accounts", "Project").objects.create(organization=org, name="P", slug="p")
    key = get("accounts", "ApiKey").objects.create(
        project=project, name="ci", prefix="lgw_abcdefgh", digest="d" * 64, last4="wxyz"
    )
    connection_row = get("chat", "ProviderConnection").objects.create(
        organization=org,
        project=project,
        kind="openai",
        name="OpenAI",
        api_key_encrypted=encrypt(PROVIDER_KEY),
        api_key_hint=key_hint(PROVIDER_KEY),
    )
    model = get("chat", "ConnectionModel").objects.create(
        connection=connection_row, name="gpt-4o", context_window=128_000, supports_tools=True
    )
    allowed = get("chat", "ProjectModel").objects.create(
        project=project, model=model, name="gpt-4o", is_default=True
    )
    conversation = get("chat", "Conversation").objects.create(
        project=project, owner=user, model="gpt-4o", title="Moved"
    )
    reply = get("chat", "Message").objects.create(
        conversation=conversation, role="assistant", content="Hi", model="gpt-4o"
    )
    price = get("billing", "ModelPrice").objects.get(model="gpt-4o*")
    ledger = get("billing", "UsageRecord").objects.create(
        organization=org,
        project=project,
        user=user,
        api_key=key,
        conversation=conversation,
        message=reply,
        connection=connection_row,
        model="gpt-4o",
        prompt_tokens=1000,
        completion_tokens=100,
        cost=Decimal("0.003500000000"),
        price=price,
        status="ok",
    )
    by_key = get("chat", "IdempotentRequest").objects.create(
        api_key=key, key="k-1", body_digest="a" * 64, status_code=200, response={"id": "x"}
    )
    by_person = get("chat", "IdempotentRequest").objects.create(
        user=user, key="k-2", body_digest="b" * 64, status_code=200, stream_body="data: {}\n\n"
    )
    # What post_migrate had made of the old layout: content types, their permissions, and a
    # staff group that was given one of them.
    content_type = get("contenttypes", "ContentType")
    permission = get("auth", "Permission")
    types = {name: content_type.objects.create(app_label="chat", model=name) for name in MOVED}
    can_change = permission.objects.create(
        content_type=types["providerconnection"],
        codename="change_providerconnection",
        name="Can change provider connection",
    )
    group = get("auth", "Group").objects.create(name="connection keepers")
    group.permissions.add(can_change)
    return {
        "user": user.pk,
        "key": key.pk,
        "connection": connection_row.pk,
        "model": model.pk,
        "allowed": allowed.pk,
        "conversation": conversation.pk,
        "reply": reply.pk,
        "ledger": ledger.pk,
        "by_key": by_key.pk,
        "by_person": by_person.pk,
        "types": {name: t.pk for name, t in types.items()},
        "group": group.pk,
    }


def _check_new_layout(ids: dict[str, Any]) -> None:
    from django.contrib.auth.models import Group
    from django.contrib.contenttypes.models import ContentType

    from billing.models import UsageRecord
    from core.models import IdempotentRequest
    from providers.crypto import decrypt
    from providers.models import ConnectionModel, ProjectModel, ProviderConnection

    connection_row = ProviderConnection.objects.get(pk=ids["connection"])
    assert decrypt(connection_row.api_key_encrypted) == PROVIDER_KEY
    assert connection_row.api_key_hint == "sk-…abcd"
    model = ConnectionModel.objects.get(pk=ids["model"], connection=connection_row)
    assert ProjectModel.objects.get(pk=ids["allowed"]).model == model

    ledger = UsageRecord.objects.select_related("connection", "conversation", "message").get(
        pk=ids["ledger"]
    )
    assert ledger.connection == connection_row
    assert (ledger.conversation_id, ledger.message_id) == (ids["conversation"], ids["reply"])
    assert ledger.cost == Decimal("0.0035")
    # The foreign key into the renamed table holds: a new row may name the connection.
    UsageRecord.objects.create(
        organization_id=ledger.organization_id,
        connection=connection_row,
        model="gpt-4o",
        status="ok",
    )

    by_key = IdempotentRequest.objects.get(pk=ids["by_key"])
    assert (by_key.api_key_id, by_key.key, by_key.response) == (ids["key"], "k-1", {"id": "x"})
    by_person = IdempotentRequest.objects.get(pk=ids["by_person"])
    assert (by_person.user_id, by_person.stream_body) == (ids["user"], "data: {}\n\n")

    for name, app_label in MOVED.items():
        moved = ContentType.objects.get(pk=ids["types"][name])
        assert (moved.app_label, moved.model) == (app_label, name)
    assert not ContentType.objects.filter(app_label="chat", model__in=MOVED).exists()
    group = Group.objects.get(pk=ids["group"])
    assert list(group.permissions.values_list("content_type__app_label", "codename")) == [
        ("providers", "change_providerconnection")
    ]
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA foreign_key_check")
            assert cursor.fetchall() == []


def _run(migrator: Any) -> None:
    old = migrator.apply_initial_migration(BEFORE_THE_MOVE)
    ids = _populate(old.apps)
    migrator.apply_tested_migration(_latest())
    _check_new_layout(ids)

    # And back (``migrate providers zero`` and ``core zero``): the rows return to chat's
    # tables, the content types with them.
    old = migrator.apply_tested_migration([*BEFORE_THE_MOVE, ("providers", None), ("core", None)])
    connection_row = old.apps.get_model("chat", "ProviderConnection").objects.get(
        pk=ids["connection"]
    )
    assert connection_row.api_key_hint == "sk-…abcd"
    assert old.apps.get_model("chat", "IdempotentRequest").objects.count() == 2
    assert old.apps.get_model("contenttypes", "ContentType").objects.filter(
        app_label="chat", model__in=MOVED
    ).count() == len(MOVED)


def test_it_moves_every_row_to_the_new_apps(migrator) -> None:
    _run(migrator)


@pytest.mark.postgres
def test_it_moves_every_row_to_the_new_apps_on_postgresql(migrator) -> None:
    assert connection.vendor == "postgresql"
    _run(migrator)
