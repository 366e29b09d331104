"""Budget alerts by e-mail, and beat jobs: expired holds released, last month closed."""

from celery import shared_task
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext, gettext_noop

from accounts.models import User
from accounts.selectors import managers_of
from accounts.tasks import send_email

from . import services
from .models import Budget, UsageRecord


@shared_task(ignore_result=True)
def send_budget_alert(budget_id: int, threshold: int) -> None:
    """E-mail the organization's owners and admins that a budget crossed a threshold."""
    budget = (
        Budget.objects.select_related("organization", "project", "user", "api_key")
        .filter(pk=budget_id)
        .first()
    )
    if budget is None:
        return
    # One e-mail per language the owners and admins read (their choice, else the default).
    by_language: dict[str, list[str]] = {}
    for email, language in managers_of(budget.organization).values_list("email", "language"):
        by_language.setdefault(language or settings.LANGUAGE_CODE, []).append(email)
    for language, recipients in sorted(by_language.items()):
        with translation.override(language):
            subject, body = _budget_alert(budget, threshold)
        send_email(subject=subject, body=body, to=sorted(recipients))


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


@shared_task(ignore_result=True)
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
    send_email(
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


@shared_task(ignore_result=True)
def close_last_month() -> int:
    """Celery beat: write last month's statements (idempotent, so it runs hourly)."""
    from .statement_services import statements_close_previous_month

    return len(statements_close_previous_month())
