"""How people are shown in rooms: by name (never their e-mail address) and initial."""

from django import template

from accounts.models import User
from chat.selectors import speaker_name

register = template.Library()


@register.filter
def speaker(user: User | None) -> str:
    return speaker_name(user)


@register.filter
def initial(user: User | None) -> str:
    """The first letter of the person's name, for their avatar."""
    return speaker_name(user)[:1].upper() or "?"
