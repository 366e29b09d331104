"""Projects and organizations from their pages: create, rename, delete, who may."""

import pytest
from django.urls import reverse

from accounts.models import Organization, Project, Role
from tests.conftest import membership

pytestmark = pytest.mark.django_db


def test_it_lets_a_manager_create_rename_and_delete_a_project(client_for, alice, org_a):
    client = client_for(alice)

    response = client.post(
        reverse("project_create", args=[org_a.slug]),
        {"name": "Support Bot", "default_system_prompt": "Be brief."},
    )
    project = Project.objects.get(organization=org_a, name="Support Bot")
    assert project.slug == "support-bot"
    assert response.url == reverse("project_detail", args=[org_a.slug, "support-bot"])

    client.post(
        reverse("project_settings", args=[org_a.slug, project.slug]),
        {"name": "Helpdesk", "default_system_prompt": ""},
    )
    project.refresh_from_db()
    assert (project.name, project.slug) == ("Helpdesk", "support-bot")  # links keep working

    client.post(reverse("project_delete", args=[org_a.slug, project.slug]))
    assert not Project.objects.filter(pk=project.pk).exists()


def test_it_gives_projects_with_the_same_name_distinct_slugs(client_for, alice, org_a):
    for _ in range(2):
        client_for(alice).post(reverse("project_create", args=[org_a.slug]), {"name": "Bot"})

    assert sorted(Project.objects.filter(organization=org_a).values_list("slug", flat=True)) == [
        "bot",
        "bot-2",
    ]


def test_it_shows_a_clear_error_for_a_blank_name(client_for, alice, org_a):
    response = client_for(alice).post(reverse("project_create", args=[org_a.slug]), {"name": " "})

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()


def test_it_lets_members_see_but_not_change_projects(client_for, bob, project_a, org_a):
    client = client_for(bob)

    assert (
        client.get(reverse("project_detail", args=[org_a.slug, project_a.slug])).status_code == 200
    )
    response = client.post(
        reverse("project_settings", args=[org_a.slug, project_a.slug]), {"name": "Mine now"}
    )
    assert response.status_code == 403
    assert (
        client.post(reverse("project_delete", args=[org_a.slug, project_a.slug])).status_code == 403
    )
    assert (
        client.post(reverse("project_create", args=[org_a.slug]), {"name": "X"}).status_code == 403
    )
    project_a.refresh_from_db()
    assert project_a.name == "Project A"


def test_it_creates_an_organization_owned_by_its_creator(client_for, charlie):
    response = client_for(charlie).post(reverse("organization_create"), {"name": "Acme Labs"})

    organization = Organization.objects.get(name="Acme Labs")
    assert response.url == reverse("organization_settings", args=["acme-labs"])
    assert membership(charlie, organization).role == Role.OWNER
    assert organization.projects.count() == 1


def test_home_lists_only_my_organizations_and_projects(
    client_for, alice, project_a, charlie, project_b
):
    body = client_for(alice).get(reverse("home")).content.decode()

    assert "Project A" in body
    assert "Org B" not in body
    assert "Project B" not in body


@pytest.mark.parametrize("name", ["project_settings", "project_delete"])
def test_a_member_is_refused_a_managers_page_even_to_look(client_for, bob, project_a, name):
    url = reverse(name, args=[project_a.organization.slug, project_a.slug])

    assert client_for(bob).get(url).status_code == 403


def test_an_expected_refusal_is_one_log_line_without_a_traceback(client_for, bob, project_a):
    import logging

    from core.logging import RefusalsWithoutTraceback

    url = reverse("project_settings", args=[project_a.organization.slug, project_a.slug])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("django.request")
    handler = Keep()
    logger.addHandler(handler)
    try:
        client_for(bob).get(url)
    finally:
        logger.removeHandler(handler)

    [record] = [r for r in records if getattr(r, "status_code", None) == 403]
    assert record.exc_info is None  # the logger's filter took the traceback off
    assert any(isinstance(f, RefusalsWithoutTraceback) for f in logger.filters)
    assert "Forbidden" in record.getMessage()
