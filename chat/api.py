"""REST: a project's models, conversations and messages (``/api/v1/projects/<id>/…``).

Thin: serializers validate, ``chat.services`` writes, ``chat.selectors`` reads through the
caller's ``Actor`` — a person reaches their own conversations, a project key the project's API
conversations. Posting a message runs the model exactly as the web chat does (the same
``ReplyRunner``: reserved, flushed, saved and settled in its own task), so a client that goes
away mid-reply loses nothing and is billed once: the reply finishes and is saved.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Model, Prefetch, prefetch_related_objects
from django.http import Http404, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.mixins import ListModelMixin
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_base import AsyncProjectEndpoint, ProjectEndpoint
from core import idempotency
from core.db import db_async
from core.detached import run_detached
from core.errors import ServiceError
from core.models import IdempotentRequest
from core.schema import IDEMPOTENCY_PARAMETER, OPENAI_ERROR, server_sent_event
from core.sse import sse_event
from providers import selectors as provider_selectors

from . import posting, rooms, selectors, services, streaming
from .actors import Actor
from .models import Attachment, Conversation, Folder, Message


class ActorEndpoint(ProjectEndpoint):
    """A project endpoint that acts on conversations for its caller (see ``chat.actors``)."""

    @property
    def actor(self) -> Actor:
        return Actor.of(self.principal)


# --- models ------------------------------------------------------------------------------------


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField(source="name", help_text="The name to send as 'model'.")
    is_default = serializers.BooleanField()
    context_window = serializers.IntegerField(source="model.context_window", allow_null=True)
    provider = serializers.CharField(source="model.connection.kind")
    supports_vision = serializers.BooleanField(source="model.supports_vision")
    supports_tools = serializers.BooleanField(source="model.supports_tools")
    supports_json = serializers.BooleanField(source="model.supports_json")


@extend_schema(tags=["Models"])
class ModelListView(ProjectEndpoint):
    """The models this project may use, the default first (a short list: not paginated)."""

    pagination_class = None

    @extend_schema(responses=ModelSerializer(many=True))
    def get(self, request: Request, project_id: int) -> Response:
        choices = provider_selectors.model_choices(self.project)
        return Response(ModelSerializer(choices, many=True).data)


# --- what a model may be asked for besides text: JSON, tools -----------------------------------


class JsonSchemaFormatSerializer(serializers.Serializer):
    """OpenAI's ``json_schema`` response format. Documentation only: ``chat.structured`` checks
    what is sent (``invalid_json_schema``, naming what is wrong)."""

    name = serializers.RegexField(
        r"^[a-zA-Z0-9_-]{1,64}$", help_text="1 to 64 letters, digits, underscores or dashes."
    )
    description = serializers.CharField(required=False)
    schema = serializers.DictField(
        help_text='A JSON Schema describing an object (its top level has "type": "object"); '
        "a $ref may only point into it."
    )
    strict = serializers.BooleanField(
        required=False, help_text="Ask OpenAI's models to follow the schema strictly."
    )


@extend_schema_field(JsonSchemaFormatSerializer(allow_null=True))
class JsonSchemaField(serializers.JSONField):
    """A conversation's or persona's ``json_schema``: the object, or null for none."""


JSON_SCHEMA_HELP = (
    "Replies must be JSON matching this schema (response_format json_schema); it takes the "
    "place of json_mode. null: none. Needs a model that supports JSON."
)
TOOLS_HELP = (
    "The tools the model may call while it answers: keys of the project's tool options (a "
    "built-in tool's name, or mcp:<server id>). Needs a model that supports tools."
)


# --- conversations -----------------------------------------------------------------------------


class ConversationSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="project_id", read_only=True)
    folder = serializers.IntegerField(
        source="folder_id", read_only=True, allow_null=True, help_text="One of your folders."
    )
    started_with = serializers.SerializerMethodField(
        help_text="'session' (a person's own) or 'api_key' (the project's API conversations)."
    )
    json_schema = JsonSchemaField(read_only=True, allow_null=True, help_text=JSON_SCHEMA_HELP)
    tools = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text=TOOLS_HELP
    )

    class Meta:
        model = Conversation
        fields = [
            "id",
            "project",
            "title",
            "model",
            "system_prompt",
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "max_tokens",
            "stop",
            "seed",
            "json_mode",
            "json_schema",
            "tools",
            "history_limit",
            "archived",
            "pinned",
            "folder",
            "sharing",
            "persona",
            "started_with",
            "created_at",
            "updated_at",
            "last_message_at",
        ]
        read_only_fields = fields

    def get_started_with(self, conversation: Conversation) -> str:
        return "session" if conversation.owner_id else "api_key"


class ConversationWriteSerializer(serializers.Serializer[Any]):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    model = serializers.CharField(
        max_length=200, required=False, help_text="Default: the project's default model."
    )
    system_prompt = serializers.CharField(required=False, allow_blank=True, max_length=32_000)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    presence_penalty = serializers.FloatField(
        required=False, allow_null=True, min_value=-2, max_value=2
    )
    frequency_penalty = serializers.FloatField(
        required=False, allow_null=True, min_value=-2, max_value=2
    )
    max_tokens = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=1_000_000,
        help_text="Longest reply; null: as long as the model may write (and budgets allow).",
    )
    stop = serializers.ListField(
        child=serializers.CharField(min_length=1, trim_whitespace=False),
        required=False,
        allow_null=True,
        max_length=4,
        help_text="Up to 4 sequences where the model stops writing.",
    )
    seed = serializers.IntegerField(required=False, allow_null=True)
    json_mode = serializers.BooleanField(
        required=False, help_text="Ask for a JSON object (response_format json_object)."
    )
    json_schema = JsonSchemaField(required=False, allow_null=True, help_text=JSON_SCHEMA_HELP)
    tools = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        max_length=100,
        help_text=TOOLS_HELP,
    )
    history_limit = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=100_000,
        help_text="Send at most this many earlier messages (and the summary of older ones); "
        "null: all that fit.",
    )
    archived = serializers.BooleanField(required=False)
    pinned = serializers.BooleanField(
        required=False, help_text="Your private chats only: listed first in the sidebar."
    )
    folder = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="Your private chats only: one of your folders of the project, or null.",
    )
    persona = serializers.IntegerField(
        required=False,
        help_text="On creation only: start as this persona of the project (its system prompt, "
        "model and sampling settings are copied; the fields above still win).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A field the API does not know is refused, not silently dropped: a client that sets
        # a setting it misspelled learns so.
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: ["This field is not recognized."]})
        return attrs


class ConversationFilterSerializer(serializers.Serializer):
    q = serializers.CharField(required=False, help_text="Search titles and message text.")
    model = serializers.CharField(required=False)
    archived = serializers.BooleanField(required=False, allow_null=True, default=None)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    ordering = serializers.ChoiceField(
        choices=list(selectors.CONVERSATION_ORDERINGS), required=False, default="-last_message_at"
    )


@extend_schema(tags=["Conversations"])
class ConversationListView(ListModelMixin, ActorEndpoint):
    serializer_class = ConversationSerializer

    def get_queryset(self):
        filters = ConversationFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return selectors.api_conversations(
            actor=self.actor, project=self.project, **filters.validated_data
        )

    @extend_schema(parameters=[ConversationFilterSerializer])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list(request)

    @extend_schema(
        request=ConversationWriteSerializer,
        responses={201: ConversationSerializer, 403: OPENAI_ERROR, 409: OPENAI_ERROR},
    )
    def post(self, request: Request, project_id: int) -> Response:
        form = ConversationWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        conversation = services.conversation_start(
            actor=self.actor, project=self.project, changes=form.validated_data
        )
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationEndpoint(ActorEndpoint):
    """Resolves ``self.conversation`` through the actor's scoped path, after the project."""

    conversation: Conversation

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.conversation = selectors.get_actor_conversation_or_404(
            actor=self.actor, project=self.project, pk=kwargs["conversation_id"]
        )


