"""Running in production, several processes at once.

Scale-out, with real processes: two Daphne processes and a Celery worker sharing PostgreSQL and
Redis (tests/processes.py), as production runs them behind a load balancer. A browser tab on
each process: one starts a reply, the other watches it stream, stops it, and both get the title
the worker writes. `make test` runs it with the PostgreSQL and Redis tests (its markers).

And what runs them: the Procfile and compose.yaml say the same, and a web process refuses to
start without the static files collected.
"""

from __future__ import annotations

import re
import shlex
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured

from billing.models import BudgetPeriod, Hold, UsageRecord
from chat import services
from chat.models import Conversation, Message
from config.startup import require_collected_static
from tests.billing.conftest import make_budget  # noqa: F401 - fixtures
from tests.chat.conftest import make_conversation, serve  # noqa: F401
from tests.conftest import session_cookie
from tests.processes import open_tab, processes  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent

FIRST = "Plan the spring offsite for the team"
SECOND = "And what should it cost"
# Four tokens ("Echo: Plan the spring "), 100 ms apart, then nothing until the call is closed:
# only a stop ends this reply.
STALLING = "fake-gpt@slow100@stall4"
QUICK = "fake-gpt@slow50"


def reply_text(events: list[dict]) -> str:
    """The text the deltas carry, each put at its offset."""
    text = ""
    for event in events:
        if event["type"] == "delta":
            text = text[: event["offset"]] + event["text"]
    return text


@pytest.fixture
def conversation(
    make_conversation,  # noqa: F811 - the fixture imported above
    make_budget,  # noqa: F811 - the fixture imported above
    fake_upstream,
    alice,
    project_a,
    fake_price,
):
    make_budget(project_a.organization, limit=100, scope="project", project=project_a)
    conversation = make_conversation(alice, project_a, model=STALLING)
    serve(project_a, fake_upstream, QUICK)
    return conversation


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_a_reply_started_on_one_process_is_watched_stopped_and_titled_on_another(
    processes,  # noqa: F811 - the fixture imported above
    conversation,
    alice,
):
    process_a, process_b = processes.web("daphne-a"), processes.web("daphne-b")
    worker = processes.worker("worker")
    cookie = await database_sync_to_async(session_cookie)(alice)

    async with (
        open_tab(process_a, conversation.pk, cookie=cookie) as tab_a,
        open_tab(process_b, conversation.pk, cookie=cookie) as tab_b,
    ):
        await tab_a.send(type="message", content=FIRST)
        # Process B's tab sees the reply that process A runs, token by token; then stops it.
        seen = await tab_b.until("assistant.started")
        reply_id = seen[-1]["message"]["id"]
        seen += await tab_b.until("delta")
        await tab_b.send(type="stop")
        seen += await tab_b.until("done")
        stopped_on_a = (await tab_a.until("done"))[-1]["message"]

        stopped = seen[-1]["message"]
        assert [event["type"] for event in seen[:2]] == ["message", "assistant.started"]
        assert stopped["id"] == stopped_on_a["id"] == reply_id
        assert stopped["state"] == stopped_on_a["state"] == "stopped"
        assert stopped["content"] == reply_text(seen) == stopped_on_a["content"]
        assert re.fullmatch(r"Echo: (\S+ ){0,3}", stopped["content"])  # cut short

        # The next turn, asked on B on a quicker model, completes: the worker titles the
        # conversation, and both tabs hear of it.
        await tab_b.send(type="model", model=QUICK)
        await tab_b.send(type="message", content=SECOND)
        on_b = await tab_b.until("title")
        if not any(event["type"] == "done" for event in on_b):  # the title came first
            on_b += await tab_b.until("done")
        on_a = await tab_a.until("title")

    expected = services.clean_title(f"Echo: {FIRST}")
    [title_on_b] = [event["title"] for event in on_b if event["type"] == "title"]
    assert on_a[-1]["title"] == title_on_b == expected
    done = [event["message"] for event in on_b if event["type"] == "done"]
    assert [(m["state"], m["content"]) for m in done] == [("complete", f"Echo: {SECOND}")]
    assert "chat.tasks.title_conversation" in worker.log()

    def ledger() -> tuple:
        reply = Message.objects.get(pk=reply_id)
        rows = list(UsageRecord.objects.filter(message_id=reply_id))
        return (
            reply,
            rows,
            Hold.objects.exists(),
            BudgetPeriod.objects.get().reserved,
            Conversation.objects.get(pk=conversation.pk).title,
            UsageRecord.objects.filter(source=UsageRecord.Source.TITLE).count(),
        )

    reply, rows, holds_left, reserved, title, titles = await database_sync_to_async(ledger)()
    assert (reply.state, reply.finish_reason, reply.content) == (
        "stopped",
        "stop_requested",
        stopped["content"],
    )
    [row] = rows  # the stopped reply: one ledger row, billed for what was generated
    assert (row.status, row.completion_tokens) == ("stopped", reply.completion_tokens)
    assert row.cost > 0
    assert not holds_left
    assert reserved == Decimal(0)
    assert (title, titles) == (expected, 1)


# --- what runs the processes -------------------------------------------------------------------


def test_a_web_process_refuses_to_start_without_the_collected_static_files(settings, tmp_path):
    settings.DEBUG = False
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage",
            "OPTIONS": {"location": tmp_path},
        },
    }
    # Without the manifest every page linking a static file would answer 500.
    with pytest.raises(ImproperlyConfigured, match="collectstatic"):
        require_collected_static()

    (tmp_path / "staticfiles.json").write_text('{"paths": {}, "version": "1.1"}')
    require_collected_static()


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def required_by_production() -> set[str]:
    """The variables the production profile reads with no default: it refuses to start
    without them."""
    source = (ROOT / "config" / "settings" / "production.py").read_text()
    return set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"\s*\)', source))


def test_the_procfile_releases_then_runs_web_worker_and_beat():
    commands = procfile()

    assert list(commands) == ["release", "web", "worker", "beat"]
    assert commands["release"] == (
        "python manage.py migrate --noinput && python manage.py collectstatic --noinput"
    )
    assert shlex.split(commands["web"])[0] == "daphne"
    assert "config.asgi:application" in commands["web"]
    assert shlex.split(commands["worker"])[:4] == ["celery", "-A", "config", "worker"]
    assert shlex.split(commands["beat"])[:4] == ["celery", "-A", "config", "beat"]


def test_compose_runs_the_procfile_with_what_production_requires():
    services_ = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    commands = procfile()
    app = ["release", "web-1", "web-2", "worker", "beat"]

    assert {"postgres", "redis", "proxy", *app} == set(services_)
    assert {name: services_[name]["command"] for name in ["web-1", "web-2", "worker", "beat"]} == {
        "web-1": commands["web"].replace("${PORT:-8000}", "8000"),
        "web-2": commands["web"].replace("${PORT:-8000}", "8000"),
        "worker": commands["worker"],
        "beat": commands["beat"],
    }
    assert services_["release"]["command"] == f'sh -c "{commands["release"]}"'
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "FIELD_ENCRYPTION_KEYS"} <= (
        required_by_production()
    )
    for name in app:
        environment = services_[name]["environment"]
        assert environment["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
        assert required_by_production() <= set(environment), name
    for name in ["web-1", "web-2"]:
        assert services_[name]["depends_on"]["release"]["condition"] == (
            "service_completed_successfully"
        )
        assert f"--to {name}:8000" in services_["proxy"]["command"]
