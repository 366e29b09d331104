"""A model with no price: refused under any budget (its cost cannot be held) and, without one,
refused too unless staff allowed it (``ConnectionModel.unpriced_allowed``); allowed, it runs,
its ledger rows have no price, and every page that shows their cost says "unpriced"."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing import services
from billing.models import ModelPrice, Statement, UsageRecord
from billing.services import CallContext, QuotaExceeded
from billing.statement_services import statements_close_month
from core import config_cache
from providers.llm.catalog import LOCAL_MODEL_NAME
from providers.models import ConnectionModel
from tests.chat.conftest import make_key, serve
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def strict(settings):
    """The production rule, whatever the test profile relaxes."""
    settings.BILLING_ALLOW_UNPRICED = False


@pytest.fixture
def key(alice, org_a, project_a, fake_upstream) -> str:
    serve(project_a, fake_upstream, "fake-gpt")  # fake-gpt: no price row
    return make_key(alice, org_a, project_a, ["chat", "read"])


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))
    return client


def complete(key: str, model: str = "fake-gpt"):
    return Client().post(
        "/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def allow_unpriced(staff: Client, model: ConnectionModel) -> None:
    """What staff do in the admin: tick "unpriced allowed" on the connection's model."""
    change = reverse("admin:providers_connectionmodel_change", args=[model.pk])
    form = staff.get(change)
    assert "Let this model run when the price table has no price for it" in form.content.decode()
    response = staff.post(
        change,
        {
            "connection": model.connection_id,
            "name": model.name,
            "context_window": model.context_window,
            "max_output_tokens": "",
            "unpriced_allowed": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]


def row_of(body: str, label: str) -> str:
    """The table row of the usage page whose first cell is ``label``."""
    found = re.search(rf"<tr><td>{re.escape(label)}</td>.*?</tr>", body, re.S)
    assert found, label
    return found.group(0)


def local_call(project, user) -> UsageRecord:
    """A call of the built-in model, priced at 0 (billing 0002): free, not unpriced."""
    context = CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk,
        model=LOCAL_MODEL_NAME,
    )
    reservation = services.quota_reserve(context=context, prompt_tokens=10, max_tokens=5)
    return services.quota_settle(
        reservation=reservation, status="ok", prompt_tokens=10, completion_tokens=5
    )


def test_an_unpriced_model_is_refused_until_staff_allow_it_then_its_rows_say_unpriced(
    key, staff, fake_upstream, client_for, alice, project_a
):
    refused = complete(key)

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "model_unpriced"
    assert "fake-gpt has no price" in error["message"]
    assert "staff need to set its price, or allow it to run unpriced" in error["message"]
    assert refused["x-should-retry"] == "false"
    assert fake_upstream.request_counts == {}  # nothing was sent
    assert not UsageRecord.objects.exists()

    allow_unpriced(staff, ConnectionModel.objects.get(name="fake-gpt"))
    answered = complete(key)
    local = local_call(project_a, alice)

    assert answered.status_code == 200
    assert answered.json()["choices"][0]["message"]["content"] == "Echo: hi"
    row = UsageRecord.objects.get(model="fake-gpt")
    assert (row.price, row.cost, row.status) == (None, 0, "ok")
    assert row.prompt_tokens > 0
    assert row.completion_tokens > 0
    assert local.price is not None
    assert local.cost == 0

    page = client_for(alice).get(reverse("usage_dashboard", args=[project_a.organization.slug]))
    body = page.content.decode()
    assert "unpriced" in row_of(body, "fake-gpt")
    assert "$0.00" not in row_of(body, "fake-gpt")
    assert "$0.00" in row_of(body, LOCAL_MODEL_NAME)
    assert "unpriced" not in row_of(body, LOCAL_MODEL_NAME)

    today = timezone.now().date().isoformat()
    usage = client_for(alice).get(
        reverse("api-usage", kwargs={"project_id": project_a.pk}),
        {"group_by": "model", "start": today, "end": today},
    )
    groups = {group["group"]: group for group in usage.json()["groups"]}
    assert (groups["fake-gpt"]["priced"], groups[LOCAL_MODEL_NAME]["priced"]) == (False, True)

    ledger = staff.get(reverse("admin:billing_usagerecord_changelist")).content.decode()
    assert ">unpriced</span>" in ledger


def test_allowed_unpriced_is_still_refused_under_a_budget(
    key, staff, make_budget, fake_upstream, project_a
):
    allow_unpriced(staff, ConnectionModel.objects.get(name="fake-gpt"))
    make_budget(project_a.organization, limit=100)

    refused = complete(key)

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert "has no price" in refused.json()["error"]["message"]
    assert fake_upstream.request_counts == {}


