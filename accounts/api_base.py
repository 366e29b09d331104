"""What every REST endpoint under ``/api/v1/`` stands on.

- Authentication: ``Authorization: Bearer lgw_…`` (a project key) or the browser session (with
  CSRF on writes, DRF's ``SessionAuthentication``). A key acts for its project only.
- ``ProjectEndpoint`` (Sentry's "one base endpoint resolves the organization"): resolves the
  ``project_id`` of the URL through the caller's scoped path before any handler runs, so an
  outsider's request is a 404 however the handler is written; checks the key's scope.
- Errors: ``core.api.api_exception_handler`` answers every refusal in OpenAI's shape.
- ``AsyncProjectEndpoint``: the same for handlers that wait on a model (``core.api``'s async
  dispatch).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request

from core.api import AsyncAPIView
from core.errors import ServiceError

from .api_auth import api_key_of
from .api_keys import INVALID_KEY_MESSAGE
from .models import ApiKey, Membership, Project, User
from .selectors import membership_for, projects_for_user
from .two_factor import two_factor_satisfied


def projects_for_request(request: Request) -> QuerySet[Project]:
    """The projects the caller may reach: a key's own project, or the user's projects."""
    key = api_key_of(request)
    if key is not None:
        return Project.objects.filter(pk=key.project_id).select_related("organization")
    return projects_for_user(request.user)


class ProjectEndpoint(GenericAPIView):
    """Resolves ``self.project`` (and ``self.membership`` for a person) before the handler.
    Lists use DRF's ``ListModelMixin`` with ``get_queryset`` built from ``self.project``."""

    project: Project
    membership: Membership | None
    api_key: ApiKey | None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Who asks, then which project, then what they may do there: another project's key
        # is refused as no key at all (401) before any permission could say more about it.
        self.perform_authentication(request)
        self.api_key = api_key_of(request)
        if self.api_key is None and not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        self.project = self._resolve_project(request, kwargs.get("project_id"))
        super().initial(request, *args, **kwargs)
        self.membership = (
            None
            if self.api_key is not None
            else membership_for(user=request.user, organization=self.project.organization)
        )
        # A key is the project's, not a person's: an organization's two-factor requirement
        # is about the people who sign in.
        if self.api_key is None and not two_factor_satisfied(
            user=request.user, organization=self.project.organization
        ):
            raise ServiceError(code="two_factor_required")

    @staticmethod
    def _resolve_project(request: Request, project_id: Any) -> Project:
        key = api_key_of(request)
        if key is not None and str(key.project_id) != str(project_id):
            # Another project's key: to this project it is no key at all, and it is told so
            # in the very words a revoked or unknown key gets.
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key")
        project = projects_for_request(request).filter(pk=project_id).first()
        if project is None:
            raise Http404(_("No such project."))
        return project

    @property
    def principal(self) -> ApiKey | User:
        """Who calls: the project's key, or the signed-in person (``initial`` let no one else
        through)."""
        if self.api_key is not None:
            return self.api_key
        if not isinstance(self.request.user, User):
            raise exceptions.NotAuthenticated()
        return self.request.user

    def require_manager(self) -> Membership:
        """Project admins' actions: owners and admins of the organization, never a key."""
        if self.membership is None or not self.membership.can_manage:
            raise exceptions.PermissionDenied(
                "Only the organization's owners and admins can do this.", code="forbidden"
            )
        return self.membership


class AsyncProjectEndpoint(AsyncAPIView, ProjectEndpoint):
    """A ProjectEndpoint for handlers that wait on a model."""
