"""REST: the tools a project offers (``/api/v1/projects/<id>/tools/``) and its MCP tool servers
(``…/tool-servers/…``).

Reading is for everyone in the project and for its keys (scope ``read``), as for personas: a
program needs to know which tools it may enable. Writing is for the organization's owners and
admins, signed in; a key is refused whatever its scopes (a leaked key must not be able to point
the project's tools at a server of its choosing). A server's URL is shown to managers only (some
servers carry a secret in it); its headers to nobody, only their names. Thin:
``chat.tool_services`` checks and writes.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.mixins import ListModelMixin
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_base import ProjectEndpoint
from core.schema import OPENAI_ERROR

from . import tool_services
from .models import ToolServer
from .tools.registry import server_key, tool_options

# --- the options ------------------------------------------------------------------------------


class ToolOptionSerializer(serializers.Serializer):
    key = serializers.CharField(
        help_text="What a conversation's or persona's 'tools' lists: a built-in tool's name, "
        "or mcp:<server id> for all the tools of an MCP server."
    )
    # A field named like Field.label: DRF's metaclass takes it out of the class, mypy cannot know.
    label = serializers.CharField()  # type: ignore[assignment]
    description = serializers.CharField()
    kind = serializers.ChoiceField(choices=["builtin", "mcp"])
    tools = serializers.ListField(
        child=serializers.CharField(), help_text="An MCP server's tools; empty for a built-in."
    )


@extend_schema(tags=["Tools"])
class ToolOptionListView(ProjectEndpoint):
    """The tools this project's conversations and personas may enable (a short list: not
    paginated): the built-in ones, then the enabled MCP servers."""

    pagination_class = None

    @extend_schema(responses=ToolOptionSerializer(many=True))
    def get(self, request: Request, project_id: int) -> Response:
        return Response(ToolOptionSerializer(tool_options(self.project), many=True).data)


# --- MCP servers ------------------------------------------------------------------------------

LISTED_TOOLS = inline_serializer(
    "ListedTool",
    {
        "name": serializers.CharField(),
        "description": serializers.CharField(),
        "input_schema": serializers.DictField(help_text="Its arguments' JSON Schema."),
    },
    many=True,
)


class ToolServerSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="project_id", read_only=True)
    key = serializers.SerializerMethodField(help_text="What 'tools' lists to enable it.")
    url = serializers.SerializerMethodField(
        help_text="Shown to the organization's owners and admins only (null otherwise): some "
        "servers carry a secret in their address."
    )
    header_names = serializers.SerializerMethodField(
        help_text="The names of its stored headers; their values are never shown."
    )
    tools = serializers.SerializerMethodField(help_text="Its tools as last listed.")

    class Meta:
        model = ToolServer
        fields = [
            "id",
            "project",
            "key",
            "name",
            "url",
            "header_names",
            "enabled",
            "timeout",
            "tools",
            "listed_at",
            "last_error",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "timeout": {"help_text": "Seconds a tool call may take."},
            "listed_at": {"help_text": "When its tools were last listed; null: never."},
            "last_error": {"help_text": "Why the last listing failed (empty: it did not)."},
        }

    def get_key(self, server: ToolServer) -> str:
        return server_key(server)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_url(self, server: ToolServer) -> str | None:
        return server.url if self.context.get("manager") else None

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_header_names(self, server: ToolServer) -> list[str]:
        return [name for name in server.header_names.split(", ") if name]

    @extend_schema_field(LISTED_TOOLS)
    def get_tools(self, server: ToolServer) -> list[dict[str, Any]]:
        return [
            {
                "name": tool.get("name", ""),
                "description": tool.get("description", ""),
                "input_schema": tool.get("input_schema", {}),
            }
            for tool in server.tools
        ]


class ToolServerWriteSerializer(serializers.Serializer[Any]):
    """Types only; ``chat.tool_services`` refuses the rest, naming the field (``param``)."""

    name = serializers.CharField(max_length=80)
    url = serializers.CharField(
        max_length=500,
        help_text="Its streamable HTTP endpoint, e.g. https://mcp.example.com/mcp. It must be "
        "a public address (or in the operator's UPSTREAM_ALLOWED_NETWORKS).",
    )
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=4096),
        required=False,
        write_only=True,
        help_text='Sent with every request, e.g. {"Authorization": "Bearer …"}. Stored '
        "encrypted and never shown again. Left out: kept as they are; {}: removed.",
    )
    enabled = serializers.BooleanField(required=False)
    timeout = serializers.FloatField(
        required=False, min_value=1, max_value=120, help_text="Seconds a tool call may take."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # As for personas: a misspelled field is refused, not silently dropped.
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: ["This field is not recognized."]})
        return attrs


class ToolServerEndpoint(ProjectEndpoint):
    """Keys read (scope ``read``) and never write; members read; managers write."""

    @property
    def allow_keys(self) -> bool:
        return self.request.method in SAFE_METHODS

    def get_serializer_context(self) -> dict[str, Any]:
        manager = self.membership is not None and self.membership.can_manage
        return {**super().get_serializer_context(), "manager": manager}

    def _server(self, server_id: int) -> ToolServer:
        return tool_services.get_tool_server_or_404(project=self.project, server_id=server_id)

    def _answer(self, server: ToolServer, code: int = status.HTTP_200_OK) -> Response:
        return Response(
            ToolServerSerializer(server, context=self.get_serializer_context()).data, status=code
        )


WRITE_REFUSALS = {403: OPENAI_ERROR, 409: OPENAI_ERROR}


@extend_schema(tags=["Tools"])
class ToolServerListView(ListModelMixin, ToolServerEndpoint):
    """The project's MCP servers, by name."""

    serializer_class = ToolServerSerializer

    def get_queryset(self):
        return ToolServer.objects.for_project(self.project).order_by("name", "id")

    def get(self, request: Request, project_id: int) -> Response:
        return self.list(request)

    @extend_schema(
        request=ToolServerWriteSerializer,
        responses={201: ToolServerSerializer, **WRITE_REFUSALS},
        description="Adds the server and lists its tools. A server that cannot be reached is "
        "added all the same, with the reason in last_error.",
    )
    def post(self, request: Request, project_id: int) -> Response:
        actor = self.require_manager()
        form = ToolServerWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        server = tool_services.tool_server_create(
            actor=actor, project=self.project, **form.validated_data
        )
        return self._answer(server, status.HTTP_201_CREATED)


