"""Budgets and rate limits over REST: ``/api/v1/organizations/<id>/budgets/`` and the rate
limits of a project and its keys. Owners and admins change them, members read what applies to
them, keys never touch budgets, and every refusal names the field it is about."""

import json
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.api_keys import api_key_create
from accounts.models import Role
from billing.models import Budget, BudgetPeriod, RateLimit
from billing.services import period_bounds
from tests.chat.conftest import make_key, serve
from tests.conftest import membership

pytestmark = pytest.mark.django_db


def budgets_url(org) -> str:
    return reverse("api-budgets", kwargs={"organization_id": org.pk})


def budget_url(budget: Budget) -> str:
    return reverse(
        "api-budget", kwargs={"organization_id": budget.organization_id, "budget_id": budget.pk}
    )


def send(client: Client, method: str, url: str, body: dict | None = None, **headers):
    if method == "get":
        return client.get(url, **headers)
    return getattr(client, method)(
        url, json.dumps(body or {}), content_type="application/json", **headers
    )


def refusal(response) -> dict:
    return response.json()["error"]


@pytest.fixture
def ci_key(alice, project_a):
    return api_key_create(
        actor=membership(alice, project_a.organization),
        project=project_a,
        name="CI",
        scopes=["chat", "read"],
    )


@pytest.fixture
def budgets(org_a, project_a, alice, bob, ci_key):
    make = Budget.objects.create
    return {
        "organization": make(organization=org_a, scope="organization", limit_usd=100),
        "project": make(organization=org_a, scope="project", project=project_a, limit_usd=20),
        "bob": make(organization=org_a, scope="member", project=project_a, user=bob, limit_usd=2),
        "alice": make(
            organization=org_a, scope="member", project=project_a, user=alice, limit_usd=5
        ),
        "key": make(
            organization=org_a,
            scope="api_key",
            project=project_a,
            api_key=ci_key.key,
            limit_usd=3,
            period="lifetime",
        ),
        "off": make(organization=org_a, scope="organization", limit_usd=1, enabled=False),
    }


# --- reading -------------------------------------------------------------------------------


def test_it_lists_every_budget_with_its_figures_for_an_owner(client_for, alice, org_a, budgets):
    bob_budget = budgets["bob"]
    start, end = period_bounds("month", timezone.now())
    BudgetPeriod.objects.create(
        budget=bob_budget, start=start, spent=Decimal("0.0022"), reserved=Decimal("0.5")
    )

    response = client_for(alice).get(budgets_url(org_a))

    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 6
    by_id = {row["id"]: row for row in page["results"]}
    assert set(by_id) == {b.pk for b in budgets.values()}
    assert by_id[bob_budget.pk] == {
        "id": bob_budget.pk,
        "scope": "member",
        "project": bob_budget.project_id,
        "user": bob_budget.user_id,
        "api_key": None,
        "subject": "Bob in project Project A",
        "period": "month",
        "limit_usd": "2.000000",
        "soft_thresholds": [50, 80, 100],
        "enabled": True,
        "created_at": by_id[bob_budget.pk]["created_at"],
        "period_start": start.isoformat().replace("+00:00", "Z"),
        "resets_at": end.isoformat().replace("+00:00", "Z"),
        "spent": "0.002200000000",
        "reserved": "0.500000000000",
        "remaining": "1.497800000000",
    }
    assert by_id[budgets["key"].pk]["resets_at"] is None  # lifetime
    assert by_id[budgets["off"].pk]["enabled"] is False


def test_a_member_reads_only_the_budgets_that_apply_to_them(client_for, bob, org_a, budgets):
    client = client_for(bob)

    listed = client.get(budgets_url(org_a)).json()["results"]

    assert {row["id"] for row in listed} == {
        budgets[name].pk for name in ("organization", "project", "bob")
    }
    assert client.get(budget_url(budgets["bob"])).status_code == 200
    for hidden in ("alice", "key", "off"):  # another member's, a key's, one turned off
        response = client.get(budget_url(budgets[hidden]))
        assert response.status_code == 404
        assert refusal(response)["code"] == "not_found"


