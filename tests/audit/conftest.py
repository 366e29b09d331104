"""Audit trail helpers: the events of an organization, and the request context middleware."""

import pytest

from accounts.models import Membership, Organization
from audit.models import AuditEvent
from tests.conftest import membership

MIDDLEWARE = "audit.middleware.request_context"


def events(organization: Organization | None = None, **filters) -> list[AuditEvent]:
    """The events recorded so far, oldest first."""
    qs = AuditEvent.objects.order_by("created_at", "id").filter(**filters)
    if organization is not None:
        qs = qs.for_organization(organization)
    return list(qs)


def only(organization: Organization | None = None, **filters) -> AuditEvent:
    """The one event matching: fails on none or several."""
    found = events(organization, **filters)
    assert len(found) == 1, [(e.action, e.changes) for e in found]
    return found[0]


@pytest.fixture
def owner(alice, org_a) -> Membership:
    return membership(alice, org_a)


@pytest.fixture
def with_request_context(settings):
    """The audit middleware in the stack (settings.MIDDLEWARE does not have it yet: see the
    report), after authentication as it must be."""
    stack = list(settings.MIDDLEWARE)
    if MIDDLEWARE not in stack:
        stack.insert(stack.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
                     MIDDLEWARE)  # fmt: skip
    settings.MIDDLEWARE = stack
