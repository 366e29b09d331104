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


def test_an_existing_account_is_invited_by_link_not_added(
    client_for, invite, alice, org_a, charlie
):
    response = invite(alice, org_a, "Charlie@example.com", "member", follow=True)

    assert "Invitation sent to charlie@example.com" in response.content.decode()
    # Claiming the address (anyone may sign up with any) is not enough: only the link is.
    assert not Membership.objects.filter(user=charlie, organization=org_a).exists()
    [message] = mail.outbox
    assert message.to == ["charlie@example.com"]
    response = client_for(charlie).post(invitation_link(message))
    assert response.status_code == 302
    assert membership(charlie, org_a).role == Role.MEMBER


def test_whoever_registered_the_address_first_gets_nothing_without_the_link(
    client_for, invite, alice, org_a
):
    squatter = UserFactory(email="victim@example.com", email_verified_at=None)

    invite(alice, org_a, "victim@example.com", "admin")

    assert not Membership.objects.filter(user=squatter, organization=org_a).exists()
    # The squatter does not have the link; guessing at the accept URL finds nothing.
    response = client_for(squatter).post(reverse("invitation_accept", args=["guess"]))
    assert response.status_code == 404


def test_accepting_by_the_link_confirms_the_address(client_for, invite, alice, org_a):
    newcomer = UserFactory(email="kim@example.com", email_verified_at=None)
    invite(alice, org_a, "kim@example.com", "member")

    client_for(newcomer).post(invitation_link(mail.outbox[0]))

    newcomer.refresh_from_db()
    assert newcomer.email_verified
    assert membership(newcomer, org_a).role == Role.MEMBER


def test_an_admin_sees_an_expired_invitation_and_sends_it_again(
    client_for, invite, alice, org_a, django_capture_on_commit_callbacks
):
    invite(alice, org_a, "late@example.com", "member")
    old_link = invitation_link(mail.outbox[0])
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    page = client_for(alice).get(reverse("organization_settings", args=[org_a.slug]))
    assert "late@example.com" in page.content.decode()
    assert "expired" in page.content.decode()

    invitation = Invitation.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(reverse("invitation_resend", args=[org_a.slug, invitation.pk]))

    new_link = invitation_link(mail.outbox[1])
    assert new_link != old_link
    invitation.refresh_from_db()
    assert not invitation.is_expired
    late = UserFactory(email="late@example.com")
    assert client_for(late).post(old_link).status_code == 404  # the old link stopped working
    assert client_for(late).post(new_link).status_code == 302
    assert membership(late, org_a).role == Role.MEMBER


def test_a_member_cannot_send_an_invitation_again(client_for, invite, alice, bob, org_a):
    invite(alice, org_a, "x@example.com", "member")
    invitation = Invitation.objects.get()

    response = client_for(bob).post(reverse("invitation_resend", args=[org_a.slug, invitation.pk]))

    assert response.status_code == 403
    assert len(mail.outbox) == 1


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