@extend_schema(tags=["Conversations"])
class ConversationDetailView(ConversationEndpoint):
    @extend_schema(responses=ConversationSerializer)
    def get(self, request: Request, project_id: int, conversation_id: int) -> Response:
        return Response(ConversationSerializer(self.conversation).data)

    @extend_schema(
        request=ConversationWriteSerializer,
        responses={200: ConversationSerializer, 403: OPENAI_ERROR, 409: OPENAI_ERROR},
    )
    def patch(self, request: Request, project_id: int, conversation_id: int) -> Response:
        rooms.check_maker(actor=self.actor, conversation=self.conversation)
        form = ConversationWriteSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        if "persona" in form.validated_data:
            raise ServiceError(
                "A conversation's persona is chosen when it starts; start a new one.",
                param="persona",
            )
        conversation = services.conversation_edit(
            actor=self.actor, conversation=self.conversation, changes=form.validated_data
        )
        return Response(ConversationSerializer(conversation).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, project_id: int, conversation_id: int) -> Response:
        rooms.check_maker(actor=self.actor, conversation=self.conversation)
        services.conversation_delete(conversation=self.conversation)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- messages ----------------------------------------------------------------------------------


class PersonRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField(help_text="Their name (never their e-mail address).")


class PersonaRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    tag = serializers.CharField(help_text="Without the @.")
    name = serializers.CharField()
    avatar = serializers.CharField()
    color = serializers.CharField()


class VersionsSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Which version this is, from 1 (oldest first).")
    count = serializers.IntegerField()
    previous = serializers.IntegerField(allow_null=True, help_text="The version before it.")
    next = serializers.IntegerField(allow_null=True, help_text="The version after it.")


class ToolCallSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    round = serializers.IntegerField(
        help_text="Which upstream call of the reply asked for it, from 1."
    )
    call_id = serializers.CharField(help_text="The upstream's tool_call_id.")
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="JSON text, as the model wrote it.")
    result = serializers.CharField(help_text="What the model was sent back.")
    is_error = serializers.BooleanField(
        help_text="The tool failed (bad arguments, a timeout, a server down); the model was "
        "told so in the result."
    )
    duration_ms = serializers.IntegerField(allow_null=True)


class AttachmentRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField(help_text="The file's name as uploaded.")
    content_type = serializers.CharField(
        help_text="image/png, image/jpeg, image/webp or image/gif."
    )
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    size = serializers.IntegerField(help_text="Bytes.")
    url = serializers.CharField(help_text="The image, for those who may read the conversation.")
    thumbnail_url = serializers.CharField()
    thumbnail_width = serializers.IntegerField(help_text="The thumbnail's size, in pixels.")
    thumbnail_height = serializers.IntegerField()


class MessageSerializer(serializers.ModelSerializer):
    cost = serializers.SerializerMethodField(
        help_text="USD, as a decimal string: what this reply cost (null for a user message, "
        "and for a reply whose model ran unpriced: see priced)."
    )
    priced = serializers.SerializerMethodField(
        help_text="False when the reply's model ran without a price (allowed by staff): its cost "
        "is unknown, not $0."
    )
    author = serializers.SerializerMethodField(
        help_text="Who wrote a user message, or called for a reply (and pays for it); null "
        "for the API side's messages."
    )
    persona = serializers.SerializerMethodField(help_text="The persona that wrote a reply.")
    versions = serializers.SerializerMethodField(
        help_text="When this turn has several versions (a regenerated reply, an edited "
        "message): which one this is, from 1, of how many, and the ids either side of it; "
        "null when it is the only one. GET …/messages/<id>/versions/ lists them, POST "
        "…/messages/<id>/select/ shows another."
    )
    tool_calls = serializers.SerializerMethodField(
        help_text="The tools a reply called, in the order it called them, with what they answered."
    )
    attachments = serializers.SerializerMethodField(help_text="A user message's images.")

    class Meta:
        model = Message
        extra_kwargs = {
            "parent": {"help_text": "The message this one follows (null: the first one)."},
            "json_valid": {
                "help_text": "A reply asked for as JSON: whether it is that JSON (it parses, and "
                "matches the schema when one was asked for). null: JSON was not asked for."
            },
            "json_error": {"help_text": "Why it is not (json_valid false); else empty."},
            "flagged": {
                "help_text": "A user message moderation refused: kept here, never sent to a model."
            },
            "tool_rounds": {
                "help_text": "Upstream calls the reply took: one, plus one per round of tool "
                "calls answered (0 for a user message)."
            },
        }
        fields = [
            "id",
            "parent",
            "versions",
            "role",
            "content",
            "state",
            "model",
            "finish_reason",
            "error_code",
            "error_message",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "usage_estimated",
            "omitted_messages",
            "json_valid",
            "json_error",
            "flagged",
            "tool_rounds",
            "tool_calls",
            "attachments",
            "cost",
            "priced",
            "author",
            "persona",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(PersonRefSerializer(allow_null=True))
    def get_author(self, message: Message) -> dict[str, Any] | None:
        if message.author_id is None:
            return None
        return {"id": message.author_id, "name": selectors.speaker_name(message.author)}

    @extend_schema_field(PersonaRefSerializer(allow_null=True))
    def get_persona(self, message: Message) -> dict[str, Any] | None:
        return None if message.persona is None else services.persona_card(message.persona)

    def get_cost(self, message: Message) -> str | None:
        cost = self.context.get("costs", {}).get(message.pk)
        return None if cost is None else f"{cost:f}"  # fixed-point, never "0E-12"

    def get_priced(self, message: Message) -> bool:
        costs = self.context.get("costs", {})
        return message.pk not in costs or costs[message.pk] is not None

    @extend_schema_field(VersionsSerializer(allow_null=True))
    def get_versions(self, message: Message) -> dict[str, Any] | None:
        versions = self.context.get("versions", {}).get(message.pk)
        return None if versions is None else versions.as_dict()

    # Both read what ``MESSAGE_RELATIONS`` prefetched, as the socket's messages show them.
    @extend_schema_field(ToolCallSerializer(many=True))
    def get_tool_calls(self, message: Message) -> list[dict[str, Any]]:
        return [services.serialize_tool_call(call) for call in message.tool_calls.all()]

    @extend_schema_field(AttachmentRefSerializer(many=True))
    def get_attachments(self, message: Message) -> list[dict[str, Any]]:
        from .attachments import serialize_attachment

        return [serialize_attachment(a) for a in message.attachments.all()]


# What MessageSerializer reads of each message's relations, fetched in one query each (an
# image's URLs name its project and organization).
MESSAGE_RELATIONS = (
    "tool_calls",
    Prefetch(
        "attachments",
        queryset=Attachment.objects.select_related("project__organization").order_by("id"),
    ),
)


class MessageCreateSerializer(serializers.Serializer):
    content = serializers.CharField(
        trim_whitespace=False, help_text="The user's message; the model answers it."
    )
    attachments = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        max_length=100,
        help_text="Images to send with it: the ids the upload answered, for this conversation "
        "(models that support images only).",
    )


