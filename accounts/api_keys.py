"""Project API keys: format, creation, authentication, revocation.

Format: ``lgw_`` + 32 random base62 characters (190 bits) + a 6-character base62 CRC32 of them,
so secret scanners can recognise a leaked key by its shape and checksum without a database, and
a typo is refused without one. Stored: the first 12 characters (``lgw_`` + 8) as an indexed
prefix, the SHA-256 digest of the whole key, and its last four characters. A plain digest is
enough: the secret has 190 random bits, nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core import config_cache
from core.errors import ServiceError

from .models import ApiKey, Membership, Project
from .services import check_can_manage
from .signals import created, record_change, values_of

KEY_PREFIX = "lgw_"
ALPHABET = string.digits + string.ascii_letters
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
LOOKUP_PREFIX_LENGTH = len(KEY_PREFIX) + 8
# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _base62(number: int, length: int) -> str:
    digits = []
    for _digit in range(length):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate_key() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def is_well_formed(raw: str) -> bool:
    """Shape and checksum only: refuses typos and junk before any database query."""
    if len(raw) != KEY_LENGTH or not raw.startswith(KEY_PREFIX):
        return False
    body = raw[len(KEY_PREFIX) : len(KEY_PREFIX) + RANDOM_LENGTH]
    if any(c not in ALPHABET for c in body):
        return False
    return secrets.compare_digest(raw[-CHECKSUM_LENGTH:], _checksum(body))


def digest_of(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# What the audit trail shows of a new key.
AUDITED_FIELDS = ("name", "scopes", "expires_at", "requests_per_minute", "tokens_per_minute")


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    plaintext: str  # shown once, never stored


def check_scopes(scopes: list[str]) -> list[str]:
    valid = set(ApiKey.Scope.values)
    if not scopes or any(s not in valid for s in scopes):
        raise ServiceError(_("Choose at least one scope: chat, read."), code="invalid_scopes")
    return sorted(set(scopes))


@transaction.atomic
def api_key_create(
    *,
    actor: Membership,
    project: Project,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> CreatedKey:
    check_can_manage(actor)
    if project.organization_id != actor.organization_id:
        raise ServiceError(_("No such project."), code="forbidden")
    name = name.strip()
    if not name:
        raise ServiceError(_("Give the key a name, e.g. what will use it."), code="invalid_name")
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError(_("The expiry date must be in the future."), code="invalid_expiry")
    for field, limit in (
        ("requests_per_minute", requests_per_minute),
        ("tokens_per_minute", tokens_per_minute),
    ):
        if limit is not None and limit < 1:
            raise ServiceError(
                _("A limit is a whole number from 1 up; leave it empty for none."),
                code=f"invalid_{field}",
            )
    plaintext = generate_key()
    key = ApiKey.objects.create(
        project=project,
        created_by=actor.user,
        name=name,
        scopes=",".join(check_scopes(scopes)),
        prefix=plaintext[:LOOKUP_PREFIX_LENGTH],
        digest=digest_of(plaintext),
        last4=plaintext[-4:],
        expires_at=expires_at,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )
    record_change(
        action="api_key.created",
        organization=project.organization,
        actor=actor,
        project=project,
        target=key,
        changes=created(values_of(key, AUDITED_FIELDS)),  # never the digest
    )
    return CreatedKey(key=key, plaintext=plaintext)


@transaction.atomic
def api_key_revoke(*, actor: Membership, key: ApiKey) -> ApiKey:
    check_can_manage(actor)
    if key.project.organization_id != actor.organization_id:
        raise ServiceError(_("No such key."), code="forbidden")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        record_change(
            action="api_key.revoked",
            organization=key.project.organization,
            actor=actor,
            project=key.project,
            target=key,
            changes={"revoked_at": [None, key.revoked_at]},
        )
    return key


# The same words for every key we do not accept (malformed, unknown, revoked, expired, another
# project's): an answer says nothing about which case it was.
# Lazy: said in the language of the request (the REST API's caller's; /v1 speaks English only).
INVALID_KEY_MESSAGE = gettext_lazy(
    "Incorrect API key provided. Create a project API key on the project's settings page and "
    "send it as 'Authorization: Bearer lgw_...'."
)


def api_key_from_authorization(header: str | None) -> ApiKey | None:
    """The usable key of an ``Authorization: Bearer <key>`` header, or None for anything else
    (no header, another scheme, an unusable key)."""
    scheme, _, raw = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    return api_key_authenticate(raw.strip())


def api_key_authenticate(raw: str) -> ApiKey | None:
    """The usable key ``raw`` is, or None — the same None for malformed, unknown, revoked and
    expired keys, so an answer says nothing about which."""
    if not is_well_formed(raw):
        return None
    digest = digest_of(raw)
    # Kept in memory between changes like the other per-call settings (core.config_cache): a
    # revoke saves the key, which empties this process's copy at once and every other
    # process's within CONFIG_CACHE_CHECK_SECONDS. Misses are not kept: anyone can make up keys.
    key = config_cache.cached(
        ("api-key", digest),
        lambda: (
            ApiKey.objects.usable()
            .select_related("project__organization")
            .filter(digest=digest)
            .first()
        ),
        keep=lambda found: found is not None,
    )
    now = timezone.now()
    if key is None or not key.is_active:  # it may have expired since it was read
        return None
    if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
        # A conditional write, at most once a minute per key however busy it is.
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now  # the kept copy too, or every call would write again
    return key