def test_the_refusal_comes_before_the_call_for_every_caller(project_a, alice, fake_upstream):
    serve(project_a, fake_upstream, "fake-gpt")
    connection = ConnectionModel.objects.get(name="fake-gpt").connection
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=alice.pk,
        model="fake-gpt@500",  # the name as a conversation names it, fault markers and all
        connection_id=connection.pk,
    )

    with pytest.raises(QuotaExceeded) as refused:
        services.quota_reserve(context=context, prompt_tokens=10, max_tokens=5)
    ConnectionModel.objects.filter(name="fake-gpt").update(unpriced_allowed=True)
    config_cache.invalidate()  # update() sends no signal
    reservation = services.quota_reserve(context=context, prompt_tokens=10, max_tokens=5)

    assert refused.value.code == "model_unpriced"
    assert (reservation.price_id, reservation.amount) == (None, 0)


def test_the_local_model_is_free_not_unpriced(project_a, alice):
    record = local_call(project_a, alice)

    assert record.price is not None
    assert record.price.model == LOCAL_MODEL_NAME
    assert record.cost == 0


def test_the_local_model_runs_even_if_its_price_row_goes(project_a, alice):
    local = ConnectionModel.objects.get(name=LOCAL_MODEL_NAME, connection__organization=None)
    ModelPrice.objects.filter(model=LOCAL_MODEL_NAME).delete()
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=alice.pk,
        model=LOCAL_MODEL_NAME,
        connection_id=local.connection_id,
    )

    reservation = services.quota_reserve(context=context, prompt_tokens=10, max_tokens=5)

    assert local.unpriced_allowed is True  # set with the built-in connection
    assert reservation.price_id is None


def test_the_servers_setting_lets_every_unpriced_model_run(settings, project_a, alice):
    settings.BILLING_ALLOW_UNPRICED = True
    context = CallContext(
        organization_id=project_a.organization_id,
        project_id=project_a.pk,
        user_id=alice.pk,
        model="mystery-model",
    )

    reservation = services.quota_reserve(context=context, prompt_tokens=10, max_tokens=5)

    assert reservation.price_id is None


def test_managers_cannot_allow_unpriced_models_themselves(
    client_for, alice, project_a, fake_upstream
):
    serve(project_a, fake_upstream, "fake-gpt")
    connection = ConnectionModel.objects.get(name="fake-gpt").connection

    client_for(alice).post(
        reverse(
            "connection_model_add",
            args=[project_a.organization.slug, project_a.slug, connection.pk],
        ),
        {"name": "house-model", "unpriced_allowed": "on"},
    )

    assert ConnectionModel.objects.get(name="house-model").unpriced_allowed is False


def test_a_statement_line_of_an_unpriced_model_says_unpriced(
    key, staff, client_for, alice, org_a, project_a
):
    allow_unpriced(staff, ConnectionModel.objects.get(name="fake-gpt"))
    assert complete(key).status_code == 200
    local_call(project_a, alice)
    month = timezone.now().date().replace(day=1)
    next_month = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    statement = statements_close_month(
        organization=org_a,
        month_start=month,
        now=timezone.now().replace(year=next_month.year, month=next_month.month, day=2),
    )

    page = (
        client_for(alice)
        .get(reverse("statement_detail", args=[org_a.slug, statement.pk]))
        .content.decode()
    )

    assert Statement.objects.count() == 1
    lines = {
        model: cells for model, cells in re.findall(r"<td>([\w.@-]+)</td>(.*?)</tr>", page, re.S)
    }
    assert "unpriced" in lines["fake-gpt"]
    assert "$0.00" in lines[LOCAL_MODEL_NAME]
    assert "unpriced" not in lines[LOCAL_MODEL_NAME]


@pytest.mark.django_db(transaction=True)  # the reply is made on the server's database thread
def test_a_chat_reply_of_an_unpriced_model_says_unpriced_not_free(
    make_conversation, alice, project_a, client_for, settings
):
    settings.BILLING_ALLOW_UNPRICED = True  # the server lets every unpriced model run
    conversation = make_conversation(alice, project_a)  # fake-gpt: no price row
    client = client_for(alice)
    url = reverse(
        "api-messages", kwargs={"project_id": project_a.pk, "conversation_id": conversation.pk}
    )

    answer = client.post(url, data=json.dumps({"content": "hi"}), content_type="application/json")

    assert answer.status_code == 201, answer.content
    assert (answer.json()["cost"], answer.json()["priced"]) == (None, False)
    listed = client.get(url).json()["results"]
    assert [(m["role"], m["priced"]) for m in listed] == [("user", True), ("assistant", False)]
    page = client.get(
        reverse(
            "conversation_detail",
            args=[project_a.organization.slug, project_a.slug, conversation.pk],
        )
    )
    usage = re.search(r'<span class="msg-usage">(.*?)</span>', page.content.decode(), re.S)
    assert usage is not None
    assert "unpriced" in usage.group(1)
    assert "$" not in usage.group(1)
    assert UsageRecord.objects.get(message__isnull=False).price is None