STREAM_PARAMETER = OpenApiParameter(
    "stream",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    description="true: answer with Server-Sent Events (user_message, start, waiting, delta, "
    "then done or error) instead of one JSON body.",
)

MESSAGE_EVENTS = server_sent_event(
    events=["user_message", "start", "waiting", "delta", "done", "error"],
    description="With ?stream=true: user_message (the message), start ({message_id}), waiting "
    "({position}: replies ahead for the local model), delta ({offset, text}), then done "
    "({message}: the saved reply) or error ({error, message}).",
)

FAILED_REPLY = inline_serializer(
    "FailedReply",
    {"error": OPENAI_ERROR.fields["error"], "message": MessageSerializer()},
)


def _serialize_messages(messages: list[Message]) -> list[dict[str, Any]]:
    prefetch_related_objects(messages, *MESSAGE_RELATIONS)
    costs = selectors.message_costs([m.pk for m in messages if m.role == Message.Role.ASSISTANT])
    versions = selectors.versions_of(messages)
    return list(
        MessageSerializer(messages, many=True, context={"costs": costs, "versions": versions}).data
    )


def _reply_body(conversation: Conversation, message_id: int) -> tuple[int, dict[str, Any]]:
    """The saved reply as the API answers it: 201, or the failure's status with the message."""
    message = selectors.get_message(conversation=conversation, pk=message_id)
    if message is None:
        raise Http404("The conversation was deleted while the model was answering.")
    data = _serialize_messages([message])[0]
    if message.state in (Message.State.COMPLETE, Message.State.STOPPED):
        return status.HTTP_201_CREATED, data
    failure = ServiceError(
        message.error_message or None, code=message.error_code or "upstream_error"
    )
    return failure.status, {**failure.body(), "message": data}


def _failure_headers(status_code: int, body: dict[str, Any]) -> dict[str, str] | None:
    """A failed reply's retry headers, by its code's row in the error table (an upstream rate
    limit sends ``Retry-After``; a refusal that cannot pass on retry, ``x-should-retry``)."""
    if status_code < 400:
        return None
    return ServiceError(code=body["error"]["code"] or "upstream_error").headers()


async def _abandon(record: IdempotentRequest) -> None:
    await db_async(idempotency.idempotency_abandon)(record=record)


