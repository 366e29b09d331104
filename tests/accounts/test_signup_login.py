"""Sign-up, login by e-mail, the lockout after wrong passwords, password reset."""

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import Membership, Organization, Project, Role, User
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

STRONG = "a-long unusual passphrase 42"


def test_it_signs_up_with_a_personal_organization_and_default_project(client):
    response = client.post(
        reverse("signup"), {"name": "Dana Kim", "email": "Dana@Example.com", "password": STRONG}
    )

    assert response.status_code == 302
    user = User.objects.get(email="dana@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.is_personal
    assert list(
        Project.objects.filter(organization=membership.organization).values_list("name", flat=True)
    ) == ["Default"]
    assert client.get(reverse("home")).status_code == 200  # logged in


def test_it_refuses_an_email_already_used_whatever_its_case(client):
    UserFactory(email="taken@example.com")

    response = client.post(reverse("signup"), {"email": "TAKEN@example.com", "password": STRONG})

    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert User.objects.filter(email__iexact="taken@example.com").count() == 1


def test_it_shows_djangos_password_validator_messages(client):
    response = client.post(reverse("signup"), {"email": "new@example.com", "password": "12345678"})

    body = response.content.decode()
    assert response.status_code == 200
    assert "This password is too common." in body
    assert "This password is entirely numeric." in body
    assert not User.objects.filter(email="new@example.com").exists()
    assert not Organization.objects.exists()


def test_it_logs_in_by_email_case_insensitively(client):
    UserFactory(email="erin@example.com")

    response = client.post(reverse("login"), {"username": "ERIN@example.com", "password": PASSWORD})

    assert response.status_code == 302
    assert response.url == reverse("home")


def test_it_throttles_repeated_wrong_passwords_and_says_for_how_long(client, settings):
    UserFactory(email="frank@example.com")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post(reverse("login"), {"username": "frank@example.com", "password": "x"})
        assert response.status_code == 200
        assert "Please enter a correct" in response.content.decode()

    response = client.post(reverse("login"), {"username": "frank@example.com", "password": "x"})

    assert response.status_code == 429
    body = response.content.decode()
    assert "Too many failed log-ins" in body
    assert "Try again in 15 minutes" in body
    # Even the right password is refused while locked out.
    response = client.post(
        reverse("login"), {"username": "frank@example.com", "password": PASSWORD}
    )
    assert response.status_code == 429


def test_it_sends_a_password_reset_link_that_works(client):
    UserFactory(email="gina@example.com")

    client.post(reverse("password_reset"), {"email": "gina@example.com"})

    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/reset/" in line)
    path = link.split("testserver", 1)[1]
    response = client.get(path, follow=True)
    new = "another long passphrase 77"
    response = client.post(
        response.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    assert User.objects.get(email="gina@example.com").check_password(new)


def test_it_logs_out_with_post(client_for, alice):
    client = client_for(alice)

    response = client.post(reverse("logout"))

    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 302  # back to the login page


@pytest.mark.parametrize(
    "variant",
    [
        "FRANK@example.com",
        "Frank@Example.COM",
        " frank@example.com ",
        "\uff46\uff52\uff41\uff4e\uff4b@example.com",
    ],
)
def test_the_lockout_counts_every_variant_of_an_address_as_one(client, settings, variant):
    UserFactory(email="frank@example.com")
    spellings = ["frank@example.com", variant]
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("login"), {"username": spellings[attempt % 2], "password": "wrong"})

    # Locked out, whichever way the address is typed, even with the right password.
    for spelling in spellings:
        response = client.post(reverse("login"), {"username": spelling, "password": PASSWORD})
        assert response.status_code == 429, spelling


def test_a_unicode_variant_of_a_taken_address_cannot_sign_up(client):
    UserFactory(email="gail@example.com")

    response = client.post(
        reverse("signup"),
        {"email": "\uff27\uff21\uff29\uff2c@Example.com", "name": "Gail", "password": STRONG},
    )

    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert User.objects.filter(email__iexact="gail@example.com").count() == 1


def test_a_full_width_address_logs_in_as_its_normal_form(client):
    UserFactory(email="hana@example.com")

    response = client.post(
        reverse("login"), {"username": "\uff28\uff21\uff2e\uff21@example.com", "password": PASSWORD}
    )

    assert response.status_code == 302
