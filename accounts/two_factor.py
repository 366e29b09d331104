"""Two-factor authentication: an authenticator app (TOTP) a person turns on, recovery codes, and
what an organization's "require two-factor authentication" means.

Built on django-otp: a ``TOTPDevice`` (plugins.otp_totp) for the app, and one ``StaticDevice``
(plugins.otp_static) holding the recovery codes. The library verifies, keeps a used TOTP step
from being accepted twice, and throttles wrong codes (exponential back-off, per device).
``django_otp.login`` marks a session verified; ``OTPMiddleware`` reads that back as
``request.user.otp_device``.

Recovery codes are stored hashed. ``StaticToken.token`` holds the code's digest, not the code:
16 characters of the URL-safe base64 of its SHA-256 (96 bits: what fits the library's
16-character column), and a code is checked by giving ``StaticDevice.verify_token`` that
digest, so the library still deletes a used code and throttles wrong ones. A code is 80
random bits, so a leaked digest cannot be turned back into it by trying them all.

Someone has two-factor authentication when they have a confirmed TOTP device; the recovery
codes are its spare, never a second factor on their own.
"""

from __future__ import annotations

import hashlib
import os
from base64 import b32encode, urlsafe_b64encode
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import segno
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp import verify_token as otp_verify_token
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from core.errors import ServiceError

from .models import AnyUser, Membership, Organization, Project, User

RECOVERY_CODE_COUNT = 10
APP_DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"

WRONG_CODE = _("That code is not right. Check the time on your phone, or use a recovery code.")


# --- reads ---------------------------------------------------------------------------------


def has_two_factor(user: AnyUser) -> bool:
    return user.is_authenticated and TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def is_verified(user: Any) -> bool:
    """Whether this session's person gave a second factor (django-otp's ``is_verified``). Fails
    closed for a user no middleware has looked at."""
    return getattr(user, "otp_device", None) is not None


def two_factor_satisfied(*, user: AnyUser, organization: Organization) -> bool:
    """Whether the organization lets this person in as far as two-factor authentication goes.
    A verified session is one whose person has a device (the middleware sends any other
    session of theirs to the second step), so no query is needed."""
    return not organization.require_two_factor or is_verified(user)


def app_device(user: User) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


def pending_app_device(user: User) -> TOTPDevice | None:
    """The device being set up: its secret is shown until a code from it confirms it."""
    return TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()


def recovery_codes_left(user: User) -> int:
    device = StaticDevice.objects.filter(user=user).first()
    return device.token_set.count() if device is not None else 0


def with_two_factor(memberships: QuerySet[Membership]) -> QuerySet[Membership]:
    """Memberships annotated ``has_two_factor`` (one subquery, not one query a row)."""
    devices = TOTPDevice.objects.filter(user=OuterRef("user"), confirmed=True)
    return memberships.annotate(has_two_factor=Exists(devices))


def projects_let_in(user: AnyUser, projects: QuerySet[Project]) -> QuerySet[Project]:
    """``projects`` without those of organizations whose two-factor requirement this session
    does not meet: not even their names are listed until it does."""
    if is_verified(user):
        return projects
    return projects.exclude(organization__require_two_factor=True)


def organizations_requiring(user: User) -> QuerySet[Organization]:
    return Organization.objects.for_user(user).filter(require_two_factor=True)


def secret_text(device: TOTPDevice) -> str:
    """The secret as authenticator apps take it typed in: base32, in groups of four."""
    secret = b32encode(device.bin_key).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def qr_code_data_uri(device: TOTPDevice) -> str:
    """The ``otpauth://`` address as an SVG QR code, for an ``<img src>`` (the CSP allows data:
    images; no Pillow, no script)."""
    return segno.make(device.config_url, error="m").svg_data_uri(scale=5, border=2)


def socket_user(*, user: Any, session: Any) -> Any:
    """The socket's user, by the rule pages follow: a session of someone with two-factor
    authentication that has not given a code is nobody. Sets ``otp_device`` as OTPMiddleware
    does on requests, so ``is_verified`` reads the same on both."""
    if not user.is_authenticated:
        return user
    device_id = session.get(DEVICE_ID_SESSION_KEY)
    device = Device.from_persistent_id(device_id) if device_id else None
    if device is not None and (device.user_id != user.pk or not device.confirmed):
        device = None
    if device is None and has_two_factor(user):
        return AnonymousUser()
    user.otp_device = device
    return user


# --- codes ---------------------------------------------------------------------------------


def _new_recovery_code() -> str:
    code = b32encode(os.urandom(10)).decode().lower()  # 80 bits, 16 characters
    return "-".join(code[i : i + 4] for i in range(0, 16, 4))


def _normalize_recovery_code(raw: str) -> str:
    return "".join(raw.split()).replace("-", "").lower()