@extend_schema(tags=["Messages"])
class MessageListView(ConversationEndpoint, ListModelMixin, AsyncProjectEndpoint):
    serializer_class = MessageSerializer

    def get_queryset(self):
        # The current branch: the versions of a turn not shown are under …/versions/.
        return (
            self.conversation.messages.on_branch()
            .select_related("author", "persona")
            .prefetch_related(*MESSAGE_RELATIONS)
            .order_by("id")
        )

    def get_serializer_context(self) -> dict[str, Any]:
        return {
            **super().get_serializer_context(),
            "costs": self._costs,
            "versions": self._versions,
        }

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        self._costs = selectors.message_costs([m.pk for m in page or []])
        self._versions = selectors.versions_of(page or [])
        return page

    async def get(self, request: Request, project_id: int, conversation_id: int) -> Response:
        return await sync_to_async(self.list)(request)

    @extend_schema(
        request=MessageCreateSerializer,
        parameters=[STREAM_PARAMETER, IDEMPOTENCY_PARAMETER],
        responses={
            (201, "application/json"): MessageSerializer,
            (200, "text/event-stream"): MESSAGE_EVENTS,
            400: OPENAI_ERROR,
            409: OPENAI_ERROR,
            429: OPENAI_ERROR,
            500: FAILED_REPLY,
            502: FAILED_REPLY,
            503: FAILED_REPLY,
            504: FAILED_REPLY,
        },
    )
    async def post(self, request: Request, project_id: int, conversation_id: int):
        form = MessageCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        content = form.validated_data["content"]
        attachments = form.validated_data.get("attachments") or []
        stream = request.query_params.get("stream", "").lower() in ("1", "true")
        key = request.headers.get(idempotency.HEADER)
        if key is None:
            return await self._create(content, attachments, stream=stream, record=None)
        fingerprint = f"{request.get_full_path()}\n{content}"
        if attachments:  # (so a message without images keeps the fingerprint it always had)
            fingerprint += f"\n{attachments}"
        started = await db_async(idempotency.idempotency_begin)(
            caller=cast(Model, self.api_key or request.user),  # signed in: a key or a user
            key=key,
            fingerprint=fingerprint.encode(),
        )
        if isinstance(started, idempotency.Replay):
            return started.response()
        return await self._create(content, attachments, stream=stream, record=started)

    async def _create(
        self,
        content: str,
        attachments: list[int],
        *,
        stream: bool,
        record: IdempotentRequest | None,
    ) -> HttpResponseBase:
        # Moderation, validation, rate limits and the budget reservation: a refusal raises
        # here, before anything is sent to the model, and nothing is saved (the client still
        # has its text) but a message moderation flagged, kept flagged.
        try:
            post = await posting.post_message(
                actor=self.actor,
                conversation_id=self.conversation.pk,
                project_id=self.conversation.project_id,
                content=content,
                attachments=attachments or None,
            )
        except BaseException:  # refused before any work (or the client left): a retry runs
            if record is not None:
                await asyncio.shield(_abandon(record))
            raise
        if self.conversation.is_room:
            # The people on the room's socket see it at once, as if typed there.
            await db_async(streaming.announce)(
                project_id=self.conversation.project_id,
                conversation_id=self.conversation.pk,
                payload={"type": "message", "message": post.message},
            )
        if post.pending is None:
            return await self._plain(post, record)
        pending = post.pending
        events: asyncio.Queue = asyncio.Queue()
        task = streaming.start_reply(pending, listener=events)
        if stream:
            sse = self._events(pending, events)
            if record is not None:
                # Kept as sent when read to the end; a client that leaves gets, on its
                # retry, the saved reply's events in short (it is never posted twice).
                sse = idempotency.recorded_stream(
                    sse,
                    record=record,
                    on_left=lambda: run_detached(self._keep_when_saved(task, pending, record)),
                )
            response = StreamingHttpResponse(sse, content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        # In a task of its own, shielded: a client that goes away does not cut the reply
        # short, and an Idempotency-Key still gets the saved reply as its answer.
        saved = run_detached(self._when_saved(task, pending, record))
        status_code, body = await asyncio.shield(saved)
        return Response(body, status=status_code, headers=_failure_headers(status_code, body))

    async def _plain(self, post: rooms.RoomPost, record: IdempotentRequest | None) -> Response:
        """A room message that called no persona: saved and shown to the room, nothing more
        (no model, no bill). ``X-Room-Notice`` says when its @tag named no persona."""
        body = await db_async(self._user_message_by_id)(post.message["id"])
        if record is not None:
            await db_async(idempotency.idempotency_finish)(
                record=record, status=201, body=json.loads(JSONRenderer().render(body))
            )
        headers = {"X-Room-Notice": post.notice} if post.notice else None
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    def _user_message_by_id(self, message_id: int) -> dict[str, Any]:
        message = selectors.get_message(conversation=self.conversation, pk=message_id)
        if message is None:
            raise Http404("The conversation was deleted meanwhile.")
        return _serialize_messages([message])[0]

    async def _when_saved(
        self, task: asyncio.Task, pending: services.PendingReply, record: IdempotentRequest | None
    ) -> tuple[int, dict[str, Any]]:
        await asyncio.shield(task)
        try:
            status_code, body = await db_async(_reply_body)(
                self.conversation, pending.assistant_message_id
            )
        except BaseException:  # the conversation was deleted meanwhile: nothing to replay
            if record is not None:
                await _abandon(record)
            raise
        if record is not None:
            await db_async(idempotency.idempotency_finish)(
                record=record, status=status_code, body=json.loads(JSONRenderer().render(body))
            )
        return status_code, body

    def _user_message(self, pending: services.PendingReply) -> dict[str, Any]:
        """The user message this reply answers, saved (only for a reply to a new message)."""
        if pending.user_message is None:
            raise ValueError("this reply answers no new user message")
        user_message = selectors.get_message(
            conversation=self.conversation, pk=pending.user_message["id"]
        )
        if user_message is None:
            raise Http404("The conversation was deleted while the model was answering.")
        return _serialize_messages([user_message])[0]

    async def _keep_when_saved(
        self, task: asyncio.Task, pending: services.PendingReply, record: IdempotentRequest
    ) -> None:
        await asyncio.shield(task)
        try:
            events = await db_async(self._replay_events)(pending)
        except BaseException:
            await _abandon(record)
            raise
        await db_async(idempotency.idempotency_finish)(
            record=record, status=200, stream=b"".join(events).decode()
        )

    def _replay_events(self, pending: services.PendingReply) -> list[bytes]:
        """The events of a finished reply, as its stream would have sent them (in one delta)."""
        status_code, body = _reply_body(self.conversation, pending.assistant_message_id)
        reply = body if status_code == status.HTTP_201_CREATED else body["message"]
        events = (
            [sse_event("user_message", self._user_message(pending))] if pending.user_message else []
        )
        events.append(sse_event("start", {"message_id": pending.assistant_message_id}))
        if reply["content"]:
            events.append(sse_event("delta", {"offset": 0, "text": reply["content"]}))
        if status_code == status.HTTP_201_CREATED:
            events.append(sse_event("done", {"message": body}))
        else:
            events.append(sse_event("error", body))
        return events

    async def _events(
        self, pending: services.PendingReply, events: asyncio.Queue
    ) -> AsyncIterator[bytes]:
        """The reply's events as SSE; ``done`` or ``error`` carries the saved message. The
        reply goes on if the client leaves."""
        if pending.user_message is not None:
            yield sse_event("user_message", await db_async(self._user_message)(pending))
        while (payload := await events.get()) is not None:
            kind = payload["type"]
            if kind == "assistant.started":
                yield sse_event("start", {"message_id": payload["message"]["id"]})
            elif kind == "waiting":
                yield sse_event("waiting", {"position": payload["position"]})
            elif kind == "delta":
                yield sse_event("delta", {"offset": payload["offset"], "text": payload["text"]})
            elif kind in ("tool.call", "tool.result"):  # a tool the reply called, run here
                yield sse_event(kind.replace(".", "_"), {"call": payload["call"]})
            elif kind in ("done", "error"):
                status_code, body = await db_async(_reply_body)(
                    self.conversation, pending.assistant_message_id
                )
                if status_code == status.HTTP_201_CREATED:
                    yield sse_event("done", {"message": body})
                else:
                    yield sse_event("error", body)
                return


@extend_schema(tags=["Messages"])
class ConversationStopView(ConversationEndpoint, AsyncProjectEndpoint):
    """Stop the reply being written: what was generated is kept (state ``stopped``) and billed."""

    @extend_schema(request=None, responses={200: MessageSerializer, 409: OPENAI_ERROR})
    async def post(self, request: Request, project_id: int, conversation_id: int) -> Response:
        message = await db_async(selectors.streaming_message)(self.conversation)
        if message is None:
            raise ServiceError("No reply is being written in this conversation.", code="not_busy")
        await get_channel_layer().group_send(
            streaming.control_group(project_id=self.project.pk, conversation_id=conversation_id),
            {"type": "chat.stop"},
        )
        # The reply's task saves it within a token. If none answers within the grace period
        # (its process died), the reply is closed here: stop always works, as in the web chat.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.CHAT_ORPHAN_GRACE
        while (current := await self._reload(message.pk)).state == Message.State.STREAMING:
            if loop.time() > deadline:
                await db_async(services.reply_close_orphan)(
                    actor=self.actor, conversation_id=conversation_id
                )
                current = await self._reload(message.pk)
                break
            await asyncio.sleep(0.05)
        [data] = await db_async(_serialize_messages)([current])
        return Response(data)

    async def _reload(self, pk: int) -> Message:
        message = await db_async(selectors.get_message)(conversation=self.conversation, pk=pk)
        if message is None:
            raise Http404("The conversation was deleted meanwhile.")
        return message


# --- versions of a turn -------------------------------------------------------------------------


class MessageEndpoint(ConversationEndpoint):
    """A message of the conversation (any version, shown or not); another id is a 404."""

    message: Message

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        message = selectors.get_message(conversation=self.conversation, pk=kwargs["message_id"])
        if message is None:
            raise Http404("No such message.")
        self.message = message


class VersionSerializer(MessageSerializer):
    selected = serializers.BooleanField(
        help_text="The version shown (on the conversation's current branch, if its turn is)."
    )

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "selected"]
        read_only_fields = fields


