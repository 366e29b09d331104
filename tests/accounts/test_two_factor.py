"""Two-factor authentication: turning it on, the second step of logging in, recovery codes, the
lock after wrong codes, and an organization that requires it of its members.

Codes are computed as the authenticator app computes them, with django-otp's own TOTP and the
device's key. The device accepts a step either side of its own clock, so a step that ends between
computing a code and checking it changes nothing. No test sleeps: "later" moves the device's
clock on (its ``t0``), and "the lock has passed" moves the last failure back in time.
"""

import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import two_factor
from accounts.api_keys import api_key_create
from accounts.models import Membership, Organization, User
from chat.models import Conversation
from tests.conftest import ORIGIN, membership
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


# --- the authenticator app, and time -----------------------------------------------------------


def app_code(device: TOTPDevice) -> str:
    """The code the app shows now for this device."""
    device.refresh_from_db()
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return f"{totp.token():0{device.digits}d}"


def wrong_code(device: TOTPDevice) -> str:
    # One that is none of the three codes the device accepts around now.
    device.refresh_from_db()
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    accepted = set()
    for offset in (-1, 0, 1):
        totp.drift = device.drift + offset
        accepted.add(totp.token())
    return next(f"{n:06d}" for n in range(10**6) if n not in accepted)


def later(device: TOTPDevice, steps: int = 1) -> None:
    """The app's clock moves on by ``steps`` (a code is spent once: the next login needs the
    next step's)."""
    TOTPDevice.objects.filter(pk=device.pk).update(t0=F("t0") - steps * device.step)


def lock_passes(user: User) -> None:
    """The wait after wrong codes is over (the last failure moves an hour back)."""
    an_hour_ago = timezone.now() - timedelta(hours=1)
    for model in (TOTPDevice, StaticDevice):
        model.objects.filter(user=user, throttling_failure_count__gt=0).update(
            throttling_failure_timestamp=an_hour_ago
        )


def turn_on(user: User) -> tuple[TOTPDevice, list[str]]:
    """Two-factor authentication for ``user`` through the services: (device, recovery codes)."""
    pending = two_factor.two_factor_start(user=user)
    result = two_factor.two_factor_confirm(user=user, token=app_code(pending))
    later(result.device)
    return result.device, result.recovery_codes


def verified_client(user: User) -> Client:
    """A client whose session has given its second factor."""
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = two_factor.app_device(user).persistent_id
    session.save()
    return client


