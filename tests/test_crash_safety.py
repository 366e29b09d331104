"""Crash safety, with real processes killed by SIGKILL (tests/processes.py): nothing of theirs
runs after the kill, no ``finally``, no shutdown handler.

- A Daphne process killed mid-stream: Celery beat's sweep closes the reply as incomplete with
  the text flushed so far, bills that text once and frees its hold (and the sweep itself, in
  every conversation, in process).
- A Celery worker killed mid-task (a title waiting on the upstream, a budget alert waiting on
  the mail server, a statement waiting on a lock), then restarted: each is delivered again
  (late acknowledgement) and happens once, however often it is delivered.
- A worker's pool process killed mid-task (as the OOM killer does): the task runs again at once.

`make test` runs these with the PostgreSQL and Redis tests (the markers below).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from unittest.mock import patch

import pytest
from channels.db import database_sync_to_async
from django.db import connection, transaction
from django.utils import timezone

from billing.models import Budget, BudgetAlert, BudgetPeriod, Hold, Statement, UsageRecord
from billing.services import period_bounds
from chat import services
from chat.actors import Actor
from chat.models import Conversation, Message
from chat.tasks import expire_stale_streams
from providers.llm.tokens import count_text_tokens
from tests.billing.conftest import make_budget  # noqa: F401 - fixtures
from tests.chat.conftest import fake_connection, make_conversation, serve  # noqa: F401
from tests.conftest import session_cookie
from tests.processes import eventually, open_tab, processes, wait_until  # noqa: F401

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

WORDS = "one two three four five six seven eight"


# --- a web process killed mid-stream ---------------------------------------------------------


async def test_a_reply_whose_process_is_killed_is_closed_billed_and_freed_by_the_sweep(
    processes,  # noqa: F811 - the fixture imported above
    make_conversation,  # noqa: F811 - the fixture imported above
    make_budget,  # noqa: F811 - the fixture imported above
    alice,
    project_a,
    fake_price,
):
    await database_sync_to_async(make_budget)(
        project_a.organization, limit=100, scope="project", project=project_a
    )
    # Four tokens 100 ms apart, then nothing: the reply is mid-stream for as long as it lives.
    conversation = await database_sync_to_async(make_conversation)(
        alice, project_a, model="fake-gpt@slow100@stall4"
    )
    web = processes.web("daphne")
    worker = processes.worker("worker", beat=True)  # beat sweeps every second here
    cookie = await database_sync_to_async(session_cookie)(alice)
    flushed = "".join(re.findall(r"\S+\s*", f"Echo: {WORDS}")[:4])

    async with open_tab(web, conversation.pk, cookie=cookie) as tab:
        await tab.send(type="message", content=WORDS)
        reply_id = (await tab.until("assistant.started"))[-1]["message"]["id"]
        await tab.until("delta")

    def written() -> bool:
        reply = Message.objects.get(pk=reply_id)
        return reply.state == "streaming" and reply.content == flushed

    await eventually(written, what="the four tokens are flushed to the database")
    assert await database_sync_to_async(Hold.objects.count)() == 1
    web.kill()

    def closed() -> Message | None:
        reply = Message.objects.get(pk=reply_id)
        return reply if reply.state != "streaming" else None

    reply = await eventually(closed, what="the sweep closes the reply")
    assert (reply.state, reply.error_code, reply.content) == ("incomplete", "interrupted", flushed)

    def ledger() -> tuple:
        return (
            list(UsageRecord.objects.filter(message_id=reply_id)),
            Hold.objects.exists(),
            BudgetPeriod.objects.get(),
        )

    rows, holds_left, period = await database_sync_to_async(ledger)()
    [row] = rows
    assert (row.status, row.estimated, row.request_id) == ("incomplete", True, reply.request_id)
    # Billed for the text that was flushed, counted by the one estimate rule.
    assert row.completion_tokens == reply.completion_tokens == count_text_tokens(flushed)
    assert row.prompt_tokens == reply.prompt_tokens > 0
    assert row.cost > 0
    assert not holds_left
    assert (period.reserved, period.spent) == (Decimal(0), row.cost)
    assert "chat.tasks.expire_stale_streams" in worker.log()


def stale_reply(make, user, project) -> Message:
    """A reply started, half written, then left by its process an hour ago (``make``: the
    make_conversation fixture)."""
    conversation = make(user, project)
    pending = services.reply_start(
        actor=Actor(user=user), conversation_id=conversation.pk, content="hello"
    )
    services.reply_flush(message_id=pending.assistant_message_id, content="Echo: hel")
    Message.objects.filter(pk=pending.assistant_message_id).update(
        updated_at=timezone.now() - timedelta(hours=1)
    )
    return Message.objects.get(pk=pending.assistant_message_id)


def test_the_sweep_closes_stale_replies_in_every_conversation_and_only_those(
    make_conversation,  # noqa: F811 - the fixture imported above
    alice,
    charlie,
    project_a,
    project_b,
    settings,
):
    stale = [
        stale_reply(make_conversation, alice, project_a),
        stale_reply(make_conversation, charlie, project_b),
    ]
    live = services.reply_start(
        actor=Actor(user=alice),
        conversation_id=make_conversation(alice, project_a).pk,
        content="still going",
    )

    assert expire_stale_streams() == 2
    assert expire_stale_streams() == 0

    states = dict(Message.objects.filter(role="assistant").values_list("pk", "state"))
    assert states == {
        stale[0].pk: "incomplete",
        stale[1].pk: "incomplete",
        live.assistant_message_id: "streaming",
    }
    assert UsageRecord.objects.filter(status="incomplete").count() == 2
    # Beat runs it more often than a reply goes stale.
    entry = settings.CELERY_BEAT_SCHEDULE["expire-stale-streams"]
    assert entry["task"] == expire_stale_streams.name
    assert entry["schedule"] <= settings.CHAT_STALE_STREAM_SECONDS


def test_a_conversation_the_sweep_cannot_close_holds_back_no_other(
    make_conversation,  # noqa: F811 - the fixture imported above
    alice,
    charlie,
    project_a,
    project_b,
    monkeypatch,
):
    broken = stale_reply(make_conversation, alice, project_a)
    fine = stale_reply(make_conversation, charlie, project_b)
    expire = services.streams_expire_stale

    def expire_or_fail(*, conversation=None):
        if conversation.pk == broken.conversation_id:
            raise RuntimeError("a bug of ours")
        return expire(conversation=conversation)

    monkeypatch.setattr(services, "streams_expire_stale", expire_or_fail)

    with pytest.raises(ExceptionGroup) as failed:
        services.streams_sweep_stale()

    assert [str(error) for error in failed.value.exceptions] == ["a bug of ours"]
    assert Message.objects.get(pk=fine.pk).state == "incomplete"
    assert Message.objects.get(pk=broken.pk).state == "streaming"  # the next sweep tries again
    # The beat task logs it and carries on.
    assert expire_stale_streams() is None


# --- a worker killed mid-task ------------------------------------------------------------------


class SilentMailServer:
    """An SMTP address that takes connections and never says a word (a hung mail server): a
    client waits for its greeting for ever. Counts the connections it took."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.taken: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                self.taken.append(self.listener.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        for taken in self.taken:
            taken.close()
        self.listener.close()


