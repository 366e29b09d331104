"""E-mail verification: a new account confirms its address by a signed, expiring link."""

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse

from accounts import services
from accounts.models import User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

STRONG = "a-long unusual passphrase 42"


def link_in(message) -> str:
    return re.search(r"http://testserver(/verify-email/\S+/)", message.body).group(1)


def sign_up(client, django_capture_on_commit_callbacks, email="new@example.com"):
    with django_capture_on_commit_callbacks(execute=True):
        return client.post(reverse("signup"), {"email": email, "password": STRONG}, follow=True)


def test_a_new_account_is_unverified_until_its_link_is_opened(
    client, django_capture_on_commit_callbacks
):
    page = sign_up(client, django_capture_on_commit_callbacks)

    user = User.objects.get(email="new@example.com")
    assert not user.email_verified
    assert "Confirm your address" in page.content.decode()  # the banner
    [message] = mail.outbox
    assert message.to == ["new@example.com"]

    response = client.get(link_in(message), follow=True)

    user.refresh_from_db()
    assert user.email_verified
    assert "new@example.com is confirmed" in response.content.decode()
    assert "Confirm your address" not in response.content.decode()


def test_a_tampered_link_is_refused(client, django_capture_on_commit_callbacks):
    sign_up(client, django_capture_on_commit_callbacks)
    link = link_in(mail.outbox[0])

    response = client.get(link[:-3] + "xx/")

    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert not User.objects.get(email="new@example.com").email_verified


def test_an_expired_link_is_refused_and_a_new_one_can_be_asked_for(
    client, settings, django_capture_on_commit_callbacks
):
    sign_up(client, django_capture_on_commit_callbacks)
    link = link_in(mail.outbox[0])
    settings.EMAIL_VERIFICATION_TTL = timedelta(seconds=-1)  # every link is already too old

    response = client.get(link)

    assert response.status_code == 400
    assert "expired" in response.content.decode()
    settings.EMAIL_VERIFICATION_TTL = timedelta(days=3)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("email_verification_resend"))
    assert len(mail.outbox) == 2
    client.get(link_in(mail.outbox[1]))
    assert User.objects.get(email="new@example.com").email_verified


def test_a_link_for_an_old_address_proves_nothing_about_a_new_one(db):
    user = UserFactory(email="old@example.com", email_verified_at=None)
    token = services.email_verification_token(user)
    user.email = "new@example.com"
    user.save()

    with pytest.raises(services.ServiceError):
        services.email_verify(token=token)
    user.refresh_from_db()
    assert not user.email_verified


def test_signing_up_by_an_invitation_link_confirms_the_address(
    client, client_for, alice, org_a, django_capture_on_commit_callbacks
):
    from tests.conftest import membership

    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(
            reverse("member_invite", args=[org_a.slug]),
            {"email": "ivy@example.com", "role": "member"},
        )
    token = re.search(r"/invitations/([^/\s]+)/", mail.outbox[0].body).group(1)

    client.post(
        reverse("signup") + f"?invitation={token}", {"email": "ivy@example.com", "password": STRONG}
    )
    client.post(reverse("invitation_accept", args=[token]))

    ivy = User.objects.get(email="ivy@example.com")
    assert ivy.email_verified
    assert membership(ivy, org_a).role == "member"
    assert len(mail.outbox) == 1  # no confirmation mail: the invitation's link was the proof


def test_signing_up_by_an_invitation_with_another_address_is_not_a_proof(
    client, client_for, alice, org_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(
            reverse("member_invite", args=[org_a.slug]),
            {"email": "ivy@example.com", "role": "member"},
        )
    token = re.search(r"/invitations/([^/\s]+)/", mail.outbox[0].body).group(1)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("signup") + f"?invitation={token}",
            {"email": "eve@example.com", "password": STRONG},
        )

    assert not User.objects.get(email="eve@example.com").email_verified
    assert mail.outbox[-1].to == ["eve@example.com"]  # her own confirmation link instead
