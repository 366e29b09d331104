"""REST: a project's moderation (``/api/v1/projects/<id>/moderation/…``).

The organization's owners and admins, signed in, read and change the settings and read what
was flagged; a member is refused (403), a key too whatever its scopes (a leaked key must not
turn moderation off, nor read other people's flagged words). Thin: ``chat.moderation`` checks
and writes.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.mixins import ListModelMixin
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_base import ProjectEndpoint
from core.schema import OPENAI_ERROR

from . import moderation
from .models import ChatSettings, ModerationFlag


class ModelCheckSerializer(serializers.Serializer[Any]):
    model = serializers.CharField()
    connection = serializers.CharField(help_text="The connection serving the model.")
    checked_by = serializers.SerializerMethodField(
        help_text="'connection': its /v1/moderations; 'patterns': the project's pattern list."
    )

    def get_checked_by(self, check: moderation.ModelCheck) -> str:
        return "connection" if check.by_connection else "patterns"


class ModerationSettingsSerializer(serializers.Serializer[ChatSettings]):
    enabled = serializers.BooleanField(
        source="moderation_enabled", help_text="Each input is checked before it is sent."
    )
    check_replies = serializers.BooleanField(
        source="moderation_check_replies", help_text="Each finished reply is checked too."
    )
    patterns = serializers.CharField(
        source="moderation_patterns",
        help_text="One rule per line, 'category: regular expression' (case-insensitive); "
        "used where the model's connection has no /v1/moderations.",
    )
    moderation_model = serializers.SerializerMethodField(
        help_text="The model connections check with."
    )
    models = serializers.SerializerMethodField(help_text="Who checks the input to each model.")

    def get_moderation_model(self, chat_settings: ChatSettings) -> str:
        return str(settings.MODERATION_MODEL)

    @extend_schema_field(ModelCheckSerializer(many=True))
    def get_models(self, chat_settings: ChatSettings) -> list[dict[str, Any]]:
        checks = moderation.model_checks(chat_settings.project)
        return list(ModelCheckSerializer(checks, many=True).data)


class ModerationSettingsWriteSerializer(serializers.Serializer[Any]):
    """Types only; ``chat.moderation`` refuses a pattern list that is not one, naming the line."""

    enabled = serializers.BooleanField(required=False)
    check_replies = serializers.BooleanField(required=False)
    patterns = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=moderation.MAX_PATTERNS_CHARS,
        help_text="One rule per line: 'category: regular expression', e.g. "
        "'violence: \\bkill\\b'. Blank lines and lines starting with # are skipped.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A misspelled field is refused, not silently dropped.
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: ["This field is not recognized."]})
        return attrs


class ModerationFlagSerializer(serializers.ModelSerializer[ModerationFlag]):
    project = serializers.IntegerField(source="project_id", read_only=True)
    conversation = serializers.IntegerField(
        source="conversation_id", read_only=True, allow_null=True
    )
    message = serializers.IntegerField(source="message_id", read_only=True, allow_null=True)
    user = serializers.IntegerField(source="user_id", read_only=True, allow_null=True)
    api_key = serializers.IntegerField(source="api_key_id", read_only=True, allow_null=True)
    categories = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = ModerationFlag
        fields = [
            "id",
            "project",
            "source",
            "target",
            "categories",
            "checked_by",
            "excerpt",
            "conversation",
            "message",
            "user",
            "api_key",
            "created_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "checked_by": {"help_text": "'connection:<model>' or 'patterns'."},
            "excerpt": {"help_text": "The start of what was flagged (500 characters)."},
        }


class ModerationEndpoint(ProjectEndpoint):
    """Managers only, signed in: keys are refused (403 ``keys_not_allowed``)."""

    allow_keys = False

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.require_manager()


@extend_schema(tags=["Moderation"])
class ModerationSettingsView(ModerationEndpoint):
    @extend_schema(responses=ModerationSettingsSerializer)
    def get(self, request: Request, project_id: int) -> Response:
        return Response(ModerationSettingsSerializer(moderation.settings_for(self.project)).data)

    @extend_schema(
        request=ModerationSettingsWriteSerializer,
        responses={200: ModerationSettingsSerializer, 400: OPENAI_ERROR},
    )
    def patch(self, request: Request, project_id: int) -> Response:
        form = ModerationSettingsWriteSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        current = moderation.settings_for(self.project)
        changes = form.validated_data
        chat_settings = moderation.moderation_update(
            actor=self.require_manager(),
            project=self.project,
            enabled=changes.get("enabled", current.moderation_enabled),
            check_replies=changes.get("check_replies", current.moderation_check_replies),
            patterns=changes.get("patterns", current.moderation_patterns),
        )
        return Response(ModerationSettingsSerializer(chat_settings).data)


@extend_schema(tags=["Moderation"])
class ModerationFlagListView(ListModelMixin, ModerationEndpoint):
    """What moderation flagged in the project, newest first."""

    serializer_class = ModerationFlagSerializer

    def get_queryset(self) -> Any:
        return ModerationFlag.objects.for_project(self.project)

    def get(self, request: Request, project_id: int) -> Response:
        return self.list(request)
