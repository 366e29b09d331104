"""What a web process checks before it serves: a misconfiguration found at start, with what to
do about it, rather than as a 500 on every page once people arrive."""

from django.conf import settings
from django.contrib.staticfiles.storage import ManifestFilesMixin
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import storages


def require_collected_static() -> None:
    """The production profile's static storage links each file by the hashed name that
    ``collectstatic`` writes into its manifest. Without the manifest every page that links a
    static file (the login page first) answers 500, and a process started before it was
    written keeps answering 500 after (the manifest is read once, at start): refuse to start.
    """
    if settings.DEBUG:  # Django links the plain names when DEBUG is on
        return
    storage = storages["staticfiles"]
    if isinstance(storage, ManifestFilesMixin) and not storage.manifest_storage.exists(
        storage.manifest_name
    ):
        raise ImproperlyConfigured(
            f"The static files are not collected: {storage.manifest_name} is missing from "
            f"STATIC_ROOT ({settings.STATIC_ROOT}). Run `python manage.py collectstatic "
            f"--noinput` (the Procfile's release step) before starting the web process."
        )