def recovery_code_digest(raw: str) -> str:
    digest = hashlib.sha256(_normalize_recovery_code(raw).encode()).digest()
    return urlsafe_b64encode(digest).decode()[:16]


def _looks_like_app_code(code: str, device: TOTPDevice | None) -> bool:
    return device is not None and code.isdigit() and len(code) == device.digits


def _check_not_locked(devices: Iterable[Device | None]) -> None:
    """Refuse while any of the person's devices is throttled: a guesser cannot switch to the
    other kind of code to go on guessing."""
    for device in devices:
        if device is None:
            continue
        allowed, data = device.verify_is_allowed()
        if not allowed:
            until = (data or {}).get("locked_until") or timezone.now()
            wait = max(1, round((until - timezone.now()).total_seconds()))
            raise ServiceError(
                ngettext(
                    "Too many wrong codes. Wait %(wait)d second and try again.",
                    "Too many wrong codes. Wait %(wait)d seconds and try again.",
                    wait,
                )
                % {"wait": wait},
                code="two_factor_locked",
                retry_after=wait,
            )


def _verify(user: User, device: Device, token: str) -> bool:
    # django-otp's own entry point: it locks the device row and verifies in one transaction, so
    # two requests cannot both spend one code. Never call it inside a transaction that a
    # refusal rolls back: the count of wrong codes must be kept.
    return otp_verify_token(user, device.persistent_id, token) is not None


def _verify_app_code(user: User, device: TOTPDevice, raw: str) -> None:
    _check_not_locked([device])
    if not _verify(user, device, "".join(raw.split())):
        raise ServiceError(WRONG_CODE, code="invalid_two_factor_code", param="token")


@dataclass(frozen=True)
class Verified:
    device: Device
    used_recovery_code: bool


def two_factor_verify(*, user: User, code: str) -> Verified:
    """The second step of logging in: a code from the app, or a recovery code (spent)."""
    app = app_device(user)
    if app is None:
        raise ServiceError(_("Two-factor authentication is not turned on."), code="invalid")
    spare = StaticDevice.objects.filter(user=user).first()
    _check_not_locked([app, spare])
    code = "".join(code.split())
    if _looks_like_app_code(code, app):
        if _verify(user, app, code):
            return Verified(device=app, used_recovery_code=False)
    elif spare is not None and _verify(user, spare, recovery_code_digest(code)):
        return Verified(device=spare, used_recovery_code=True)
    raise ServiceError(WRONG_CODE, code="invalid_two_factor_code", param="token")


# --- writes --------------------------------------------------------------------------------


@transaction.atomic
def two_factor_start(*, user: User) -> TOTPDevice:
    """A new secret to set up, not yet in force: a code from it confirms it."""
    if has_two_factor(user):
        raise ServiceError(_("Two-factor authentication is already on."), code="invalid")
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    return TOTPDevice.objects.create(user=user, name=APP_DEVICE_NAME, confirmed=False)


def _replace_recovery_codes(user: User) -> list[str]:
    # The device stays (only its codes change): a session verified by a recovery code names
    # this device, and must stay verified when its person makes new codes.
    device, _ = StaticDevice.objects.get_or_create(
        user=user, defaults={"name": RECOVERY_DEVICE_NAME}
    )
    device.token_set.all().delete()
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    StaticToken.objects.bulk_create(
        [StaticToken(device=device, token=recovery_code_digest(code)) for code in codes]
    )
    return codes


@dataclass(frozen=True)
class TurnedOn:
    device: TOTPDevice
    recovery_codes: list[str]  # shown once; only their digests are kept


def two_factor_confirm(*, user: User, token: str) -> TurnedOn:
    """Turn two-factor authentication on with a code from the app just set up, and make the
    recovery codes."""
    device = pending_app_device(user)
    if device is None:
        raise ServiceError(_("Start the setup again: there is no secret waiting for a code."))
    _verify_app_code(user, device, token)
    with transaction.atomic():
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        # Any other pending secret is dead: only the one confirmed counts.
        TOTPDevice.objects.filter(user=user, confirmed=False).delete()
        codes = _replace_recovery_codes(user)
    return TurnedOn(device=device, recovery_codes=codes)


def recovery_codes_regenerate(*, user: User, token: str) -> list[str]:
    """New recovery codes (the old ones stop working), for a current code from the app: a
    borrowed session alone must not be able to mint a way past the second factor."""
    device = app_device(user)
    if device is None:
        raise ServiceError(_("Two-factor authentication is not turned on."))
    _verify_app_code(user, device, token)
    with transaction.atomic():
        return _replace_recovery_codes(user)


def two_factor_disable(*, user: User, token: str) -> None:
    """Turn two-factor authentication off, for a current code (from the app, or a recovery
    code: someone who lost their phone turns it off this way and sets up the new one)."""
    two_factor_verify(user=user, code=token)
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        StaticDevice.objects.filter(user=user).delete()