@extend_schema(tags=["Messages"])
class MessageVersionListView(MessageEndpoint):
    """Every version of this message's turn, oldest first: the replies a regenerate made, or
    the texts an edit made (a short list: not paginated)."""

    pagination_class = None

    @extend_schema(responses=VersionSerializer(many=True))
    def get(
        self, request: Request, project_id: int, conversation_id: int, message_id: int
    ) -> Response:
        versions = selectors.message_versions(self.conversation, self.message)
        prefetch_related_objects(versions, *MESSAGE_RELATIONS)
        costs = selectors.message_costs([m.pk for m in versions])
        context = {"costs": costs, "versions": selectors.versions_of(versions)}
        return Response(VersionSerializer(versions, many=True, context=context).data)


class BranchChangeSerializer(serializers.Serializer):
    message_id = serializers.IntegerField(help_text="The version now shown.")
    changed_from = serializers.IntegerField(
        allow_null=True,
        help_text="The first message of the transcript that reads differently now; null when "
        "this version was shown already.",
    )


@extend_schema(tags=["Messages"])
class MessageSelectView(MessageEndpoint):
    """Show this version of its turn: the conversation's branch goes through it (and on
    through the versions last shown after it), and later replies are prompted with that branch.
    Refused (409 ``busy``) while a reply is being written."""

    @extend_schema(request=None, responses={200: BranchChangeSerializer, 409: OPENAI_ERROR})
    def post(
        self, request: Request, project_id: int, conversation_id: int, message_id: int
    ) -> Response:
        change = services.message_select(
            actor=self.actor, conversation_id=self.conversation.pk, message_id=self.message.pk
        )
        if change.changed_from is not None:
            # Open tabs read the transcript again, as after a click on a version arrow.
            streaming.announce(
                project_id=self.project.pk,
                conversation_id=self.conversation.pk,
                payload={
                    "type": "branch",
                    "message_id": change.message_id,
                    "from": change.changed_from,
                },
            )
        return Response({"message_id": change.message_id, "changed_from": change.changed_from})


