"""Budget alerts by e-mail, and beat jobs: expired holds released, last month closed."""

from celery import shared_task
from django.conf import settings

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
    recipients = sorted(managers_of(budget.organization).values_list("email", flat=True))
    if not recipients:
        return
    what = (
        "reached its hard limit: calls are now refused"
        if threshold >= 100
        else (f"passed {threshold}% of its limit")
    )
    described = budget.describe()
    # Not str.capitalize(), which lowercases the rest: names, and a key's case-sensitive prefix.
    sentence_start = described[:1].upper() + described[1:]
    send_email(
        subject=f"[{budget.organization.name}] {described} {what}",
        body=(
            f"{sentence_start} (${budget.limit_usd} per "
            f"{budget.get_period_display().lower()}) has {what}.\n\n"
            f"Usage: {settings.SITE_URL.rstrip('/')}/orgs/{budget.organization.slug}/usage/"
        ),
        to=recipients,
    )


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
