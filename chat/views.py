"""Chat pages. The conversation page reads without JavaScript; sending uses the socket."""

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.decorators import AuthenticatedHttpRequest, project_view
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import exports, selectors, services
from .actors import Actor
from .forms import ConversationSettingsForm, RenameForm
from .markdown import render_markdown


def _conversation_url(project: Project, pk: int) -> str:
    return reverse("conversation_detail", args=[project.organization.slug, project.slug, pk])


def _chat_context(request: HttpRequest, membership: Membership, project: Project, **extra) -> dict:
    """What every chat page shows: the project and the sidebar (searched by ``?q=``)."""
    query = request.GET.get("q", "").strip()
    return {
        "project": project,
        "organization": project.organization,
        "membership": membership,
        "query": query,
        "conversations": selectors.sidebar_conversations(
            user=request.user, project=project, query=query
        ),
        "conversation": None,
        **extra,
    }


@project_view
def chat_home(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    context = _chat_context(request, membership, project)
    if not context["query"] and context["conversations"]:
        return redirect(_conversation_url(project, context["conversations"][0].pk))
    return render(request, "chat/conversation.html", context)


@require_POST
@project_view
def conversation_new(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    try:
        conversation = services.conversation_create(
            actor=Actor(user=request.user), project=project, model=request.POST.get("model") or None
        )
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect("chat_home", org_slug=project.organization.slug, project_slug=project.slug)
    return redirect(_conversation_url(project, conversation.pk))


@project_view
def conversation_detail(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    before = request.GET.get("before")
    window, has_older = selectors.message_window(
        conversation, before=int(before) if before and before.isdigit() else None
    )
    costs = selectors.message_costs([m.pk for m in window if m.role == "assistant"])
    for message in window:
        if message.role == "assistant":
            message.html = render_markdown(message.content)
            message.cost = costs.get(message.pk)
    # A model the project no longer allows is not offered: the picker falls back to the first
    # allowed one and the page says why, so saving the settings never fails on the model.
    models = selectors.allowed_models(project)
    context = _chat_context(
        request,
        membership,
        project,
        conversation=conversation,
        window=window,
        has_older=has_older,
        oldest_id=window[0].pk if window else None,
        models=models,
        settings_form=ConversationSettingsForm(
            models=models,
            initial={
                name: getattr(conversation, name)
                for name in ("model", "system_prompt", *services.SAMPLING_FIELDS)
            },
        ),
        socket_path=f"/ws/conversations/{conversation.pk}/",
        total_cost=selectors.conversation_cost(conversation),
    )
    return render(request, "chat/conversation.html", context)


@require_POST
@project_view
def conversation_rename(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    form = RenameForm(request.POST)
    if form.is_valid():
        services.conversation_rename(conversation=conversation, title=form.cleaned_data["title"])
    else:
        messages.error(request, "A title has at most 200 characters.")
    return redirect(_conversation_url(project, conversation.pk))


@require_POST
@project_view
def conversation_delete(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    services.conversation_delete(conversation=conversation)
    messages.success(request, f"Deleted “{conversation.display_title}”.")
    return redirect("chat_home", org_slug=project.organization.slug, project_slug=project.slug)


@require_POST
@project_view
def conversation_settings(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    form = ConversationSettingsForm(request.POST, models=selectors.allowed_models(project))
    if not form.is_valid():
        for field, errors in form.errors.items():
            problems = " ".join(str(error) for error in errors)
            messages.error(request, f"{field.replace('_', ' ').capitalize()}: {problems}")
    else:
        try:
            services.conversation_update_settings(conversation=conversation, **form.cleaned_data)
        except ServiceError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, "Settings saved.")
    return redirect(_conversation_url(project, conversation.pk))


@project_view
def conversation_export(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int, fmt: str
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    filename = f"conversation-{conversation.pk}.{fmt}"
    response: HttpResponse
    if fmt == "json":
        response = JsonResponse(
            exports.as_dict(conversation), json_dumps_params={"ensure_ascii": False, "indent": 2}
        )
    elif fmt == "md":
        response = HttpResponse(
            exports.as_markdown(conversation), content_type="text/markdown; charset=utf-8"
        )
    else:
        raise Http404("Unknown export format.")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