def log_in_with_password(user: User) -> Client:
    client = Client()
    response = client.post(reverse("login"), {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302
    return client


def second_step(client: Client, code: str, next_url: str = ""):
    return client.post(reverse("two_factor_verify"), {"token": code, "next": next_url})


def second_step_url(next_url: str) -> str:
    return f"{reverse('two_factor_verify')}?next={next_url}"


# --- turning it on, and off -------------------------------------------------------------------


def test_it_turns_on_only_once_a_code_from_the_app_confirms_it(client_for, alice):
    client = client_for(alice)
    assert "Off" in client.get(reverse("two_factor")).content.decode()

    response = client.post(reverse("two_factor_setup"), {"start": "1"})
    assert response.url == reverse("two_factor_setup")
    page = client.get(reverse("two_factor_setup"))
    pending = two_factor.pending_app_device(alice)
    body = page.content.decode()
    assert 'src="data:image/svg+xml' in body  # the QR code, with no script and no Pillow
    assert page.context["secret"].replace(" ", "") in body.replace(" ", "")
    assert not two_factor.has_two_factor(alice)  # a secret shown is not yet in force

    response = client.post(reverse("two_factor_setup"), {"token": wrong_code(pending)})
    assert "That code is not right" in response.content.decode()
    assert not two_factor.has_two_factor(alice)

    lock_passes(alice)
    response = client.post(reverse("two_factor_setup"), {"token": app_code(pending)})

    assert response.status_code == 200
    codes = response.context["codes"]
    assert len(set(codes)) == 10
    assert all(code in response.content.decode() for code in codes)
    assert two_factor.has_two_factor(alice)
    # The session that set it up has just given a code: it stays in.
    assert client.get(reverse("home")).status_code == 200


def test_recovery_codes_are_stored_as_digests_only(alice):
    _, codes = turn_on(alice)

    stored = set(StaticToken.objects.filter(device__user=alice).values_list("token", flat=True))
    assert len(stored) == 10
    assert not stored & set(codes)
    assert not stored & {code.replace("-", "") for code in codes}
    assert stored == {two_factor.recovery_code_digest(code) for code in codes}


def test_turning_it_off_takes_a_current_code(alice):
    device, _ = turn_on(alice)
    client = verified_client(alice)

    response = client.post(reverse("two_factor_disable"), {"token": wrong_code(device)})
    assert "That code is not right" in client.get(response.url).content.decode()
    assert two_factor.has_two_factor(alice)

    lock_passes(alice)
    client.post(reverse("two_factor_disable"), {"token": app_code(device)})

    assert not two_factor.has_two_factor(alice)
    assert not StaticToken.objects.filter(device__user=alice).exists()
    assert client.get(reverse("home")).status_code == 200  # no device: nothing more to give


def test_new_recovery_codes_take_a_current_code_and_replace_the_old_ones(alice):
    device, old_codes = turn_on(alice)
    client = verified_client(alice)

    refused = client.post(reverse("two_factor_recovery_codes"), {"token": old_codes[0]})
    assert refused.status_code == 302  # a recovery code cannot mint new ones
    assert two_factor.recovery_codes_left(alice) == 10
    lock_passes(alice)
    response = client.post(reverse("two_factor_recovery_codes"), {"token": app_code(device)})

    new_codes = response.context["codes"]
    assert len(set(new_codes)) == 10
    assert not set(new_codes) & set(old_codes)
    later(device)
    other = log_in_with_password(alice)
    assert "not right" in second_step(other, old_codes[1]).content.decode()
    lock_passes(alice)
    assert second_step(other, new_codes[0]).status_code == 302


# --- the second step of logging in ------------------------------------------------------------


def test_after_the_password_nothing_counts_until_the_code(alice, org_a, project_a):
    device, _ = turn_on(alice)
    client = log_in_with_password(alice)
    settings_url = reverse("organization_settings", args=[org_a.slug])

    assert client.get(reverse("home")).url == second_step_url("/")
    assert client.get(settings_url).url == second_step_url(settings_url)
    assert client.get(reverse("two_factor")).status_code == 302
    assert client.get(reverse("admin:index")).status_code == 302
    # The REST API and the socket treat the half-logged-in session as no one at all.
    api = client.get(reverse("api-project", args=[project_a.pk]))
    assert api.status_code == 401

    response = second_step(client, wrong_code(device), settings_url)
    assert response.status_code == 200
    assert "That code is not right" in response.content.decode()
    assert client.get(settings_url).status_code == 302

    lock_passes(alice)
    response = second_step(client, app_code(device), settings_url)

    assert response.url == settings_url
    assert client.get(settings_url).status_code == 200
    assert client.get(reverse("api-project", args=[project_a.pk])).status_code == 200


def test_the_second_step_sends_nobody_elsewhere(alice):
    device, _ = turn_on(alice)
    client = log_in_with_password(alice)

    response = second_step(client, app_code(device), "https://evil.example/")

    assert response.url == reverse("home")


def test_a_code_is_spent_once(alice):
    device, _ = turn_on(alice)
    code = app_code(device)
    assert second_step(log_in_with_password(alice), code).status_code == 302

    lock_passes(alice)
    replay = second_step(log_in_with_password(alice), code)

    assert "That code is not right" in replay.content.decode()


def test_a_recovery_code_works_once(alice):
    _, codes = turn_on(alice)

    client = log_in_with_password(alice)
    response = second_step(client, f"  {codes[0].upper()} ")  # as typed: case, spaces
    assert response.url == reverse("home")
    assert "9 left" in client.get(reverse("home")).content.decode()

    again = log_in_with_password(alice)
    response = second_step(again, codes[0])
    assert "That code is not right" in response.content.decode()
    assert again.get(reverse("home")).status_code == 302

    lock_passes(alice)
    assert second_step(again, codes[1]).url == reverse("home")
    assert two_factor.recovery_codes_left(alice) == 8


def test_wrong_codes_lock_the_second_step_for_longer_and_longer(alice):
    device, codes = turn_on(alice)
    client = log_in_with_password(alice)

    for _ in range(4):
        lock_passes(alice)
        assert "not right" in second_step(client, wrong_code(device)).content.decode()

    # Four wrong codes in a row: 2^3 = 8 seconds before the next try counts, and not even the
    # right code, nor a recovery code, gets in meanwhile.
    for code in (app_code(device), codes[0]):
        response = second_step(client, code)
        assert response.status_code == 429
        assert "Too many wrong codes. Wait 8 seconds" in response.content.decode()
    assert client.get(reverse("home")).status_code == 302
    device.refresh_from_db()
    assert device.throttling_failure_count == 4
    assert two_factor.recovery_codes_left(alice) == 10

    lock_passes(alice)
    assert second_step(client, app_code(device)).url == reverse("home")
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


def test_people_without_two_factor_log_in_as_before(bob):
    client = log_in_with_password(bob)

    assert client.get(reverse("home")).status_code == 200
    assert client.get(reverse("two_factor_verify")).url == reverse("home")


# --- an organization that requires it ---------------------------------------------------------


def require_two_factor(organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(require_two_factor=True)


def test_only_managers_turn_the_requirement_on_and_only_with_two_factor_themselves(
    client_for, alice, bob, org_a
):
    url = reverse("organization_two_factor", args=[org_a.slug])

    assert client_for(bob).post(url, {"require_two_factor": "on"}).status_code == 403
    response = client_for(alice).post(url, {"require_two_factor": "on"}, follow=True)
    assert "Turn on two-factor authentication for your own account first" in (
        response.content.decode()
    )
    org_a.refresh_from_db()
    assert not org_a.require_two_factor

    turn_on(alice)
    verified_client(alice).post(url, {"require_two_factor": "on"})
    org_a.refresh_from_db()
    assert org_a.require_two_factor

    # Members may not turn it off either; a manager may.
    assert client_for(bob).post(url, {}).status_code == 403
    verified_client(alice).post(url, {})
    org_a.refresh_from_db()
    assert not org_a.require_two_factor


def test_the_members_list_shows_managers_who_has_two_factor(client_for, alice, bob, org_a):
    turn_on(alice)
    page = verified_client(alice).get(reverse("organization_settings", args=[org_a.slug]))

    members = {m.user.email: m.has_two_factor for m in page.context["members"]}
    assert members == {"alice@example.com": True, "bob@example.com": False}
    assert "<th>Two-factor</th>" in page.content.decode()
    as_member = client_for(bob).get(reverse("organization_settings", args=[org_a.slug]))
    assert "<th>Two-factor</th>" not in as_member.content.decode()


def test_a_member_without_two_factor_is_refused_the_organizations_pages_and_rest(
    client_for, alice, bob, org_a, project_a
):
    require_two_factor(org_a)
    client = client_for(bob)

    for url in (
        reverse("organization_settings", args=[org_a.slug]),
        reverse("project_detail", args=[org_a.slug, project_a.slug]),
        reverse("chat_home", args=[org_a.slug, project_a.slug]),
        reverse("usage_dashboard", args=[org_a.slug]),
    ):
        response = client.get(url)
        assert response.status_code == 403, url
        body = response.content.decode()
        assert "requires its members to use two-factor authentication" in body
        assert f'href="{reverse("two_factor")}"' in body
    conversation = Conversation.objects.create(project=project_a, owner=bob, model="fake-gpt")
    for url in (
        reverse("api-project", args=[project_a.pk]),
        # an async endpoint too (it resolves the project the same way)
        reverse("api-messages", args=[project_a.pk, conversation.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 403, url
        assert response.json()["error"]["code"] == "two_factor_required"
    assert client.get(reverse("home")).status_code == 200  # their own account still works

    # Once Bob turns it on, the organization is his again.
    turn_on(bob)
    bob_2fa = verified_client(bob)
    assert bob_2fa.get(reverse("organization_settings", args=[org_a.slug])).status_code == 200
    assert bob_2fa.get(reverse("api-project", args=[project_a.pk])).status_code == 200
    messages = bob_2fa.get(reverse("api-messages", args=[project_a.pk, conversation.pk]))
    assert messages.status_code == 200


def test_a_member_refused_for_two_factor_can_still_leave_but_not_remove_others(
    client_for, alice, bob, org_a
):
    from tests.factories import MembershipFactory

    require_two_factor(org_a)
    other = MembershipFactory(organization=org_a)
    mine = Membership.objects.get(user=bob, organization=org_a)
    client = client_for(bob)
    page = client.get(reverse("organization_settings", args=[org_a.slug])).content.decode()
    leave = reverse("member_remove", args=[org_a.slug, mine.pk])
    assert f'action="{leave}"' in page  # the refusal page offers the way out

    assert client.post(reverse("member_remove", args=[org_a.slug, other.pk])).status_code == 403
    assert Membership.objects.filter(pk=other.pk).exists()
    response = client.post(leave)
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=mine.pk).exists()


def test_a_refused_member_is_not_shown_the_organizations_projects(
    client_for, alice, bob, org_a, project_a
):
    require_two_factor(org_a)
    client = client_for(bob)

    home = client.get(reverse("home")).content.decode()
    listed = client.get(reverse("api-projects")).json()["results"]

    assert project_a.name not in home
    assert "requires two-factor authentication" in home
    assert project_a.pk not in [p["id"] for p in listed]
    turn_on(bob)
    assert project_a.pk in [
        p["id"] for p in verified_client(bob).get(reverse("api-projects")).json()["results"]
    ]


def test_a_key_still_lists_its_project_when_the_organization_requires_two_factor(
    client, alice, org_a, project_a
):
    require_two_factor(org_a)
    key = api_key_create(
        actor=Membership.objects.get(user=alice, organization=org_a),
        project=project_a,
        name="bot",
        scopes=["read"],
    ).plaintext

    listed = client.get(reverse("api-projects"), HTTP_AUTHORIZATION=f"Bearer {key}").json()

    assert [p["id"] for p in listed["results"]] == [project_a.pk]


def test_the_requirement_does_not_touch_api_keys(client, alice, org_a, project_a):
    require_two_factor(org_a)
    key = api_key_create(
        actor=membership(alice, org_a), project=project_a, name="bot", scopes=["read"]
    ).plaintext

    response = client.get(
        reverse("api-project", args=[project_a.pk]), HTTP_AUTHORIZATION=f"Bearer {key}"
    )

    assert response.status_code == 200


def test_an_outsider_still_gets_404_not_the_two_factor_page(client_for, charlie, org_a):
    require_two_factor(org_a)

    response = client_for(charlie).get(reverse("organization_settings", args=[org_a.slug]))

    assert response.status_code == 404


# --- the socket ---------------------------------------------------------------------------------


def cookie_of(client: Client) -> str:
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


async def opens(cookie: str, conversation_id: int) -> bool:
    from config.asgi import application

    communicator = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conversation_id}/",
        headers=[(b"origin", ORIGIN.encode()), (b"cookie", cookie.encode())],
    )
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


@database_sync_to_async
def conversation_of(user: User, project) -> Conversation:
    return Conversation.objects.create(project=project, owner=user, model="fake-gpt")


@pytest.mark.django_db(transaction=True)
async def test_the_socket_refuses_a_member_the_organization_requires_two_factor_of(
    alice, bob, org_a, project_a
):
    conversation = await conversation_of(bob, project_a)
    without = await database_sync_to_async(lambda: cookie_of(_forced(bob)))()
    assert await opens(without, conversation.pk)

    await database_sync_to_async(require_two_factor)(org_a)
    assert not await opens(without, conversation.pk)

    await database_sync_to_async(turn_on)(bob)
    verified = await database_sync_to_async(lambda: cookie_of(verified_client(bob)))()
    assert await opens(verified, conversation.pk)


@pytest.mark.django_db(transaction=True)
async def test_the_socket_refuses_a_session_that_has_not_given_its_code(alice, project_a):
    conversation = await conversation_of(alice, project_a)
    await database_sync_to_async(turn_on)(alice)

    half = await database_sync_to_async(lambda: cookie_of(log_in_with_password(alice)))()
    verified = await database_sync_to_async(lambda: cookie_of(verified_client(alice)))()

    assert not await opens(half, conversation.pk)
    assert await opens(verified, conversation.pk)


def _forced(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- the admin ----------------------------------------------------------------------------------


def test_staff_see_who_has_devices_but_never_a_secret(client, alice):
    device, _ = turn_on(alice)
    client.force_login(UserFactory(email="staff@example.com", is_staff=True, is_superuser=True))

    listing = client.get(reverse("admin:otp_totp_totpdevice_changelist"))
    change = client.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk]))
    recovery = client.get(
        reverse("admin:otp_static_staticdevice_change", args=[StaticDevice.objects.get().pk])
    )

    assert listing.status_code == change.status_code == recovery.status_code == 200
    assert "alice@example.com" in listing.content.decode()
    assert device.key not in change.content.decode()
    digest = StaticToken.objects.first().token
    assert digest not in recovery.content.decode()