def test_it_filters_by_scope_and_project(client_for, alice, org_a, project_a, budgets):
    client = client_for(alice)

    members = client.get(budgets_url(org_a), {"scope": "member"}).json()["results"]
    in_project = client.get(budgets_url(org_a), {"project": project_a.pk}).json()["results"]

    assert {row["id"] for row in members} == {budgets["bob"].pk, budgets["alice"].pk}
    assert {row["id"] for row in in_project} == {
        budgets[name].pk for name in ("project", "bob", "alice", "key")
    }
    bad = client.get(budgets_url(org_a), {"scope": "planet"})
    assert bad.status_code == 400
    assert refusal(bad)["param"] == "scope"


# --- writing -------------------------------------------------------------------------------


def test_an_owner_adds_a_budget_of_each_kind(client_for, alice, bob, org_a, project_a, ci_key):
    client = client_for(alice)
    bodies = [
        {"scope": "organization", "limit_usd": "250"},
        {"scope": "project", "project": project_a.pk, "limit_usd": 0.5, "period": "day"},
        {"scope": "member", "project": project_a.pk, "user": bob.pk, "limit_usd": "2",
         "soft_thresholds": [100, 90, 90]},
        {"scope": "api_key", "api_key": ci_key.key.pk, "limit_usd": "1", "period": "lifetime",
         "soft_thresholds": []},
    ]  # fmt: skip

    answers = [send(client, "post", budgets_url(org_a), body) for body in bodies]

    assert [a.status_code for a in answers] == [201] * 4, [a.json() for a in answers]
    created = [a.json() for a in answers]
    assert [(c["scope"], c["project"], c["user"], c["api_key"]) for c in created] == [
        ("organization", None, None, None),
        ("project", project_a.pk, None, None),
        ("member", project_a.pk, bob.pk, None),
        ("api_key", project_a.pk, None, ci_key.key.pk),  # the key's project, filled in
    ]
    assert [c["soft_thresholds"] for c in created] == [[50, 80, 100], [50, 80, 100], [90, 100], []]
    assert created[1]["limit_usd"] == "0.500000"
    assert created[0]["spent"] == "0.000000000000"
    assert Budget.objects.count() == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"limit_usd": "-0.01"}, "limit_usd"),
        ({"limit_usd": "lots"}, "limit_usd"),
        ({"limit_usd": "NaN"}, "limit_usd"),
        ({"limit_usd": "0.0000001"}, "limit_usd"),
        ({"limit_usd": "100000000"}, "limit_usd"),
        ({"soft_thresholds": [0, 50]}, "soft_thresholds"),
        ({"soft_thresholds": [50, 101]}, "soft_thresholds"),
        ({"soft_thresholds": "50,80"}, "soft_thresholds"),
        ({"soft_thresholds": list(range(1, 12))}, "soft_thresholds"),
        ({"period": "week"}, "period"),
        ({"scope": "galaxy"}, "scope"),
        ({"enabled": "maybe"}, "enabled"),
        ({"colour": "red"}, "colour"),  # unknown: refused, never dropped
    ],
)
def test_malformed_input_is_a_400_naming_the_field(client_for, alice, org_a, body, param):
    response = send(
        client_for(alice),
        "post",
        budgets_url(org_a),
        {"scope": "organization", "limit_usd": 1} | body,
    )

    assert response.status_code == 400
    error = refusal(response)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request",
        param,
    )
    assert error["message"].startswith(f"{param}: ")
    assert param in error["fields"]
    assert not Budget.objects.exists()


def test_what_a_scope_names_must_agree_and_be_the_organizations(
    client_for, alice, bob, charlie, org_a, org_b, project_a, project_b
):
    other_key = api_key_create(
        actor=membership(charlie, org_b), project=project_b, name="B", scopes=["chat"]
    ).key
    client = client_for(alice)
    cases = [
        ({"scope": "organization", "project": project_a.pk}, "project"),
        ({"scope": "project"}, "project"),
        ({"scope": "project", "project": project_a.pk, "user": bob.pk}, "user"),
        ({"scope": "member", "project": project_a.pk}, "user"),
        ({"scope": "api_key"}, "api_key"),
        # Another tenant's objects are no choices at all.
        ({"scope": "project", "project": project_b.pk}, "project"),
        ({"scope": "member", "project": project_a.pk, "user": charlie.pk}, "user"),
        ({"scope": "api_key", "api_key": other_key.pk}, "api_key"),
    ]

    for body, param in cases:
        response = send(client, "post", budgets_url(org_a), {"limit_usd": "1", **body})
        assert response.status_code == 400, body
        assert refusal(response)["param"] == param, (body, refusal(response))
    assert not Budget.objects.exists()


