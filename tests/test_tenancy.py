"""Charlie (owner of org B) must get 404 on every URL that names an object of org A.

The test walks the whole URLConf, so it fails closed: a new route that takes an id or slug
and has no entry in TENANT_ROUTES (or a reasoned one in NOT_TENANT_SCOPED) fails
``test_every_route_with_arguments_is_covered`` until someone adds it.
"""

from collections.abc import Callable, Iterator

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from config.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db

# Routes outside tenancy, and why.
NOT_TENANT_SCOPED = {
    # Staff-only; the admin is where staff see across tenants by design. Non-staff are sent
    # to the admin login (tested in tests/test_admin.py).
    "admin:*": "staff only",
    "password_reset_confirm": "a signed one-time token, not an object id",
    "invitation_accept": "a secret one-time token; tested in tests/accounts/test_members.py",
}


def _org(w) -> dict:
    return {"org_slug": w.org_a.slug}


def _project(w) -> dict:
    return {"org_slug": w.org_a.slug, "project_slug": w.project_a.slug}


# route name -> the URL kwargs that point at org A's objects.
TENANT_ROUTES: dict[str, Callable] = {
    "organization_settings": _org,
    "organization_rename": _org,
    "member_invite": _org,
    "member_change_role": lambda w: {**_org(w), "pk": w.bob_membership.pk},
    "member_remove": lambda w: {**_org(w), "pk": w.bob_membership.pk},
    "invitation_revoke": lambda w: {**_org(w), "pk": w.invitation.pk},
    "project_create": _org,
    "project_detail": _project,
    "project_settings": _project,
    "project_delete": _project,
}

# WebSocket route name -> the kwargs that point at org A's objects (filled as routes appear).
TENANT_SOCKETS: dict[str, Callable] = {}


def walk(patterns, prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str, set]]:
    """(name, route, argument names) of every named route, includes flattened."""
    for entry in patterns:
        if isinstance(entry, URLResolver):
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry.url_patterns, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            args = set(entry.pattern.converters) if hasattr(entry.pattern, "converters") else set()
            if entry.pattern.regex.groupindex:
                args |= set(entry.pattern.regex.groupindex)
            yield f"{namespace}{entry.name}", prefix + str(entry.pattern), args


def routes_with_arguments(patterns) -> dict[str, str]:
    return {name: route for name, route, args in walk(patterns) if args}


def is_exempt(name: str) -> bool:
    return name in NOT_TENANT_SCOPED or any(
        key.endswith(":*") and name.startswith(key[:-1]) for key in NOT_TENANT_SCOPED
    )


def test_every_route_with_arguments_is_covered():
    missing = [
        f"{name} ({route})"
        for name, route in routes_with_arguments(get_resolver().url_patterns).items()
        if name not in TENANT_ROUTES and not is_exempt(name)
    ]
    assert not missing, f"add these routes to TENANT_ROUTES or NOT_TENANT_SCOPED: {missing}"


def test_every_socket_route_with_arguments_is_covered():
    missing = [
        f"{name} ({route})"
        for name, route in routes_with_arguments(websocket_urlpatterns).items()
        if name not in TENANT_SOCKETS
    ]
    assert not missing, f"add these socket routes to TENANT_SOCKETS: {missing}"


@pytest.fixture
def world(alice, bob, charlie, org_a, project_a, project_b):
    from accounts.models import Invitation, Membership, hash_token

    class World:
        pass

    w = World()
    w.org_a, w.project_a = org_a, project_a
    w.bob_membership = Membership.objects.get(user=bob, organization=org_a)
    w.invitation = Invitation.objects.create(
        organization=org_a,
        email="someone@example.com",
        token_digest=hash_token("t"),
        expires_at="2999-01-01T00:00:00Z",
    )
    return w


@pytest.mark.parametrize("name", sorted(TENANT_ROUTES))
def test_an_outsider_gets_404(name, world, client_for, charlie):
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))
    client = client_for(charlie)

    assert client.get(url).status_code in (404, 405), f"GET {url}"
    assert client.post(url, {"name": "x", "role": "owner", "email": "c@x.io"}).status_code == 404


@pytest.mark.parametrize("name", sorted(TENANT_ROUTES))
def test_an_anonymous_visitor_is_sent_to_log_in(name, world, client):
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))

    response = client.get(url)

    assert response.status_code in (302, 405)
    if response.status_code == 302:
        assert response.url.startswith(reverse("login"))


@pytest.mark.parametrize("name", sorted(TENANT_ROUTES))
def test_a_member_is_not_refused_as_an_outsider(name, world, client_for, bob):
    """The 404s above come from tenancy, not from broken URLs: an insider never gets 404."""
    url = reverse(name, kwargs=TENANT_ROUTES[name](world))

    assert client_for(bob).get(url).status_code in (200, 405)


def test_the_walker_sees_a_new_route():
    from django.urls import path

    extra = [path("orgs/<slug:org_slug>/secret/<int:pk>/", lambda r: None, name="new_route")]

    assert "new_route" in routes_with_arguments(get_resolver().url_patterns + extra)
