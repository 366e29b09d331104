"""REST: a project's usage by day, model or key, as each caller may see it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from accounts import api_keys
from tests.billing.test_dashboard import charge
from tests.conftest import membership

pytestmark = pytest.mark.django_db


def row(project, *, model="fake-gpt", cost="0.5", user=None, key=None, day=10) -> None:
    charge(
        project,
        user,
        at=datetime(2026, 11, day, 12, tzinfo=UTC),
        cost=cost,
        model=model,
        api_key=key,
        source="api" if key else "chat",
        prompt_tokens=10,
        completion_tokens=5,
    )


@pytest.fixture
def ledger(alice, bob, org_a, project_a, project_b):
    key = api_keys.api_key_create(
        actor=membership(alice, org_a), project=project_a, name="bot", scopes=["read"]
    )
    row(project_a, user=alice, cost="1.25", day=10)
    row(project_a, user=bob, model="gpt-4o", cost="2.5", day=11)
    row(project_a, key=key.key, cost="0.125", day=11)
    row(project_b, cost="100", day=11)  # another tenant's: never counted
    return key


def usage(client, project, **params):
    return client.get(reverse("api-usage", kwargs={"project_id": project.pk}), params)


RANGE = {"start": "2026-11-01", "end": "2026-11-30"}


def test_an_admin_sees_the_project_by_day_model_and_key(ledger, client_for, alice, project_a):
    client = client_for(alice)

    by_day = usage(client, project_a, group_by="day", **RANGE).json()
    by_model = usage(client, project_a, group_by="model", **RANGE).json()
    by_key = usage(client, project_a, group_by="key", **RANGE).json()

    assert by_day["scope"] == "project"
    assert len(by_day["groups"]) == 30  # every day of the range, zeros included
    days = {g["group"]: g["cost"] for g in by_day["groups"] if g["calls"]}
    assert {d: Decimal(c) for d, c in days.items()} == {
        "2026-11-10": Decimal("1.25"),
        "2026-11-11": Decimal("2.625"),
    }
    assert Decimal(by_day["total"]["cost"]) == Decimal("3.875")
    assert {g["group"]: g["calls"] for g in by_model["groups"]} == {"fake-gpt": 2, "gpt-4o": 1}
    assert {g["group"] for g in by_key["groups"]} == {"(no key: chat)", str(ledger.key)}


def test_a_member_sees_their_own_calls(ledger, client_for, bob, project_a):
    data = usage(client_for(bob), project_a, group_by="model", **RANGE).json()

    assert data["scope"] == "own_calls"
    assert [(g["group"], Decimal(g["cost"])) for g in data["groups"]] == [
        ("gpt-4o", Decimal("2.5"))
    ]


def test_a_key_sees_the_calls_made_with_keys(ledger, project_a):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {ledger.plaintext}")

    data = usage(client, project_a, group_by="key", **RANGE).json()

    assert data["scope"] == "api_keys"
    assert [(g["group"], Decimal(g["cost"])) for g in data["groups"]] == [
        (str(ledger.key), Decimal("0.125"))
    ]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "user"}, "group_by"),
        ({"start": "2026-13-01"}, "start"),
        ({"start": "2026-11-20", "end": "2026-11-01"}, "start"),
        ({"start": "2020-01-01", "end": "2026-11-01"}, "start"),
    ],
)
def test_bad_filters_are_a_400_naming_them(ledger, client_for, alice, project_a, params, param):
    response = usage(client_for(alice), project_a, **params)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
