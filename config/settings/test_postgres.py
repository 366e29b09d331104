"""Test profile on PostgreSQL, for the tests marked ``postgres`` (``make test`` runs them).

Everything as in ``test`` except the database: ``DATABASE_URL``, by default the local cluster
that ``scripts/postgres.sh`` starts. Django's test runner creates ``test_gateway`` beside it.
"""

from .base import env
from .test import *  # noqa: F403

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://gateway:gateway@127.0.0.1:54329/gateway")
}
DATABASES["default"]["TEST"] = {"NAME": "test_gateway"}
