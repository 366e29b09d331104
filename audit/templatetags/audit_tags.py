"""How the audit log page shows a value before or after a change."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.translation import gettext as _

register = template.Library()


@register.filter
def audit_value(value: Any) -> str:
    """None as a dash, yes/no for booleans, a list as its items; anything else as stored."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if isinstance(value, list):
        return ", ".join(audit_value(item) for item in value) or "—"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)
