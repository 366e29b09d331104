"""Moderation's checks: the connection's /v1/moderations (the fake upstream, through the real
SDK) or the project's pattern list; failing closed; what a flagged message leaves behind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from billing.models import Hold, UsageRecord
from billing.services import CallContext
from chat import moderation
from chat.actors import Actor
from chat.models import ChatSettings, Message, ModerationFlag
from core.errors import ServiceError
from providers.pool import provider_pool
from providers.specs import ProviderSpec, spec_for
from tests.chat.conftest import fake_connection, serve
from tests.conftest import membership

pytestmark = pytest.mark.django_db

PATTERNS = """# what the list flags
violence: \\b(kill|murder)\\b

harassment: \\bidiot\\b
"""


def run(check: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
    """``check(**kwargs)`` from a sync test: its database work on the test's own connection,
    the providers it leased closed after it."""

    async def go() -> Any:
        try:
            return await check(**kwargs)
        finally:
            await provider_pool().aclose()

    return async_to_sync(go)()


def context_of(project, spec: ProviderSpec, user=None) -> CallContext:
    return CallContext(
        organization_id=project.organization_id,
        project_id=project.pk,
        user_id=user.pk if user else None,
        model=spec.model,
        connection_id=spec.connection_id,
    )


def moderated(project, *, patterns: str = PATTERNS, check_replies: bool = False) -> None:
    ChatSettings.objects.update_or_create(
        project=project,
        defaults={
            "moderation_enabled": True,
            "moderation_check_replies": check_replies,
            "moderation_patterns": patterns,
        },
    )
    moderation.forget_config()


@pytest.fixture
def connection_checks(project_a, fake_upstream) -> ProviderSpec:
    """fake-gpt on a connection that answers /v1/moderations."""
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")
    moderated(project_a)
    return spec_for(project=project_a, model="fake-gpt")


@pytest.fixture
def patterns_check(project_a, fake_upstream) -> ProviderSpec:
    """fake-gpt on a connection without /v1/moderations: the pattern list checks."""
    serve(project_a, fake_upstream, "fake-gpt")
    moderated(project_a)
    return spec_for(project=project_a, model="fake-gpt")


def screen(project, spec: ProviderSpec, text: str, user=None) -> moderation.Verdict:
    return run(
        moderation.screen,
        config=moderation.config_for(project.pk),
        context=context_of(project, spec, user),
        spec=spec,
        text=text,
    )


# --- the pattern list --------------------------------------------------------------------------


def test_it_reads_one_rule_per_line_skipping_blanks_and_comments():
    rules = moderation.parse_patterns(PATTERNS)

    assert [(rule.line, rule.category) for rule in rules] == [(2, "violence"), (4, "harassment")]
    assert moderation.check_patterns(rules, "You IDIOT, I will KILL") == ["violence", "harassment"]
    assert moderation.check_patterns(rules, "killing time with skill") == []


def test_a_category_is_named_once_however_many_of_its_rules_match():
    rules = moderation.parse_patterns("violence: kill\nviolence: murder\nspam: buy now")

    assert moderation.check_patterns(rules, "kill and murder") == ["violence"]


@pytest.mark.parametrize(
    ("patterns", "line", "says"),
    [
        ("violence: kill\n\nhate: (unclosed", 3, "not a valid regular expression"),
        ("# fine\njust a regex", 2, "category: regular expression"),
        ("violence:   ", 1, "category: regular expression"),
        (": kill", 1, "category: regular expression"),
        ("a?b: kill", 1, "a category is a name"),
        ("violence: " + "a" * 501, 1, "longer than 500 characters"),
        ("x: [z-a]", 1, "not a valid regular expression"),
    ],
)
def test_a_line_that_is_not_a_rule_is_refused_naming_it(patterns, line, says):
    with pytest.raises(ServiceError) as refused:
        moderation.parse_patterns(patterns)

    assert refused.value.param == "patterns"
    assert refused.value.message.startswith(f"Line {line}: ")
    assert says in refused.value.message


def test_a_list_too_long_is_refused():
    with pytest.raises(ServiceError, match="the limit is 20,000"):
        moderation.parse_patterns("x: y\n" * 5_000)
    many = "\n".join(f"c{n}: word{n}" for n in range(moderation.MAX_RULES + 1))
    with pytest.raises(ServiceError, match=f"Line {moderation.MAX_RULES + 1}: a list may have"):
        moderation.parse_patterns(many)


def test_a_pattern_that_backtracks_without_end_fails_the_check_closed(monkeypatch):
    # (a|aa)+$ against a run of a's that does not end the text: exponentially many ways to
    # fail. The bound is lowered so the test does not wait long for it.
    monkeypatch.setattr(moderation, "PATTERN_SECONDS", 0.05)
    rules = moderation.parse_patterns("spam: buy now\nslow: (a|aa)+$")

    with pytest.raises(moderation.ModerationUnavailable) as failed:
        moderation.check_patterns(rules, "a" * 64 + "!")

    assert failed.value.code == "moderation_unavailable"
    assert failed.value.status == 503
    assert "line 2" in failed.value.message
    assert failed.value.headers() == {"x-should-retry": "false"}  # it would time out again


def test_a_bad_line_saved_around_the_checks_is_skipped_and_the_rest_apply(project_a):
    ChatSettings.objects.create(
        project=project_a, moderation_enabled=True, moderation_patterns="bad: (\nspam: buy now"
    )

    config = moderation.config_for(project_a.pk)

    assert [(rule.line, rule.category) for rule in config.rules] == [(2, "spam")]


# --- the settings ------------------------------------------------------------------------------


def test_managers_change_the_settings_and_every_call_sees_it_at_once(alice, org_a, project_a):
    assert moderation.config_for(project_a.pk) == moderation.OFF  # read, and kept in memory

    moderation.moderation_update(
        actor=membership(alice, org_a),
        project=project_a,
        enabled=True,
        check_replies=True,
        patterns="violence: kill\r\nspam: buy now\r\n",
    )

    config = moderation.config_for(project_a.pk)
    assert (config.enabled, config.check_replies) == (True, True)
    assert [rule.category for rule in config.rules] == ["violence", "spam"]
    assert ChatSettings.objects.get(project=project_a).moderation_patterns == (
        "violence: kill\nspam: buy now"
    )


def test_a_member_cannot_change_them_nor_anyone_save_a_bad_list(alice, bob, org_a, project_a):
    with pytest.raises(ServiceError) as forbidden:
        moderation.moderation_update(
            actor=membership(bob, org_a),
            project=project_a,
            enabled=False,
            check_replies=False,
            patterns="",
        )
    assert forbidden.value.code == "forbidden"
    with pytest.raises(ServiceError, match="Line 2"):
        moderation.moderation_update(
            actor=membership(alice, org_a),
            project=project_a,
            enabled=True,
            check_replies=False,
            patterns="ok: fine\nbroken: (",
        )
    assert not ChatSettings.objects.filter(project=project_a).exists()


# --- screening ---------------------------------------------------------------------------------


def test_the_connection_checks_and_each_check_is_one_free_ledger_row(
    connection_checks, project_a, alice, fake_upstream
):
    flagged = screen(project_a, connection_checks, "I will kill him", user=alice)
    clean = screen(project_a, connection_checks, "What a lovely day", user=alice)

    assert flagged == moderation.Verdict(
        flagged=True, categories=["violence"], checked_by="connection:omni-moderation-latest"
    )
    assert clean == moderation.Verdict(
        flagged=False, categories=[], checked_by="connection:omni-moderation-latest"
    )
    assert fake_upstream.request_counts == {"omni-moderation-latest": 2}
    assert [request["input"] for request in fake_upstream.requests] == [
        "I will kill him",
        "What a lovely day",
    ]
    rows = list(UsageRecord.objects.order_by("id"))
    assert [(r.source, r.model, r.status, r.cost, r.user_id) for r in rows] == [
        ("moderation", "omni-moderation-latest", "ok", Decimal(0), alice.pk),
        ("moderation", "omni-moderation-latest", "ok", Decimal(0), alice.pk),
    ]
    assert all(r.price is not None and r.estimated and r.prompt_tokens > 0 for r in rows)
    assert {r.connection_id for r in rows} == {connection_checks.connection_id}
    assert not Hold.objects.exists()


def test_without_moderations_on_the_connection_the_patterns_check_and_nothing_is_sent(
    patterns_check, project_a, fake_upstream
):
    flagged = screen(project_a, patterns_check, "You idiot")
    clean = screen(project_a, patterns_check, "kill" + "ing it")  # "killing": no whole word

    assert flagged == moderation.Verdict(
        flagged=True, categories=["harassment"], checked_by="patterns"
    )
    assert clean.flagged is False
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


def test_with_moderation_off_nothing_is_checked(project_a, fake_upstream):
    fake_connection(project_a, fake_upstream, supports_moderation=True)
    serve(project_a, fake_upstream, "fake-gpt")
    spec = spec_for(project=project_a, model="fake-gpt")

    verdict = screen(project_a, spec, "I will kill him")

    assert verdict == moderation.PASSED
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


def test_a_failing_moderation_endpoint_fails_closed_with_one_error_row(
    connection_checks, project_a, fake_upstream, settings
):
    settings.MODERATION_MODEL = "omni-moderation-latest@500"

    with pytest.raises(moderation.ModerationUnavailable) as failed:
        screen(project_a, connection_checks, "What a lovely day")

    assert failed.value.code == "moderation_unavailable"
    assert failed.value.status == 503
    assert failed.value.message.startswith("Your message was not sent: the moderation check")
    [row] = UsageRecord.objects.all()
    assert (row.source, row.status, row.cost, row.prompt_tokens) == (
        "moderation",
        "error",
        Decimal(0),
        0,
    )
    assert fake_upstream.request_counts == {"omni-moderation-latest@500": 1}  # no retries set
    assert not Hold.objects.exists()


def test_an_unpriced_moderation_model_under_a_budget_is_refused_before_anything_is_sent(
    connection_checks, project_a, fake_upstream, settings
):
    from billing.models import Budget

    Budget.objects.create(
        organization=project_a.organization, scope="organization", limit_usd=Decimal("10")
    )
    settings.MODERATION_MODEL = "house-moderation"  # no price row matches it

    with pytest.raises(ServiceError) as refused:
        screen(project_a, connection_checks, "What a lovely day")

    assert refused.value.code == "budget_exceeded"
    assert sum(fake_upstream.request_counts.values()) == 0
    assert not UsageRecord.objects.exists()


# --- what is kept of a flagged message -----------------------------------------------------------


def test_a_refused_message_is_kept_flagged_on_the_branch_with_its_flag(
    make_conversation, alice, project_a
):
    conversation = make_conversation(alice, project_a)
    earlier = Message.objects.create(conversation=conversation, role="user", content="hi")
    verdict = moderation.Verdict(
        flagged=True, categories=["violence"], checked_by="connection:omni-moderation-latest"
    )

    message = moderation.message_refuse(
        actor=Actor(user=alice),
        conversation_id=conversation.pk,
        content="I will kill him " + "x" * 600,
        verdict=verdict,
    )

    message.refresh_from_db()
    assert (message.role, message.flagged, message.author, message.parent_id, message.on_path) == (
        "user",
        True,
        alice,
        earlier.pk,
        True,
    )
    [flag] = ModerationFlag.objects.all()
    assert (flag.project, flag.source, flag.target, flag.categories, flag.checked_by) == (
        project_a,
        "chat",
        "input",
        ["violence"],
        "connection:omni-moderation-latest",
    )
    assert (flag.conversation, flag.message, flag.user, flag.api_key) == (
        conversation,
        message,
        alice,
        None,
    )
    assert len(flag.excerpt) == moderation.EXCERPT_CHARS
    assert flag.excerpt.startswith("I will kill him")


def test_no_one_refuses_a_message_into_a_conversation_they_cannot_reach(
    make_conversation, alice, bob, charlie, project_a
):
    conversation = make_conversation(alice, project_a)
    verdict = moderation.Verdict(flagged=True, categories=["hate"], checked_by="patterns")

    for outsider in (bob, charlie):
        with pytest.raises(ServiceError) as refused:
            moderation.message_refuse(
                actor=Actor(user=outsider),
                conversation_id=conversation.pk,
                content="words",
                verdict=verdict,
            )
        assert refused.value.code == "not_found"
    assert not Message.objects.filter(flagged=True).exists()
    assert not ModerationFlag.objects.exists()


def test_content_flagged_names_the_categories():
    error = moderation.ContentFlagged(["violence", "harassment"])

    assert error.code == "content_flagged"
    assert error.status == 400
    assert error.categories == ["violence", "harassment"]
    assert error.message == ("Your message was not sent: it was flagged for violence, harassment.")
    assert error.body()["error"]["code"] == "content_flagged"
