"""Create (or refresh) the demo organization, project and user that the run command logs in with.

Idempotent: running it again keeps the same rows and resets the demo password.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, Project, Role, User

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a published demo login for the local instance
DEMO_ORG_SLUG = "demo"


class Command(BaseCommand):
    help = "Create the demo organization, project and user (idempotent) and print the login."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--email", default=DEMO_EMAIL)
        parser.add_argument("--password", default=DEMO_PASSWORD)
        parser.add_argument("--url", default="http://127.0.0.1:8000/")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Allow running with DEBUG off (a known password on a public server is a hole).",
        )

    def handle(self, *args, email: str, password: str, url: str, force: bool, **options) -> None:
        if not settings.DEBUG and not force:
            raise CommandError("Refusing to create a demo login with DEBUG off; add --force.")
        with transaction.atomic():
            user, created = User.objects.get_or_create(
                email=email.lower(), defaults={"name": "Demo User"}
            )
            user.set_password(password)
            user.is_active = True
            # A local demo login: there is no mailbox to confirm it with.
            user.email_verified_at = user.email_verified_at or timezone.now()
            user.save()
            organization, _ = Organization.objects.get_or_create(
                slug=DEMO_ORG_SLUG, defaults={"name": "Demo Organization"}
            )
            Membership.objects.update_or_create(
                user=user, organization=organization, defaults={"role": Role.OWNER}
            )
            Project.objects.get_or_create(
                organization=organization,
                slug="demo-project",
                defaults={
                    "name": "Demo Project",
                    "default_system_prompt": "You are a helpful assistant.",
                },
            )
        verb = "Created" if created else "Refreshed"
        self.stdout.write(
            self.style.SUCCESS(
                f"\n{verb} the demo login.\n"
                f"  Open      {url}\n"
                f"  E-mail    {email}\n"
                f"  Password  {password}\n"
            )
        )