def test_an_owner_changes_a_budget_but_never_what_it_covers(client_for, alice, budgets):
    budget = budgets["project"]
    client = client_for(alice)

    changed = send(
        client,
        "patch",
        budget_url(budget),
        {"limit_usd": "7.25", "soft_thresholds": [75], "period": "day", "enabled": False},
    )

    assert changed.status_code == 200, changed.json()
    assert (changed.json()["limit_usd"], changed.json()["soft_thresholds"]) == ("7.250000", [75])
    budget.refresh_from_db()
    assert (budget.limit_usd, budget.soft_thresholds, budget.period, budget.enabled) == (
        Decimal("7.25"),
        "75",
        "day",
        False,
    )
    for field, value in (("scope", "organization"), ("project", None), ("user", 1)):
        refused = send(client, "patch", budget_url(budget), {field: value})
        assert refused.status_code == 400
        assert refusal(refused)["param"] == field
        assert "cannot change" in refusal(refused)["message"]


def test_an_owner_deletes_a_budget(client_for, alice, budgets):
    budget = budgets["alice"]

    response = client_for(alice).delete(budget_url(budget))

    assert response.status_code == 204
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert client_for(alice).get(budget_url(budget)).status_code == 404


def test_a_member_is_refused_every_change(client_for, bob, org_a, budgets):
    client = client_for(bob)
    mine = budgets["bob"]

    answers = [
        send(client, "post", budgets_url(org_a), {"scope": "organization", "limit_usd": "1"}),
        send(client, "patch", budget_url(mine), {"limit_usd": "1000"}),
        client.delete(budget_url(mine)),
    ]

    for answer in answers:
        assert answer.status_code == 403
        assert refusal(answer)["code"] == "forbidden"
    mine.refresh_from_db()
    assert mine.limit_usd == 2
    assert Budget.objects.count() == 6


def test_a_key_never_reads_or_changes_budgets(client, org_a, budgets, ci_key):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {ci_key.plaintext}"}

    for method, url in (
        ("get", budgets_url(org_a)),
        ("post", budgets_url(org_a)),
        ("patch", budget_url(budgets["key"])),
        ("delete", budget_url(budgets["key"])),
    ):
        response = send(client, method, url, {"limit_usd": "1000"}, **auth)
        assert response.status_code == 403, (method, url)
        assert refusal(response)["code"] == "keys_not_allowed"
    assert Budget.objects.get(pk=budgets["key"].pk).limit_usd == 3


