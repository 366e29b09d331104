"""REST: a project's personas (``/api/v1/projects/<id>/personas/…``).

Reading is for everyone in the project and for its keys (scope ``read``): a program needs the
tags it can call. Writing is for the organization's owners and admins, signed in; a key is
refused whatever its scopes, as for the project's API keys (a leaked key must not be able to
rewrite what every room's bots say). Thin: ``chat.personas`` checks and writes.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.mixins import ListModelMixin
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_base import ProjectEndpoint
from accounts.models import Membership
from core.schema import OPENAI_ERROR

from . import personas
from .api import JSON_SCHEMA_HELP, TOOLS_HELP, JsonSchemaField
from .models import Persona

SAMPLING_HELP = "A sampling preset that sets temperature and top_p: " + ", ".join(
    f"{p.key} ({p.temperature:g} / {p.top_p:g})" for p in personas.SAMPLING_PRESETS.values()
)


class PersonaSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="project_id", read_only=True)
    mention = serializers.SerializerMethodField(help_text="How a room calls it: '@' + tag.")
    sampling = serializers.SerializerMethodField(
        help_text="The sampling preset its temperature and top_p match; null when none does."
    )
    json_schema = JsonSchemaField(read_only=True, allow_null=True, help_text=JSON_SCHEMA_HELP)
    tools = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text=TOOLS_HELP
    )

    class Meta:
        model = Persona
        fields = [
            "id",
            "project",
            "name",
            "tag",
            "mention",
            "description",
            "system_prompt",
            "model",
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "max_tokens",
            "json_mode",
            "json_schema",
            "tools",
            "sampling",
            "avatar",
            "color",
            "enabled",
            "preset",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "tag": {"help_text": "Without the @; stored NFKC-normalized and case-folded."},
            "model": {"help_text": "Empty: the project's default model."},
            "preset": {"help_text": "The shipped persona it was made from; empty for the "
                       "project's own."},
        }  # fmt: skip

    def get_mention(self, persona: Persona) -> str:
        return f"@{persona.tag}"

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_sampling(self, persona: Persona) -> str | None:
        preset = personas.sampling_preset_of(persona)
        return None if preset is None else preset.key


class PersonaWriteSerializer(serializers.Serializer[Any]):
    """Types only; ``chat.personas`` refuses the rest, naming the field (``param``)."""

    name = serializers.CharField(max_length=80)
    tag = serializers.CharField(
        max_length=100,
        help_text="With or without the @: letters, digits, '_' or '-' in any script, up to 32.",
    )
    description = serializers.CharField(max_length=300, required=False, allow_blank=True)
    system_prompt = serializers.CharField(
        required=False, allow_blank=True, max_length=32_000, trim_whitespace=False
    )
    model = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="A model the project allows; empty: the project's default model.",
    )
    sampling = serializers.ChoiceField(
        choices=list(personas.SAMPLING_PRESETS), required=False, help_text=SAMPLING_HELP
    )
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    presence_penalty = serializers.FloatField(
        required=False, allow_null=True, min_value=-2, max_value=2
    )
    frequency_penalty = serializers.FloatField(
        required=False, allow_null=True, min_value=-2, max_value=2
    )
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000
    )
    json_mode = serializers.BooleanField(required=False)
    json_schema = JsonSchemaField(
        required=False,
        allow_null=True,
        help_text=JSON_SCHEMA_HELP + " Checked against the persona's model when it has one.",
    )
    tools = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        max_length=100,
        help_text=TOOLS_HELP + " Checked against the persona's model when it has one.",
    )
    avatar = serializers.CharField(max_length=8, required=False, allow_blank=True)
    color = serializers.CharField(
        max_length=7, required=False, help_text="#rrggbb, such as #4f46e5."
    )
    enabled = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # As for conversations: a misspelled field is refused, not silently dropped.
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: ["This field is not recognized."]})
        return attrs


class PersonaFilterSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="true: only those people can call now; false: only those turned off.",
    )


class PersonaEndpoint(ProjectEndpoint):
    """Keys read (scope ``read``) and never write; members read; managers write."""

    @property
    def allow_keys(self) -> bool:
        return self.request.method in SAFE_METHODS

    def _actor(self) -> Membership | None:
        # Only people write personas (keys read): the audit trail names who.
        return self.membership


WRITE_REFUSALS = {403: OPENAI_ERROR, 409: OPENAI_ERROR}


@extend_schema(tags=["Personas"])
class PersonaListView(ListModelMixin, PersonaEndpoint):
    """The project's personas, by tag."""

    serializer_class = PersonaSerializer

    def get_queryset(self):
        filters = PersonaFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        qs = Persona.objects.for_project(self.project)
        if filters.validated_data["enabled"] is not None:
            qs = qs.filter(enabled=filters.validated_data["enabled"])
        return qs.order_by("tag", "id")

    @extend_schema(parameters=[PersonaFilterSerializer])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list(request)

    @extend_schema(
        request=PersonaWriteSerializer, responses={201: PersonaSerializer, **WRITE_REFUSALS}
    )
    def post(self, request: Request, project_id: int) -> Response:
        self.require_manager()
        form = PersonaWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        persona = personas.persona_create(
            project=self.project, changes=dict(form.validated_data), actor=self._actor()
        )
        return Response(PersonaSerializer(persona).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["Personas"])
class PersonaDetailView(PersonaEndpoint):
    def _persona(self, persona_id: int) -> Persona:
        return personas.get_persona_or_404(project=self.project, persona_id=persona_id)

    @extend_schema(responses=PersonaSerializer)
    def get(self, request: Request, project_id: int, persona_id: int) -> Response:
        return Response(PersonaSerializer(self._persona(persona_id)).data)

    @extend_schema(
        request=PersonaWriteSerializer, responses={200: PersonaSerializer, **WRITE_REFUSALS}
    )
    def patch(self, request: Request, project_id: int, persona_id: int) -> Response:
        self.require_manager()
        persona = self._persona(persona_id)
        form = PersonaWriteSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        persona = personas.persona_update(
            persona=persona, changes=dict(form.validated_data), actor=self._actor()
        )
        return Response(PersonaSerializer(persona).data)

    @extend_schema(responses={204: None, 403: OPENAI_ERROR})
    def delete(self, request: Request, project_id: int, persona_id: int) -> Response:
        self.require_manager()
        personas.persona_delete(persona=self._persona(persona_id), actor=self._actor())
        return Response(status=status.HTTP_204_NO_CONTENT)
