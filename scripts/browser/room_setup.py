# Run with manage.py shell: two people, one room, sessions printed for the browser.
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from accounts.models import Membership, Organization, Project, Role, User
from chat import rooms
from chat.actors import Actor
from chat.models import Conversation

org, _ = Organization.objects.get_or_create(slug="team", defaults={"name": "Team"})
project, _ = Project.objects.get_or_create(organization=org, slug="lab", defaults={"name": "Lab"})
people = []
for email, name in (("minseo@example.com", "Minseo"), ("jun@example.com", "Jun")):
    user, _ = User.objects.get_or_create(email=email, defaults={"name": name})
    Membership.objects.get_or_create(
        user=user,
        organization=org,
        defaults={"role": Role.OWNER if name == "Minseo" else Role.MEMBER},
    )
    people.append(user)
room = Conversation.objects.filter(project=project, title="Study group").first()
if room is None:
    room = rooms.room_create(
        actor=Actor(user=people[0]),
        project=project,
        title="Study group",
        sharing="members",
        member_ids=[people[1].pk],
    )
for user in people:
    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    print("SESSION", user.name, s.session_key)
print("URL", f"/orgs/{org.slug}/projects/{project.slug}/chat/{room.pk}/")
