"""Every chat reply, whatever happens to it, leaves exactly one ledger row and no hold."""

from decimal import Decimal

import pytest
from channels.db import database_sync_to_async

from billing.models import BudgetPeriod, Hold, UsageRecord
from providers.models import ProviderConnection
from tests.chat.test_socket import create

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def ledger(source: str = "chat") -> list[UsageRecord]:
    """Rows of one kind: a first complete exchange also makes a second call, for the title."""
    return list(UsageRecord.objects.filter(source=source).order_by("id"))


@database_sync_to_async
def leftovers() -> tuple[int, Decimal]:
    reserved = sum((p.reserved for p in BudgetPeriod.objects.all()), Decimal(0))
    return Hold.objects.count(), reserved


@pytest.fixture
def budgeted(fake_price, make_budget, project_a):
    """A generous monthly budget on the project, so every reply takes and gives back a hold."""
    return make_budget(project_a.organization, limit=1000, scope="project", project=project_a)


@pytest.mark.parametrize(
    ("model", "terminal", "status", "priced"),
    [
        ("fake-gpt", "done", "ok", True),
        ("fake-gpt@nousage", "done", "ok", True),
        ("fake-gpt@401", "error", "error", False),
        ("fake-gpt@429", "error", "error", False),
        ("fake-gpt@quota", "error", "error", False),
        ("fake-gpt@500", "error", "error", False),
        ("fake-gpt@context", "error", "error", False),
        ("fake-gpt@hang", "error", "error", False),
        ("fake-gpt@drop3", "error", "incomplete", True),
    ],
)
async def test_one_ledger_row_per_upstream_call_and_no_hold_left(
    open_socket, make_conversation, alice, project_a, budgeted, model, terminal, status, priced
):
    conversation = await create(make_conversation, alice, project_a, model=model)
    if model == "fake-gpt@hang":  # it never answers: a short timeout ends it soon
        await database_sync_to_async(ProviderConnection.objects.filter(project=project_a).update)(
            timeout=0.5
        )
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello there friend")
    events = await socket.until("done", "error")

    assert events[-1]["type"] == terminal
    [row] = await ledger()
    assert (row.status, row.model, row.conversation_id) == (status, model, conversation.pk)
    last = events[-1]
    assert row.message_id == (last["reply"] if terminal == "error" else last["message"])["id"]
    assert (row.cost > 0) is priced
    titles = await ledger("title")
    assert len(titles) == (1 if terminal == "done" else 0)
    assert await leftovers() == (0, Decimal(0))
    period = await database_sync_to_async(BudgetPeriod.objects.get)()
    assert period.spent == row.cost + sum(t.cost for t in titles)


async def test_a_stopped_reply_is_billed_for_what_it_generated(
    open_socket, make_conversation, alice, project_a, budgeted
):
    # Ten of the 50 words, then nothing until the call is closed: only the stop ends it.
    conversation = await create(
        make_conversation, alice, project_a, model="fake-gpt@slow30@words50@stall10"
    )
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="go")
    await socket.until("assistant.started")
    await socket.until("delta")
    await socket.until("delta")

    await socket.send(type="stop")
    done = (await socket.until("done"))[-1]["message"]

    [row] = await ledger()
    assert (row.status, row.estimated) == ("stopped", True)
    assert row.completion_tokens == done["completion_tokens"] > 0
    assert row.cost > 0
    assert await leftovers() == (0, Decimal(0))


@pytest.mark.parametrize("model", ["fake-gpt@words40", "fake-gpt@words40@nousage"])
async def test_a_streamed_reply_is_never_free(
    open_socket, make_conversation, alice, project_a, fake_price, model
):
    conversation = await create(make_conversation, alice, project_a, model=model)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="go")
    await socket.until("done")

    [row] = await ledger()
    assert row.completion_tokens >= 40
    assert row.cost >= Decimal("0.002") * 40  # 40 output tokens at $2,000 per 1M


async def test_a_refused_message_sends_nothing_and_writes_nothing(
    open_socket, make_conversation, alice, project_a, fake_price, make_budget, fake_upstream
):
    await database_sync_to_async(make_budget)(
        project_a.organization, limit="0.01", scope="project", project=project_a
    )
    conversation = await create(make_conversation, alice, project_a)
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    error = await socket.receive()

    assert error["code"] == "budget_exceeded"
    assert "$0.01 a month" in error["message"]
    assert await ledger() == []
    assert await leftovers() == (0, Decimal(0))
    assert sum(fake_upstream.request_counts.values()) == 0


async def test_the_chat_shows_each_replys_cost_and_the_conversation_total(
    open_socket, make_conversation, alice, project_a, fake_price, client_for
):
    conversation = await create(make_conversation, alice, project_a)
    await database_sync_to_async(type(conversation).objects.filter(pk=conversation.pk).update)(
        title="Priced"  # no title call: the total is the replies alone
    )
    _, socket = await open_socket(alice, conversation.pk)
    costs = []
    for text in ("one two", "three four five"):
        await socket.send(type="message", content=text)
        done = (await socket.until("done"))[-1]["message"]
        costs.append(Decimal(done["cost"]))

    rows = await ledger()
    assert costs == [r.cost for r in rows]
    assert Decimal(done["conversation_cost"]) == sum(costs)

    @database_sync_to_async
    def page() -> str:
        url = (
            f"/orgs/{project_a.organization.slug}/projects/{project_a.slug}/chat/{conversation.pk}/"
        )
        return client_for(alice).get(url).content.decode()

    from accounts.templatetags.ui import usd

    body = await page()
    assert usd(costs[0]) in body
    assert usd(sum(costs)) in body


async def test_a_rate_limited_message_says_when_to_try_again(
    open_socket, make_conversation, alice, project_a, fake_upstream
):
    from billing.models import RateLimit

    await database_sync_to_async(RateLimit.objects.create)(project=project_a, requests_per_minute=1)
    conversation = await create(make_conversation, alice, project_a)
    await database_sync_to_async(type(conversation).objects.filter(pk=conversation.pk).update)(
        title="No title call"
    )
    _, socket = await open_socket(alice, conversation.pk)
    await socket.send(type="message", content="first")
    await socket.until("done")

    await socket.send(type="message", content="second")
    error = await socket.receive()

    assert (error["type"], error["code"], error["retryable"]) == (
        "error",
        "rate_limit_exceeded",
        True,
    )
    assert 1 <= error["retry_after"] <= 60
    assert "1 requests per minute" in error["message"]
    assert fake_upstream.request_counts["fake-gpt"] == 1