# --- folders ------------------------------------------------------------------------------------


class FolderSerializer(serializers.ModelSerializer):
    project = serializers.IntegerField(source="project_id", read_only=True)

    class Meta:
        model = Folder
        fields = ["id", "project", "name", "created_at"]
        read_only_fields = ["id", "project", "created_at"]


class FolderWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="At most 80 characters.")


class FolderEndpoint(ActorEndpoint):
    """Folders are a person's own sidebar: an API key has none (403 ``keys_not_allowed``)."""

    allow_keys = False

    def folders(self):
        if self.actor.user is None:  # never: keys are refused before
            return Folder.objects.none()
        return selectors.folders_for_user(user=self.actor.user, project=self.project)


@extend_schema(tags=["Folders"])
class FolderListView(ListModelMixin, FolderEndpoint):
    """Your folders in this project; move a chat into one with PATCH on the conversation
    (``folder``)."""

    serializer_class = FolderSerializer

    def get_queryset(self):
        return self.folders()

    def get(self, request: Request, project_id: int) -> Response:
        return self.list(request)

    @extend_schema(
        request=FolderWriteSerializer, responses={201: FolderSerializer, 409: OPENAI_ERROR}
    )
    def post(self, request: Request, project_id: int) -> Response:
        form = FolderWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        folder = services.folder_create(
            actor=self.actor, project=self.project, name=form.validated_data["name"]
        )
        return Response(FolderSerializer(folder).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["Folders"])
class FolderDetailView(FolderEndpoint):
    folder: Folder

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        folder = self.folders().filter(pk=kwargs["folder_id"]).first()
        if folder is None:
            raise Http404("No such folder.")
        self.folder = folder

    @extend_schema(responses=FolderSerializer)
    def get(self, request: Request, project_id: int, folder_id: int) -> Response:
        return Response(FolderSerializer(self.folder).data)

    @extend_schema(
        request=FolderWriteSerializer, responses={200: FolderSerializer, 409: OPENAI_ERROR}
    )
    def patch(self, request: Request, project_id: int, folder_id: int) -> Response:
        form = FolderWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        folder = services.folder_rename(folder=self.folder, name=form.validated_data["name"])
        return Response(FolderSerializer(folder).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, project_id: int, folder_id: int) -> Response:
        """The folder goes; its chats stay, in no folder."""
        services.folder_delete(folder=self.folder)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- rooms -------------------------------------------------------------------------------------


class RoomSerializer(ConversationSerializer):
    owner = serializers.SerializerMethodField(help_text="Who made the room (and may change it).")
    members = serializers.SerializerMethodField(help_text="Everyone who can open the room.")

    class Meta(ConversationSerializer.Meta):
        fields = [*ConversationSerializer.Meta.fields, "owner", "members"]
        read_only_fields = fields

    @extend_schema_field(PersonRefSerializer)
    def get_owner(self, room: Conversation) -> dict[str, Any]:
        return {"id": room.owner_id, "name": selectors.speaker_name(room.owner)}

    @extend_schema_field(PersonRefSerializer(many=True))
    def get_members(self, room: Conversation) -> list[dict[str, Any]]:
        return [
            {"id": person.pk, "name": selectors.speaker_name(person)}
            for person in rooms.members_of(room)
        ]


