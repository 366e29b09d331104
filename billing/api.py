"""REST: a project's usage, aggregated by day, model or API key over a date range.

Who sees what, as on the usage dashboard: owners and admins the whole project, a member their
own calls, a project key (scope ``read``) the calls made with the project's keys.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api_base import ProjectEndpoint

from .selectors import (
    MAX_RANGE_DAYS,
    DateRange,
    Spend,
    UsageScope,
    spend_by_api_key,
    spend_by_day,
    spend_by_model,
    total_of,
)

GROUPINGS = {"day": spend_by_day, "model": spend_by_model, "key": spend_by_api_key}


class UsageQuerySerializer(serializers.Serializer[Any]):
    group_by = serializers.ChoiceField(choices=list(GROUPINGS), default="day")
    start = serializers.DateField(
        required=False, help_text="First UTC day, included. Default: the 1st of this month."
    )
    end = serializers.DateField(required=False, help_text="Last UTC day, included. Default: today.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        today = timezone.now().date()
        end = attrs.get("end") or today
        start = attrs.get("start") or end.replace(day=1)
        if start > end:
            raise serializers.ValidationError({"start": "start must not be after end."})
        if (end - start) > timedelta(days=MAX_RANGE_DAYS - 1):
            raise serializers.ValidationError(
                {"start": f"A range covers at most {MAX_RANGE_DAYS} days."}
            )
        return {**attrs, "start": start, "end": end}


class SpendSerializer(serializers.Serializer[Spend]):
    group = serializers.CharField(source="label", help_text="The day, model or key.")
    calls = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=24, decimal_places=12, help_text="USD")
    priced = serializers.BooleanField(
        help_text="False: the calls ran at no price (a model staff let run unpriced); the "
        "cost is unknown, not zero."
    )


class UsageSerializer(serializers.Serializer[dict[str, Any]]):
    group_by = serializers.CharField()
    start = serializers.DateField()
    end = serializers.DateField()
    scope = serializers.ChoiceField(choices=["project", "own_calls", "api_keys"])
    groups = SpendSerializer(many=True)
    total = SpendSerializer()


@extend_schema(tags=["Usage"])
class UsageView(ProjectEndpoint):
    @extend_schema(parameters=[UsageQuerySerializer], responses=UsageSerializer)
    def get(self, request: Request, project_id: int) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        scope, label = self._scope()
        date_range = DateRange(start=query.validated_data["start"], end=query.validated_data["end"])
        groups: list[Spend] = GROUPINGS[query.validated_data["group_by"]](scope, date_range)
        data = {
            "group_by": query.validated_data["group_by"],
            "start": date_range.start,
            "end": date_range.end,
            "scope": label,
            "groups": groups,
            "total": total_of(groups),
        }
        return Response(UsageSerializer(data).data)

    def _scope(self) -> tuple[UsageScope, str]:
        organization = self.project.organization
        if self.api_key is not None:
            scope = UsageScope(organization, project_id=self.project.pk, api_keys_only=True)
            return scope, "api_keys"
        if self.membership is not None and self.membership.can_manage:
            return UsageScope(organization, project_id=self.project.pk), "project"
        user_id = self.request.user.pk
        return UsageScope(organization, user_id=user_id, project_id=self.project.pk), "own_calls"
