"""Members and roles, invitations by link, leaving an organization."""

from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.models import Invitation, Membership, Role, User, hash_token
from tests.conftest import membership
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

STRONG = "a-long unusual passphrase 42"


def role_url(org, member):
    return reverse("member_change_role", args=[org.slug, member.pk])


def remove_url(org, member):
    return reverse("member_remove", args=[org.slug, member.pk])


@pytest.fixture
def invite(client_for, django_capture_on_commit_callbacks):
    """Post the invite form as ``user``, running the e-mail tasks queued for after commit."""

    def post(user, org, email, role="member", **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return client_for(user).post(
                reverse("member_invite", args=[org.slug]), {"email": email, "role": role}, **kwargs
            )

    return post


def invitation_link(message) -> str:
    line = next(line for line in message.body.splitlines() if "/invitations/" in line)
    return line.split("testserver", 1)[1]


def test_it_lets_an_owner_change_roles(client_for, alice, bob, org_a):
    response = client_for(alice).post(role_url(org_a, membership(bob, org_a)), {"role": "admin"})

    assert response.status_code == 302
    assert membership(bob, org_a).role == Role.ADMIN


def test_it_forbids_a_member_to_change_roles(client_for, alice, bob, org_a):
    response = client_for(bob).post(role_url(org_a, membership(alice, org_a)), {"role": "member"})
    assert response.status_code == 403
    response = client_for(bob).post(role_url(org_a, membership(bob, org_a)), {"role": "owner"})
    assert response.status_code == 403

    assert membership(alice, org_a).role == Role.OWNER
    assert membership(bob, org_a).role == Role.MEMBER


def test_it_keeps_at_least_one_owner(client_for, alice, org_a):
    client = client_for(alice)
    own = membership(alice, org_a)

    response = client.post(role_url(org_a, own), {"role": "member"}, follow=True)
    assert "must keep at least one owner" in response.content.decode()
    response = client.post(remove_url(org_a, own), follow=True)
    assert "must keep at least one owner" in response.content.decode()

    assert membership(alice, org_a).role == Role.OWNER


def test_it_lets_an_owner_step_down_once_there_is_another(client_for, alice, bob, org_a):
    client = client_for(alice)
    client.post(role_url(org_a, membership(bob, org_a)), {"role": "owner"})

    client.post(role_url(org_a, membership(alice, org_a)), {"role": "member"})

    assert membership(alice, org_a).role == Role.MEMBER
    assert membership(bob, org_a).role == Role.OWNER


def test_it_keeps_admins_away_from_the_owner_role(client_for, alice, org_a):
    admin = MembershipFactory(organization=org_a, role=Role.ADMIN).user
    member = MembershipFactory(organization=org_a, role=Role.MEMBER)

    assert client_for(admin).post(role_url(org_a, member), {"role": "owner"}).status_code == 403
    assert (
        client_for(admin)
        .post(role_url(org_a, membership(alice, org_a)), {"role": "member"})
        .status_code
        == 403
    )
    assert client_for(admin).post(role_url(org_a, member), {"role": "admin"}).status_code == 302
    member.refresh_from_db()
    assert member.role == Role.ADMIN


def test_it_refuses_an_unknown_role_with_a_message(client_for, alice, bob, org_a):
    response = client_for(alice).post(
        role_url(org_a, membership(bob, org_a)), {"role": "emperor"}, follow=True
    )

    assert "Choose owner, admin or member." in response.content.decode()
    assert membership(bob, org_a).role == Role.MEMBER


def test_it_lets_an_owner_remove_a_member_and_a_member_leave(client_for, alice, bob, org_a):
    extra = MembershipFactory(organization=org_a)
    assert client_for(bob).post(remove_url(org_a, extra)).status_code == 403

    client_for(alice).post(remove_url(org_a, extra))
    response = client_for(bob).post(remove_url(org_a, membership(bob, org_a)))

    assert response.status_code == 302
    assert response.url == reverse("home")
    assert list(
        Membership.objects.filter(organization=org_a).values_list("user__email", flat=True)
    ) == ["alice@example.com"]


def test_it_adds_an_existing_user_at_once(invite, alice, org_a, charlie):
    response = invite(alice, org_a, "Charlie@example.com", "member", follow=True)

    assert "already had an account and was added" in response.content.decode()
    assert membership(charlie, org_a).role == Role.MEMBER
    assert mail.outbox[0].to == ["charlie@example.com"]
    assert not Invitation.objects.exists()


def test_it_refuses_to_invite_someone_twice(invite, alice, bob, org_a):
    response = invite(alice, org_a, "bob@example.com", "member", follow=True)

    assert "already a member" in response.content.decode()


def test_it_invites_a_new_address_who_signs_up_and_joins(client, invite, alice, org_a):
    invite(alice, org_a, "new@example.com", "admin")
    [message] = mail.outbox
    link = invitation_link(message)
    token = link.rstrip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get()
    assert invitation.token_digest == hash_token(token)
    assert token not in str(Invitation.objects.values())  # only the digest is stored

    page = client.get(link)
    assert "Sign up to join" in page.content.decode()
    response = client.post(
        reverse("signup") + f"?invitation={token}",
        {"email": "new@example.com", "password": STRONG},
    )
    assert response.url == link
    response = client.post(link)

    user = User.objects.get(email="new@example.com")
    assert membership(user, org_a).role == Role.ADMIN
    assert response.url == reverse("organization_settings", args=[org_a.slug])
    assert client.get(link).status_code == 400  # used up


def test_it_refuses_an_expired_invitation(client, invite, alice, org_a):
    invite(alice, org_a, "late@example.com", "member")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    user = UserFactory(email="late@example.com")
    client.force_login(user)

    link = invitation_link(mail.outbox[0])
    response = client.post(link)

    assert response.status_code == 400
    assert "This invitation expired" in response.content.decode()
    assert not Membership.objects.filter(user=user, organization=org_a).exists()


def test_it_refuses_an_invitation_for_someone_else(client_for, invite, alice, charlie, org_a):
    invite(alice, org_a, "dave@example.com", "member")

    response = client_for(charlie).post(invitation_link(mail.outbox[0]))

    assert response.status_code == 400
    assert "This invitation is for dave@example.com" in response.content.decode()
    assert not Membership.objects.filter(user=charlie, organization=org_a).exists()


def test_it_answers_404_for_an_unknown_invitation_link(client):
    response = client.get(reverse("invitation_accept", args=["not-a-real-token"]))

    assert response.status_code == 404
    assert "not valid" in response.content.decode()


def test_it_lets_a_manager_revoke_an_invitation(client_for, invite, alice, bob, org_a):
    invite(alice, org_a, "x@example.com", "member")
    invitation = Invitation.objects.get()
    url = reverse("invitation_revoke", args=[org_a.slug, invitation.pk])

    assert client_for(bob).post(url).status_code == 403
    assert client_for(alice).post(url).status_code == 302
    assert not Invitation.objects.exists()


def test_it_forbids_members_to_invite(invite, bob, org_a):
    response = invite(bob, org_a, "x@example.com", "member")

    assert response.status_code == 403
    assert not Invitation.objects.exists()
    assert not mail.outbox


def test_the_settings_page_shows_members_and_management_only_to_managers(
    client_for, alice, bob, org_a
):
    as_alice = client_for(alice).get(reverse("organization_settings", args=[org_a.slug]))
    as_bob = client_for(bob).get(reverse("organization_settings", args=[org_a.slug]))

    for page in (as_alice, as_bob):
        assert "bob@example.com" in page.content.decode()
    assert "Invite someone" in as_alice.content.decode()
    assert "Invite someone" not in as_bob.content.decode()
