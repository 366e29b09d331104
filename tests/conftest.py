"""The three people every tenancy test uses.

alice owns org A, bob is a plain member of org A, charlie owns org B and must see nothing of A.
"""

import pytest
from django.test import Client

from accounts.models import Membership, Organization, Project, Role, User
from tests.factories import MembershipFactory, OrganizationFactory, ProjectFactory, UserFactory


@pytest.fixture
def org_a(db) -> Organization:
    return OrganizationFactory(name="Org A", slug="org-a")


@pytest.fixture
def org_b(db) -> Organization:
    return OrganizationFactory(name="Org B", slug="org-b")


@pytest.fixture
def project_a(org_a) -> Project:
    return ProjectFactory(organization=org_a, name="Project A", slug="project-a")


@pytest.fixture
def project_b(org_b) -> Project:
    return ProjectFactory(organization=org_b, name="Project B", slug="project-b")


@pytest.fixture
def alice(org_a) -> User:
    user = UserFactory(email="alice@example.com", name="Alice")
    MembershipFactory(user=user, organization=org_a, role=Role.OWNER)
    return user


@pytest.fixture
def bob(org_a) -> User:
    user = UserFactory(email="bob@example.com", name="Bob")
    MembershipFactory(user=user, organization=org_a, role=Role.MEMBER)
    return user


@pytest.fixture
def charlie(org_b) -> User:
    user = UserFactory(email="charlie@example.com", name="Charlie")
    MembershipFactory(user=user, organization=org_b, role=Role.OWNER)
    return user


def membership(user: User, organization: Organization) -> Membership:
    return Membership.objects.get(user=user, organization=organization)


@pytest.fixture
def client_for():
    """A logged-in test client for a user: ``client_for(alice).get(...)``."""

    def make(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make
