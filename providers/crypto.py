"""Provider keys at rest: Fernet tokens under a MultiFernet keyed by FIELD_ENCRYPTION_KEYS.

The setting lists keys newest first: new values are encrypted with the first, any of them
decrypts, and ``rotate_encryption_keys`` re-encrypts old rows with the newest. Plaintext keys
exist only in memory, for the length of a call.
"""

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = [k for k in settings.FIELD_ENCRYPTION_KEYS if k]
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: keys cannot be stored.")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as error:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS must be url-safe base64 Fernet keys "
            "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())')."
        ) from error


@receiver(setting_changed)
def _forget_keys(*, setting: str, **kwargs: Any) -> None:
    if setting == "FIELD_ENCRYPTION_KEYS":
        _fernet.cache_clear()


class DecryptionError(Exception):
    """No configured key opens this value (a key was removed before rotating)."""


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError("no FIELD_ENCRYPTION_KEYS entry decrypts this value") from None


def rotate(token: str) -> str:
    """The same plaintext under the newest key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError("no FIELD_ENCRYPTION_KEYS entry decrypts this value") from None


def key_hint(key: str) -> str:
    """What may be shown of a key: its kind prefix and last four characters, e.g. ``sk-…abcd``."""
    key = key.strip()
    if len(key) < 12:
        return "…"
    prefix = key[:3] if key[:3] in {"sk-", "AIz"} else ""
    return f"{prefix}…{key[-4:]}"
