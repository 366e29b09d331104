"""REST: projects (read) and a project's API keys (project admins: list, create, revoke).

Thin: serializers validate, ``accounts.api_keys`` acts, selectors find. Keys are managed by
people only: a key cannot mint or revoke keys (no escalation from a leaked key).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.mixins import ListModelMixin
from rest_framework.request import Request
from rest_framework.response import Response

from . import api_keys, key_selectors
from .api_auth import api_key_of
from .api_base import ProjectEndpoint, projects_for_request
from .models import ApiKey, Project
from .two_factor import projects_let_in


class OrganizationRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    name = serializers.CharField()


class ProjectSerializer(serializers.ModelSerializer):
    organization = OrganizationRefSerializer(read_only=True)

    class Meta:
        model = Project
        fields = ["id", "name", "slug", "organization", "default_system_prompt", "created_at"]
        read_only_fields = fields


@extend_schema(tags=["Projects"])
class ProjectListView(ListAPIView):
    """The projects the caller can reach: a key's own project, or the user's projects."""

    serializer_class = ProjectSerializer

    def get_queryset(self):
        # Projects of an organization whose two-factor requirement the session does not meet
        # are not listed (asking for one by id answers 403 two_factor_required).
        projects = projects_for_request(self.request)
        if api_key_of(self.request) is None:  # a key is the project's: no second factor
            projects = projects_let_in(self.request.user, projects)
        return projects.order_by("organization__name", "name", "id")


@extend_schema(tags=["Projects"])
class ProjectDetailView(ProjectEndpoint):
    @extend_schema(responses=ProjectSerializer)
    def get(self, request: Request, project_id: int) -> Response:
        return Response(ProjectSerializer(self.project).data)


# --- keys --------------------------------------------------------------------------------------


class ApiKeySerializer(serializers.ModelSerializer):
    display = serializers.CharField(read_only=True, help_text="prefix…last4: never the secret")
    scopes = serializers.ListField(source="scope_list", child=serializers.CharField())
    created_by = serializers.EmailField(source="created_by.email", read_only=True, default=None)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "display",
            "scopes",
            "created_by",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "is_active",
            "requests_per_minute",
            "tokens_per_minute",
        ]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.values),
        min_length=1,
        help_text="chat: call models; read: read conversations, usage and models.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    requests_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    tokens_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class CreatedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret, shown this once only.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


@extend_schema(tags=["API keys"])
class ApiKeyListView(ListModelMixin, ProjectEndpoint):
    allow_keys = False
    serializer_class = ApiKeySerializer

    def get_queryset(self):
        return key_selectors.api_keys_for_project(self.project)

    def get(self, request: Request, project_id: int) -> Response:
        self.require_manager()
        return self.list(request)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: CreatedApiKeySerializer})
    def post(self, request: Request, project_id: int) -> Response:
        actor = self.require_manager()
        form = ApiKeyCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        created = api_keys.api_key_create(actor=actor, project=self.project, **form.validated_data)
        data = ApiKeySerializer(created.key).data
        response = Response({**data, "key": created.plaintext}, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"  # the one response that holds the secret
        return response


@extend_schema(tags=["API keys"])
class ApiKeyDetailView(ProjectEndpoint):
    allow_keys = False

    @extend_schema(responses=ApiKeySerializer)
    def get(self, request: Request, project_id: int, key_id: int) -> Response:
        self.require_manager()
        key = key_selectors.get_api_key_or_404(project=self.project, pk=key_id)
        return Response(ApiKeySerializer(key).data)


@extend_schema(tags=["API keys"])
class ApiKeyRevokeView(ProjectEndpoint):
    allow_keys = False

    @extend_schema(request=None, responses=ApiKeySerializer)
    def post(self, request: Request, project_id: int, key_id: int) -> Response:
        actor = self.require_manager()
        key = key_selectors.get_api_key_or_404(project=self.project, pk=key_id)
        return Response(ApiKeySerializer(api_keys.api_key_revoke(actor=actor, key=key)).data)