def test_a_budget_lowered_over_rest_refuses_the_very_next_call(
    client_for, alice, org_a, project_a, fake_upstream, fake_price
):
    serve(project_a, fake_upstream)
    key = make_key(alice, org_a, project_a)
    budget = Budget.objects.create(organization=org_a, scope="project", project=project_a,
                                   limit_usd=100)  # fmt: skip
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert send(Client(), "post", "/v1/chat/completions", body, **auth).status_code == 200

    lowered = send(client_for(alice), "patch", budget_url(budget), {"limit_usd": "0"})

    assert lowered.status_code == 200
    assert Decimal(lowered.json()["spent"]) > 0
    refused = send(Client(), "post", "/v1/chat/completions", body, **auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"


# --- rate limits -----------------------------------------------------------------------------


@pytest.fixture
def fresh_rate_counts():
    cache.clear()
    yield
    cache.clear()


def rate_url(project) -> str:
    return reverse("api-rate-limits", kwargs={"project_id": project.pk})


def key_rate_url(key) -> str:
    return reverse("api-key-rate-limits", kwargs={"project_id": key.project_id, "key_id": key.pk})


def test_an_owner_sets_the_projects_rate_limits_and_everyone_reads_them(
    client_for, client, alice, bob, project_a, ci_key
):
    owner = client_for(alice)

    set_ = send(owner, "patch", rate_url(project_a), {"requests_per_minute": 60})
    more = send(owner, "patch", rate_url(project_a), {"tokens_per_minute": 40_000})

    assert set_.json() == {"requests_per_minute": 60, "tokens_per_minute": None}
    assert more.json() == {"requests_per_minute": 60, "tokens_per_minute": 40_000}
    as_key = client.get(rate_url(project_a), HTTP_AUTHORIZATION=f"Bearer {ci_key.plaintext}")
    assert as_key.json() == client_for(bob).get(rate_url(project_a)).json() == more.json()
    cleared = send(
        owner,
        "patch",
        rate_url(project_a),
        {"requests_per_minute": None, "tokens_per_minute": None},
    )
    assert cleared.json() == {"requests_per_minute": None, "tokens_per_minute": None}
    assert not RateLimit.objects.exists()


def test_only_owners_and_admins_change_rate_limits(client_for, client, bob, project_a, ci_key):
    by_member = send(client_for(bob), "patch", rate_url(project_a), {"requests_per_minute": 1})
    by_key = send(
        client,
        "patch",
        rate_url(project_a),
        {"requests_per_minute": 1},
        HTTP_AUTHORIZATION=f"Bearer {ci_key.plaintext}",
    )

    assert (by_member.status_code, refusal(by_member)["code"]) == (403, "forbidden")
    assert (by_key.status_code, refusal(by_key)["code"]) == (403, "keys_not_allowed")
    assert client_for(bob).get(key_rate_url(ci_key.key)).status_code == 403
    assert not RateLimit.objects.exists()


@pytest.mark.parametrize("value", [0, -1, "sixty", 2**31, 1.5])
def test_a_rate_limit_is_a_whole_number_from_1(client_for, alice, project_a, ci_key, value):
    for url in (rate_url(project_a), key_rate_url(ci_key.key)):
        response = send(client_for(alice), "patch", url, {"tokens_per_minute": value})
        assert response.status_code == 400
        assert refusal(response)["param"] == "tokens_per_minute"
    assert not RateLimit.objects.exists()


def test_a_keys_rate_limit_set_over_rest_refuses_its_next_call(
    client_for, alice, org_a, project_a, fake_upstream, fake_price, fresh_rate_counts
):
    serve(project_a, fake_upstream)
    created = api_key_create(
        actor=membership(alice, org_a), project=project_a, name="bot", scopes=["chat"]
    )
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"HTTP_AUTHORIZATION": f"Bearer {created.plaintext}"}
    assert send(Client(), "post", "/v1/chat/completions", body, **auth).status_code == 200

    response = send(
        client_for(alice), "patch", key_rate_url(created.key), {"requests_per_minute": 1}
    )

    assert response.json() == {"requests_per_minute": 1, "tokens_per_minute": None}
    assert send(Client(), "post", "/v1/chat/completions", body, **auth).status_code == 200
    refused = send(Client(), "post", "/v1/chat/completions", body, **auth)
    assert refused.status_code == 429
    assert "This API key is limited to 1 requests per minute" in refusal(refused)["message"]


def test_another_projects_key_is_not_found(client_for, alice, charlie, org_b, project_a, project_b):
    other = api_key_create(
        actor=membership(charlie, org_b), project=project_b, name="B", scopes=["chat"]
    ).key
    url = reverse("api-key-rate-limits", kwargs={"project_id": project_a.pk, "key_id": other.pk})

    response = send(client_for(alice), "patch", url, {"requests_per_minute": 1})

    assert response.status_code == 404
    other.refresh_from_db()
    assert other.requests_per_minute is None


def test_an_admin_manages_budgets_as_an_owner_does(client_for, bob, org_a, budgets):
    admin = membership(bob, org_a)
    admin.role = Role.ADMIN
    admin.save()
    client = client_for(bob)

    listed = client.get(budgets_url(org_a)).json()
    created = send(client, "post", budgets_url(org_a), {"scope": "organization", "limit_usd": 9})
    changed = send(client, "patch", budget_url(budgets["alice"]), {"limit_usd": "4.5"})

    assert listed["count"] == 6  # every budget, Alice's and the key's included
    assert created.status_code == 201
    assert changed.json()["limit_usd"] == "4.500000"
