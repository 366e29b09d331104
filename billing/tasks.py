"""Budget alerts by e-mail, and beat jobs: expired holds released, last month closed.

The e-mails and the statements are late-acknowledged (``acks_late``, ``reject_on_worker_lost``):
a worker killed mid-task leaves its message to be delivered again, to itself once restarted or
to another worker (on Redis, once the broker's visibility timeout has passed: see
CELERY_BROKER_TRANSPORT_OPTIONS). So each may run twice, and each is safe to: a statement is
written once per organization and month, and an e-mail already sent is marked as such (on its
alert's row; in the cache for an alert whose row is gone).
"""

from datetime import datetime

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone, translation
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext, gettext_noop

from accounts.models import User
from accounts.selectors import managers_of
from accounts.tasks import send_email

from . import services
from .models import Budget, BudgetAlert, UsageRecord

# How long an e-mail is remembered as sent: past any redelivery (the broker's visibility
# timeout is an hour at most), and past a period (a lifetime budget's alert has one period).
SENT_MARK_SECONDS = 400 * 24 * 3600


def _send_once(mark: str, *, subject: str, body: str, to: list[str]) -> None:
    """Send unless a delivery of this task sent it already. Marked after sending: a worker
    killed between the two sends it again on redelivery (a repeat beats a lost alert)."""
    if cache.get(mark):
        return
    send_email(subject=subject, body=body, to=to)
    cache.set(mark, 1, SENT_MARK_SECONDS)


def _alert_sent_once(
    alert_id: int, language: str, *, subject: str, body: str, to: list[str]
) -> None:
    """As ``_send_once``, marked on the alert's row (in the database: a mark that outlives the
    worker and the cache)."""
    if language in (
        BudgetAlert.objects.filter(pk=alert_id).values_list("sent_languages", flat=True).first()
        or []
    ):
        return
    send_email(subject=subject, body=body, to=to)
    with transaction.atomic():
        alert = BudgetAlert.objects.select_for_update().filter(pk=alert_id).first()
        if alert is not None and language not in alert.sent_languages:
            alert.sent_languages = [*alert.sent_languages, language]
            alert.save(update_fields=["sent_languages"])


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def send_budget_alert(budget_id: int, threshold: int) -> None:
    """E-mail the organization's owners and admins that a budget crossed a threshold: once per
    budget, period and threshold (the BudgetAlert row), even if the task runs twice."""
    budget = (
        Budget.objects.select_related("organization", "project", "user", "api_key")
        .filter(pk=budget_id)
        .first()
    )
    if budget is None:
        return
    # The period of the crossing: its alert row (the latest, made just before this was queued),
    # else the current one.
    alert = (
        BudgetAlert.objects.filter(budget=budget, threshold=threshold)
        .order_by("-period_start")
        .values_list("pk", "period_start")
        .first()
    )
    period_start = (
        alert[1] if alert is not None else services.period_bounds(budget.period, timezone.now())[0]
    )
    # One e-mail per language the owners and admins read (their choice, else the default).
    by_language: dict[str, list[str]] = {}
    for email, language in managers_of(budget.organization).values_list("email", "language"):
        by_language.setdefault(language or settings.LANGUAGE_CODE, []).append(email)
    for language, recipients in sorted(by_language.items()):
        with translation.override(language):
            subject, body = _budget_alert(budget, threshold)
        if alert is not None:
            _alert_sent_once(alert[0], language, subject=subject, body=body, to=sorted(recipients))
            continue
        mark = f"billing:alert-sent:{budget.pk}:{threshold}:{period_start.isoformat()}:{language}"
        _send_once(mark, subject=subject, body=body, to=sorted(recipients))


# "(… per calendar month (UTC))": the period inside a sentence.
PERIOD_PHRASES: dict[str, str] = {
    Budget.Period.MONTH: gettext_noop("calendar month (UTC)"),
    Budget.Period.DAY: gettext_noop("day (UTC)"),
    Budget.Period.LIFETIME: gettext_noop("lifetime"),
}


def _budget_alert(budget: Budget, threshold: int) -> tuple[str, str]:
    """The subject and body of a budget alert, in the active language."""
    described = budget.describe()
    # Not str.capitalize(), which lowercases the rest: names, and a key's case-sensitive prefix.
    figures = {
        "organization": budget.organization.name,
        "budget": described,
        "Budget": described[:1].upper() + described[1:],
        "limit": services.money(budget.limit_usd),
        "period": gettext(PERIOD_PHRASES[budget.period]),
        "percent": threshold,
    }
    if threshold >= 100:
        subject = gettext(
            "[%(organization)s] %(budget)s reached its hard limit: calls are now refused"
        )
        sentence = gettext(
            "%(Budget)s (%(limit)s per %(period)s) has reached its hard limit: calls are now "
            "refused."
        )
    else:
        subject = gettext("[%(organization)s] %(budget)s passed %(percent)s%% of its limit")
        sentence = gettext(
            "%(Budget)s (%(limit)s per %(period)s) has passed %(percent)s%% of its limit."
        )
    usage = f"{settings.SITE_URL.rstrip('/')}/orgs/{budget.organization.slug}/usage/"
    body = sentence % figures + "\n\n" + gettext("Usage: %(url)s") % {"url": usage}
    return subject % figures, body


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def alert_over_hold(record_id: int) -> None:
    """E-mail staff that an upstream billed more than a call held (see UsageRecord.over_hold)."""
    record = UsageRecord.objects.select_related("organization", "connection").filter(pk=record_id)
    row = record.first()
    if row is None:
        return
    staff = sorted(
        User.objects.filter(is_staff=True, is_active=True).values_list("email", flat=True)
    )
    if not staff:
        return
    _send_once(
        f"billing:over-hold-sent:{row.pk}",
        subject=f"[gateway] an upstream used more than was held: {row.model}",
        body=(
            f"Call {row.request_id} ({row.model}, connection {row.connection or '-'}, "
            f"organization {row.organization}) reported {row.completion_tokens} reply tokens "
            f"and cost ${row.cost}, more than its hold. It is recorded as reported and flagged "
            f"(over_hold) in the ledger.\n\n"
            f"{settings.SITE_URL.rstrip('/')}/admin/billing/usagerecord/?over_hold__exact=1"
        ),
        to=staff,
    )


@shared_task(ignore_result=True)
def expire_holds() -> int:
    """Celery beat: give back money held for calls whose process died."""
    return services.holds_expire()


@shared_task(ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def close_last_month(as_of: str | None = None) -> int:
    """Celery beat: write last month's statements (idempotent, so it runs hourly). ``as_of``:
    an ISO 8601 instant that stands for now (the month before it is closed), for a test or an
    operator closing a month by hand; beat sends none."""
    from .statement_services import statements_close_previous_month

    now: datetime | None = parse_datetime(as_of) if as_of else None
    return len(statements_close_previous_month(now=now))
