"""E-mail, sent off the request path (invitations, alerts) and retried on network errors."""

from celery import shared_task
from django.core.mail import send_mail


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def send_email(*, subject: str, body: str, to: list[str]) -> None:
    send_mail(subject=subject, message=body, from_email=None, recipient_list=to)