@pytest.fixture
def silent_mail_server() -> Iterator[SilentMailServer]:
    server = SilentMailServer()
    try:
        yield server
    finally:
        server.close()


class StatementLock:
    """Another transaction writing the same statement, not yet committed: a closing that gets
    there meanwhile waits on its lock. ``release`` rolls it back."""

    def __init__(self, *, organization_id: int, start: datetime, end: datetime) -> None:
        self.held = threading.Event()
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.hold, args=(organization_id, start, end))
        self.thread.start()
        assert self.held.wait(30)
        assert not self.errors

    def hold(self, organization_id: int, start: datetime, end: datetime) -> None:
        try:  # a thread has its own database connection
            with transaction.atomic():
                Statement.objects.create(
                    organization_id=organization_id, period_start=start, period_end=end
                )
                self.held.set()
                self.done.wait(120)
                transaction.set_rollback(True)
        except BaseException as error:
            self.errors.append(error)
        finally:
            self.held.set()
            connection.close()

    def release(self) -> None:
        self.done.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert not self.errors


def waiting_on_a_lock(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %s",
            [f"%{table}%"],
        )
        return cursor.fetchone()[0] > 0


def mails_with(directory: Path, subject: str) -> int:
    """Messages with this subject that the file back end wrote (a file per connection)."""
    if not directory.exists():
        return 0
    return sum(path.read_text().count(f"Subject: {subject}\n") for path in directory.iterdir())


JANUARY = datetime(2025, 1, 1, tzinfo=UTC)
FEBRUARY = datetime(2025, 2, 1, tzinfo=UTC)
AS_OF = "2025-02-15T12:00:00+00:00"  # close_last_month closes January
ALERT_SUBJECT = "[Org A] the Org A budget passed 80% of its limit"


@pytest.fixture
def titled_later(
    make_conversation,  # noqa: F811 - the fixture imported above
    fake_upstream,
    charlie,
    project_b,
    fake_price,
):
    """Org B's conversation whose title call hangs (the upstream answers nothing) for up to
    two minutes: the connection's timeout."""
    fake_connection(project_b, fake_upstream, timeout=120.0)
    conversation = make_conversation(charlie, project_b, model="fake-gpt@hang")
    Message.objects.create(
        conversation=conversation, role="user", content="Plan the spring offsite", author=charlie
    )
    serve(project_b, fake_upstream, "fake-gpt")
    return conversation


@pytest.fixture
def january(org_a, project_a, alice) -> Decimal:
    """Org A's ledger of January 2025; what its statement must total."""
    costs = [Decimal("1.25"), Decimal("0.000012500000")]
    # The ledger is append-only: a row's time is the clock's when it is written.
    with patch("django.utils.timezone.now", return_value=datetime(2025, 1, 15, tzinfo=UTC)):
        for cost in costs:
            UsageRecord.objects.create(
                organization=org_a, project=project_a, user=alice, model="gpt-4o", cost=cost
            )
    return sum(costs, Decimal(0))


