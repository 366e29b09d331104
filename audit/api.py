"""REST: an organization's audit trail (``/api/v1/organizations/<id>/audit-events/``), read only.

For the organization's owners, signed in, as the page: an admin, a member and an outsider get
404 alike, and a project key 403 (``keys_not_allowed``; a key of another organization is no key
at all here, 401). Thin: the serializer reads the filters, ``audit.selectors`` reads.
"""

from __future__ import annotations

from typing import Any, cast

from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_auth import api_key_of
from accounts.api_keys import INVALID_KEY_MESSAGE
from accounts.models import Membership, Organization, Role, User
from accounts.two_factor import two_factor_satisfied
from core.errors import ServiceError

from . import selectors
from .models import AuditEvent


class OwnerEndpoint(GenericAPIView):  # type: ignore[type-arg]
    """Resolves ``self.organization`` from the URL's ``organization_id`` for one of its owners
    before any handler runs; anyone else signed in gets 404, as for an organization that does
    not exist."""

    allow_keys = False
    organization: Organization

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.perform_authentication(request)
        key = api_key_of(request)
        if key is None and not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        # Past super().initial() below, a person: a key is refused there.
        organization_id = int(kwargs["organization_id"])
        if key is not None and key.project.organization_id != organization_id:
            # As on a project's URLs: to another organization a key is no key at all.
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key")
        super().initial(request, *args, **kwargs)  # a key of this organization: 403 here
        owner = (
            Membership.objects.select_related("organization")
            .filter(user=cast(User, request.user), organization_id=organization_id, role=Role.OWNER)
            .first()
        )
        if owner is None:
            raise exceptions.NotFound(_("No such organization."), code="not_found")
        self.organization = owner.organization
        if not two_factor_satisfied(user=request.user, organization=self.organization):
            raise ServiceError(code="two_factor_required")


class AuditFilterSerializer(serializers.Serializer[Any]):
    action = serializers.ChoiceField(choices=AuditEvent.Action.values, required=False)
    actor = serializers.CharField(
        required=False,
        max_length=254,
        help_text='Who made the change, as events name them: an e-mail address, "system", '
        '"staff (admin)" or "deleted user".',
    )
    project = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    start = serializers.DateField(required=False, help_text="From this UTC day on.")
    end = serializers.DateField(required=False, help_text="Up to this UTC day, included.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start"), attrs.get("end")
        if start and end and start > end:
            raise serializers.ValidationError({"end": [_("The end must not be before the start.")]})
        return attrs


# Built inline: a serializer cannot declare a field called "label" (Field.label is taken).
AUDIT_TARGET = inline_serializer(
    "AuditTarget",
    {
        "type": serializers.CharField(help_text="app_label.model, e.g. accounts.apikey."),
        "id": serializers.CharField(),
        "label": serializers.CharField(help_text="Its name when the change was made."),
    },
    allow_null=True,
)


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(
        source="actor_label",
        help_text='An e-mail address, "API key lgw_…", "system", "staff (admin)" or '
        '"deleted user".',
    )
    project = serializers.IntegerField(
        source="project_id", allow_null=True, help_text="Null: none, or the project is deleted."
    )
    target = serializers.SerializerMethodField()
    changes = serializers.DictField(
        help_text='{"field": [before, after]}; a secret is only "changed".'
    )
    ip = serializers.CharField(allow_null=True, help_text="The address the change came from.")

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "action", "actor", "project", "project_name", "target",
                  "changes", "ip"]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(AUDIT_TARGET)
    def get_target(self, event: AuditEvent) -> dict[str, str] | None:
        if not event.target_type:
            return None
        return {"type": event.target_type, "id": event.target_id, "label": event.target_label}


@extend_schema(tags=["Audit log"])
class AuditEventListView(OwnerEndpoint):
    serializer_class = AuditEventSerializer

    @extend_schema(parameters=[AuditFilterSerializer], responses=AuditEventSerializer(many=True))
    def get(self, request: Request, organization_id: int) -> Response:
        """Who changed money and access in the organization, newest first (owners only)."""
        form = AuditFilterSerializer(data=request.query_params)
        form.is_valid(raise_exception=True)
        events = selectors.events_for(
            self.organization, selectors.AuditFilters(**form.validated_data)
        )
        page = self.paginate_queryset(events)
        return self.get_paginated_response(AuditEventSerializer(page, many=True).data)