SHARING_HELP = (
    "'project': everyone in the project; 'members': the people in 'members' and the maker; "
    "'private' (changing an existing room only): a private chat again."
)


# A new room is shared (never private); named in the schema by SPECTACULAR_SETTINGS.
NEW_ROOM_SHARING = [
    (Conversation.Sharing.PROJECT.value, Conversation.Sharing.PROJECT.label),
    (Conversation.Sharing.MEMBERS.value, Conversation.Sharing.MEMBERS.label),
]


class RoomCreateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    sharing = serializers.ChoiceField(
        choices=NEW_ROOM_SHARING, default="project", help_text=SHARING_HELP
    )
    members = serializers.ListField(
        child=serializers.IntegerField(), required=False, default=list, help_text="User ids."
    )
    model = serializers.CharField(
        max_length=200, required=False, help_text="Default: the project's default model."
    )


class RoomUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    sharing = serializers.ChoiceField(
        choices=Conversation.Sharing.choices, required=False, help_text=SHARING_HELP
    )
    members = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        help_text="User ids to add (with sharing 'members').",
    )


class MembersAddSerializer(serializers.Serializer):
    members = serializers.ListField(child=serializers.IntegerField(), help_text="User ids.")


class RoomEndpoint(ActorEndpoint):
    """A room of the project the caller is in; any other id (a private chat too) is a 404.
    API keys reach no rooms: rooms are people's, as a person's own chats are."""

    room: Conversation

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        conversation = selectors.get_actor_conversation_or_404(
            actor=self.actor, project=self.project, pk=kwargs["room_id"]
        )
        if not conversation.is_room:
            raise Http404("No such room.")
        self.room = conversation


@extend_schema(tags=["Rooms"])
class RoomListView(ListModelMixin, ActorEndpoint):
    """The project's rooms the caller is in (none for an API key), and new ones."""

    serializer_class = RoomSerializer

    def get_queryset(self):
        if self.actor.user is None:
            return Conversation.objects.none()
        return selectors.rooms_for_user(user=self.actor.user, project=self.project)

    def get(self, request: Request, project_id: int) -> Response:
        return self.list(request)

    @extend_schema(request=RoomCreateSerializer, responses={201: RoomSerializer, 403: OPENAI_ERROR})
    def post(self, request: Request, project_id: int) -> Response:
        form = RoomCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        room = rooms.room_create(
            actor=self.actor,
            project=self.project,
            title=data.get("title", ""),
            sharing=data["sharing"],
            member_ids=data["members"],
            model=data.get("model"),
        )
        return Response(RoomSerializer(room).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["Rooms"])
class RoomDetailView(RoomEndpoint):
    @extend_schema(responses=RoomSerializer)
    def get(self, request: Request, project_id: int, room_id: int) -> Response:
        return Response(RoomSerializer(self.room).data)

    @extend_schema(request=RoomUpdateSerializer, responses={200: RoomSerializer, 403: OPENAI_ERROR})
    def patch(self, request: Request, project_id: int, room_id: int) -> Response:
        form = RoomUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        rooms.check_maker(actor=self.actor, conversation=self.room)
        room = self.room
        if "sharing" in data or "members" in data:
            room = rooms.room_share(
                actor=self.actor,
                conversation_id=room.pk,
                sharing=data.get("sharing", room.sharing),
                member_ids=data.get("members", []),
            )
        if "title" in data:
            room = services.conversation_rename(conversation=room, title=data["title"])
        return Response(RoomSerializer(room).data)


@extend_schema(tags=["Rooms"])
class RoomMemberListView(RoomEndpoint):
    @extend_schema(responses=PersonRefSerializer(many=True))
    def get(self, request: Request, project_id: int, room_id: int) -> Response:
        return Response(RoomSerializer(self.room).data["members"])

    @extend_schema(
        request=MembersAddSerializer,
        responses={200: PersonRefSerializer(many=True), 403: OPENAI_ERROR},
    )
    def post(self, request: Request, project_id: int, room_id: int) -> Response:
        form = MembersAddSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        rooms.room_add_members(
            actor=self.actor,
            conversation_id=self.room.pk,
            member_ids=form.validated_data["members"],
        )
        return Response(RoomSerializer(self.room).data["members"])


@extend_schema(tags=["Rooms"])
class RoomMemberDetailView(RoomEndpoint):
    @extend_schema(responses={204: None, 403: OPENAI_ERROR, 404: OPENAI_ERROR})
    def delete(self, request: Request, project_id: int, room_id: int, user_id: int) -> Response:
        """The maker removes someone; anyone removes themselves (leaves). Their open sockets
        on the room close at once."""
        rooms.room_remove_member(actor=self.actor, conversation_id=self.room.pk, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