@pytest.fixture
def crossed(org_a, alice) -> Budget:
    """Org A's budget past 80 % this month: its alert row written, its e-mail not sent yet (as
    quota_settle leaves it, queued on commit)."""
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd="10")
    start, _ = period_bounds(budget.period, timezone.now())
    BudgetAlert.objects.create(budget=budget, period_start=start, threshold=80)
    return budget


def test_a_worker_killed_mid_task_and_restarted_titles_alerts_and_closes_once(
    processes,  # noqa: F811 - the fixture imported above
    silent_mail_server,
    titled_later,
    january,
    crossed,
    org_a,
    fake_upstream,
    tmp_path,
):
    mailbox = tmp_path / "mail"
    first = processes.worker(
        "worker-1",
        concurrency=3,
        env={"EMAIL_URL": f"smtp://127.0.0.1:{silent_mail_server.port}"},
    )
    lock = StatementLock(organization_id=org_a.pk, start=JANUARY, end=FEBRUARY)
    try:
        processes.send_task("chat.tasks.title_conversation", titled_later.pk)
        processes.send_task("billing.tasks.send_budget_alert", crossed.pk, 80)
        processes.send_task("billing.tasks.close_last_month", AS_OF)

        # All three are running, each waiting: on the upstream, the mail server, the lock.
        wait_until(
            lambda: (
                fake_upstream.request_counts["fake-gpt@hang"]
                and silent_mail_server.taken
                and waiting_on_a_lock("billing_statement")
            ),
            within=60,
            what="the title, the alert and the statement are under way",
            log_of=first,
        )
        first.kill()
    finally:
        lock.release()
    assert not re.search(r"\] succeeded", first.log())
    assert Conversation.objects.get(pk=titled_later.pk).title == ""
    assert not Statement.objects.exists()
    assert mails_with(mailbox, ALERT_SUBJECT) == 0

    # Meanwhile the upstream and the mail server recovered; the worker is started again.
    Conversation.objects.filter(pk=titled_later.pk).update(model="fake-gpt")
    # filemail:// + an absolute path: django-environ drops the URL path's first "/".
    second = processes.worker(
        "worker-2", concurrency=3, env={"EMAIL_URL": f"filemail:///{mailbox}"}
    )
    expected_title = services.clean_title("Echo: Plan the spring offsite")
    wait_until(
        lambda: (
            Conversation.objects.get(pk=titled_later.pk).title == expected_title
            and Statement.objects.exists()
            and mails_with(mailbox, ALERT_SUBJECT)
        ),
        within=90,
        what="the three tasks are delivered again and done",
        log_of=second,
    )

    # Delivered once more each (as when a worker dies after the work, before acknowledging
    # it): nothing happens twice.
    for name, args in [
        ("chat.tasks.title_conversation", [titled_later.pk]),
        ("billing.tasks.send_budget_alert", [crossed.pk, 80]),
        ("billing.tasks.close_last_month", [AS_OF]),
    ]:
        task_id = processes.send_task(name, *args, task_id=f"again-{name}")
        wait_until(
            lambda task_id=task_id: f"[{task_id}] succeeded" in second.log(),
            within=60,
            what=f"{name} runs again",
            log_of=second,
        )

    assert Conversation.objects.get(pk=titled_later.pk).title == expected_title
    [title_call] = UsageRecord.objects.filter(source=UsageRecord.Source.TITLE)
    assert (title_call.status, title_call.model) == ("ok", "fake-gpt")
    assert mails_with(mailbox, ALERT_SUBJECT) == 1
    [statement] = Statement.objects.all()
    assert (statement.organization_id, statement.period_start) == (org_a.pk, JANUARY)
    assert statement.total_cost == january
    assert statement.lines.count() == 1


def test_a_pool_process_killed_mid_title_runs_it_again_at_once(
    processes,  # noqa: F811 - the fixture imported above
    titled_later,
    fake_upstream,
):
    # A broker that would deliver it again only after an hour, as in production: the task
    # comes back because the worker gives it back.
    worker = processes.worker("worker", concurrency=1, env={"TEST_PROCESSES_VISIBILITY": "3600"})
    processes.send_task("chat.tasks.title_conversation", titled_later.pk)
    wait_until(
        lambda: fake_upstream.request_counts["fake-gpt@hang"],
        within=60,
        what="the title call is under way",
        log_of=worker,
    )
    [pool_process] = worker.children()
    Conversation.objects.filter(pk=titled_later.pk).update(model="fake-gpt")
    os.kill(pool_process, signal.SIGKILL)

    # The same worker takes it again (reject_on_worker_lost), with no restart and no wait for
    # the broker's visibility timeout.
    expected = services.clean_title("Echo: Plan the spring offsite")
    wait_until(
        lambda: Conversation.objects.get(pk=titled_later.pk).title == expected,
        within=60,
        what="the title is written",
        log_of=worker,
    )
    assert worker.alive()
    assert "WorkerLostError" in worker.log()
    assert UsageRecord.objects.filter(source=UsageRecord.Source.TITLE).count() == 1
