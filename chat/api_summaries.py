"""REST: a conversation's running summary (``…/conversations/<id>/summary/``).

GET reads it; POST asks for one now. The fold itself is the Celery task the chat queues after a
long reply (``chat.summaries``), so POST answers 202 at once with the summary as it stands then:
a client reads it again to see the new one (where tasks run in-process, as in the tests, it is
there already). Whoever asks pays for the call: the signed-in person, or the project key.
Reached like every conversation endpoint: a person's own, a key's API conversations.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.schema import OPENAI_ERROR

from . import summaries
from .api import ConversationEndpoint
from .models import Conversation


class ConversationSummarySerializer(serializers.Serializer[Conversation]):
    summary = serializers.CharField(
        help_text="The running summary, sent to the model in place of the messages it covers "
        "(empty: none yet)."
    )
    through_message_id = serializers.IntegerField(
        source="summary_through",
        allow_null=True,
        help_text="Every message with this id or a lower one is folded into the summary "
        "(null: none is).",
    )
    updated_at = serializers.DateTimeField(source="summary_updated_at", allow_null=True)
    error = serializers.CharField(
        source="summary_error",
        help_text="Why the last summary failed, in words for a person (empty when it did not); "
        "the summary before it is kept.",
    )
    history_limit = serializers.IntegerField(
        allow_null=True,
        help_text="Send at most this many earlier messages (null: all that fit).",
    )


class QueuedConversationSummarySerializer(ConversationSummarySerializer):
    queued = serializers.SerializerMethodField(
        help_text="Always true: the summary is being written in the background."
    )

    def get_queued(self, conversation: Conversation) -> bool:
        return True


@extend_schema(tags=["Conversations"])
class ConversationSummaryView(ConversationEndpoint):
    """The conversation's running summary of its oldest messages."""

    @extend_schema(responses=ConversationSummarySerializer)
    def get(self, request: Request, project_id: int, conversation_id: int) -> Response:
        return Response(ConversationSummarySerializer(self.conversation).data)

    @extend_schema(
        request=None,
        responses={202: QueuedConversationSummarySerializer, 409: OPENAI_ERROR},
        description="Summarize now: fold the messages before the last exchange into the "
        "summary (one metered call, billed to the caller). 409 nothing_to_summarize when there "
        "is nothing to fold yet.",
    )
    def post(self, request: Request, project_id: int, conversation_id: int) -> Response:
        summaries.summary_request(actor=self.actor, conversation=self.conversation)
        self.conversation.refresh_from_db(
            fields=["summary", "summary_through", "summary_updated_at", "summary_error"]
        )
        return Response(
            QueuedConversationSummarySerializer(self.conversation).data,
            status=status.HTTP_202_ACCEPTED,
        )