@extend_schema(tags=["Tools"])
class ToolServerDetailView(ToolServerEndpoint):
    serializer_class = ToolServerSerializer

    def get(self, request: Request, project_id: int, server_id: int) -> Response:
        return self._answer(self._server(server_id))

    @extend_schema(
        request=ToolServerWriteSerializer,
        responses={200: ToolServerSerializer, **WRITE_REFUSALS},
        description="Changes what is sent, then lists the server's tools again.",
    )
    def patch(self, request: Request, project_id: int, server_id: int) -> Response:
        actor = self.require_manager()
        server = self._server(server_id)
        form = ToolServerWriteSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        server = tool_services.tool_server_update(actor=actor, server=server, **form.validated_data)
        return self._answer(server)

    @extend_schema(responses={204: None, 403: OPENAI_ERROR})
    def delete(self, request: Request, project_id: int, server_id: int) -> Response:
        actor = self.require_manager()
        tool_services.tool_server_delete(actor=actor, server=self._server(server_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["Tools"])
class ToolServerRefreshView(ToolServerEndpoint):
    serializer_class = ToolServerSerializer

    @extend_schema(
        request=None,
        responses={200: ToolServerSerializer, 403: OPENAI_ERROR},
        description="Lists the server's tools again; a failure is in last_error (still 200).",
    )
    def post(self, request: Request, project_id: int, server_id: int) -> Response:
        actor = self.require_manager()
        server = tool_services.tool_server_refresh(actor=actor, server=self._server(server_id))
        return self._answer(server)
