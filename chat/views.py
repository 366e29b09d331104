"""Chat pages. The conversation page reads without JavaScript; sending uses the socket."""

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.decorators import AuthenticatedHttpRequest, project_view, require_manager
from accounts.models import Membership, Project
from core.errors import ServiceError

from . import exports, personas, rooms, selectors, services, summaries
from .actors import Actor
from .forms import (
    ChatSettingsForm,
    ConversationSettingsForm,
    MoveForm,
    PersonaForm,
    RenameForm,
    RoomForm,
)
from .markdown import render_markdown, render_reply_html
from .models import Conversation, Message, Persona


def _conversation_url(project: Project, pk: int) -> str:
    return reverse("conversation_detail", args=[project.organization.slug, project.slug, pk])


def _chat_context(request: HttpRequest, membership: Membership, project: Project, **extra) -> dict:
    """What every chat page shows: the project and the sidebar (pinned chats, folders, the rest
    by date), or the chats that match ``?q=``."""
    query = request.GET.get("q", "").strip()
    if query:
        sidebar = None
        conversations = list(
            selectors.sidebar_conversations(user=request.user, project=project, query=query)
        )
    else:
        sidebar = selectors.sidebar(user=request.user, project=project)
        conversations = sidebar.chats
    return {
        "project": project,
        "organization": project.organization,
        "membership": membership,
        "query": query,
        "sidebar": sidebar,
        "conversations": conversations,
        "conversation": None,
        "rooms": selectors.rooms_for_user(user=request.user, project=project)[:50],
        "new_chat_personas": personas.personas_for(project, enabled_only=True),
        **extra,
    }


def _only_the_maker(request: HttpRequest, conversation: Conversation) -> HttpResponse | None:
    """In a room only its maker renames, changes settings or deletes it: the others are told
    so (and sent back to the room)."""
    if conversation.is_room and conversation.owner_id != request.user.pk:
        messages.error(request, _("Only the person who made this room can change it."))
        return redirect(_conversation_url(conversation.project, conversation.pk))
    return None


def _people(project: Project, user: Any) -> list[tuple[int, str]]:
    """Who a room can be shared with: the project's people, the asker left out."""
    return [
        (person.pk, f"{selectors.speaker_name(person)}")
        for person in selectors.project_people(project)
        if person.pk != user.pk
    ]


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
    persona_id = request.POST.get("persona")
    try:
        conversation = services.conversation_create(
            actor=Actor(user=request.user),
            project=project,
            model=request.POST.get("model") or None,
            persona=personas.get_persona_or_404(project=project, persona_id=persona_id)
            if persona_id
            else None,
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
    versions = selectors.versions_of(window)
    for message in window:
        message.versions = versions.get(message.pk)
        if message.role == "assistant":
            message.html = render_reply_html(
                message.content, json_valid=message.json_valid, json_error=message.json_error
            )
            message.cost = costs.get(message.pk)
            message.unpriced = message.pk in costs and message.cost is None
    # A model the project no longer allows is not offered: the picker falls back to the first
    # allowed one and the page says why, so saving the settings never fails on the model.
    model_options = selectors.model_options(project)
    models = [option.name for option in model_options]
    context = _chat_context(
        request,
        membership,
        project,
        conversation=conversation,
        window=window,
        has_older=has_older,
        oldest_id=window[0].pk if window else None,
        models=models,
        model_options=model_options,
        settings_form=ConversationSettingsForm(
            models=models,
            project=project,
            conversation=conversation,
            initial={
                name: getattr(conversation, name)
                for name in ("model", "system_prompt", *services.SAMPLING_FIELDS, "history_limit")
            },
        ),
        socket_path=f"/ws/conversations/{conversation.pk}/",
        vision=any(o.vision for o in model_options if o.name == conversation.model),
        replies_held=services.replies_held(project),
        max_images=settings.CHAT_IMAGE_MAX_COUNT,
        max_image_bytes=settings.CHAT_IMAGE_MAX_BYTES,
        total_cost=selectors.conversation_cost(conversation),
        summary=_summary_marker(conversation, window),
    )
    sidebar = context["sidebar"]
    context["move_form"] = MoveForm(
        folders=[(g.folder.pk, g.label) for g in sidebar.folders if g.folder]
        if sidebar is not None
        else context_folders(request, project),
        initial={"folder": conversation.folder_id},
    )
    if conversation.is_room:
        room_total, shares = selectors.room_shares(conversation)
        context.update(
            room_members=list(rooms.members_of(conversation)),
            room_total=room_total,
            room_shares=shares,
            persona_tags=selectors.persona_tags(project),
            room_form=RoomForm(
                people=_people(project, request.user),
                existing=True,
                initial={
                    "title": conversation.title,
                    "sharing": conversation.sharing,
                    "members": [m.pk for m in rooms.members_of(conversation)],
                },
            ),
        )
    return render(request, "chat/conversation.html", context)


@project_view
def room_list(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    """The project's rooms the user is in, and a form to open a new one."""
    form = RoomForm(request.POST or None, people=_people(project, request.user))
    if request.method == "POST" and form.is_valid():
        try:
            room = rooms.room_create(
                actor=Actor(user=request.user),
                project=project,
                title=form.cleaned_data["title"],
                sharing=form.cleaned_data["sharing"],
                member_ids=form.cleaned_data["members"]
                if form.cleaned_data["sharing"] == "members"
                else [],
            )
        except ServiceError as error:
            form.add_error(None, error.message)
        else:
            return redirect(_conversation_url(project, room.pk))
    context = _chat_context(request, membership, project, room_form=form, rooms_page=True)
    return render(request, "chat/rooms.html", context, status=400 if form.errors else 200)


@require_POST
@project_view
def room_share(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    form = RoomForm(request.POST, people=_people(project, request.user), existing=True)
    if not form.is_valid():
        messages.error(
            request, _("Choose who is in the room: everyone in the project, or members.")
        )
        return redirect(_conversation_url(project, conversation.pk))
    sharing = form.cleaned_data["sharing"]
    try:
        rooms.room_share(
            actor=Actor(user=request.user),
            conversation_id=conversation.pk,
            sharing=sharing,
            member_ids=form.cleaned_data["members"] if sharing == "members" else [],
        )
        if form.cleaned_data["title"] != conversation.title:
            services.conversation_rename(
                conversation=conversation, title=form.cleaned_data["title"]
            )
    except ServiceError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, _("Room updated."))
    return redirect(_conversation_url(project, conversation.pk))


@require_POST
@project_view
def room_remove(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    pk: int,
    user_id: int,
) -> HttpResponse:
    """The maker removes someone; anyone removes themselves (leaves the room)."""
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    leaving = user_id == request.user.pk
    try:
        rooms.room_remove_member(
            actor=Actor(user=request.user), conversation_id=conversation.pk, user_id=user_id
        )
    except ServiceError as error:
        messages.error(request, error.message)
        return redirect(_conversation_url(project, conversation.pk))
    if leaving:
        messages.success(
            request, _("You left “%(title)s”.") % {"title": conversation.display_title}
        )
        return redirect("room_list", org_slug=project.organization.slug, project_slug=project.slug)
    messages.success(request, _("Removed from the room."))
    return redirect(_conversation_url(project, conversation.pk))


@require_POST
@project_view
def conversation_rename(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    if refused := _only_the_maker(request, conversation):
        return refused
    form = RenameForm(request.POST)
    if form.is_valid():
        services.conversation_rename(conversation=conversation, title=form.cleaned_data["title"])
    else:
        messages.error(request, _("A title has at most 200 characters."))
    return redirect(_conversation_url(project, conversation.pk))


@require_POST
@project_view
def conversation_delete(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    if refused := _only_the_maker(request, conversation):
        return refused
    services.conversation_delete(conversation=conversation)
    messages.success(request, _("Deleted “%(title)s”.") % {"title": conversation.display_title})
    return redirect("chat_home", org_slug=project.organization.slug, project_slug=project.slug)


@require_POST
@project_view
def conversation_settings(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    if refused := _only_the_maker(request, conversation):
        return refused
    form = ConversationSettingsForm(
        request.POST,
        models=selectors.allowed_models(project),
        project=project,
        conversation=conversation,
    )
    if not form.is_valid():
        for field, errors in form.errors.items():
            problems = " ".join(str(error) for error in errors)
            label = form.fields[field].label if field in form.fields else None
            name = str(label) if label else field.replace("_", " ").capitalize()
            messages.error(request, f"{name}: {problems}")
    else:
        try:
            services.conversation_update(conversation=conversation, changes=form.cleaned_data)
        except ServiceError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("Settings saved."))
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
        raise Http404(_("Unknown export format."))
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- the sidebar: pins, the archive, folders ------------------------------------------------


def context_folders(request: HttpRequest, project: Project) -> list[tuple[int, str]]:
    return [(f.pk, f.name) for f in selectors.folders_for_user(user=request.user, project=project)]


def _back(request: HttpRequest, fallback: str) -> HttpResponse:
    """Back to the page the form was on (``next``, same site only), else ``fallback``."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(fallback)


def _chat_home_url(project: Project) -> str:
    return reverse("chat_home", args=[project.organization.slug, project.slug])


def _sidebar_write(
    request: AuthenticatedHttpRequest, project: Project, pk: int, service: Any, **kwargs: Any
) -> HttpResponse:
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    try:
        service(actor=Actor(user=request.user), conversation_id=conversation.pk, **kwargs)
    except ServiceError as error:
        messages.error(request, error.message)
    return _back(request, _conversation_url(project, conversation.pk))


@require_POST
@project_view
def conversation_pin(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    return _sidebar_write(
        request, project, pk, services.conversation_pin, pinned=request.POST.get("pinned") == "1"
    )


@require_POST
@project_view
def conversation_archive(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    archived = request.POST.get("archived") == "1"
    response = _sidebar_write(
        request, project, pk, services.conversation_archive, archived=archived
    )
    if archived and not request.POST.get("next"):
        # The chat left the sidebar: go on with the latest one.
        messages.success(
            request, _("Archived. Archived chats are under “Archived” in the sidebar.")
        )
        return redirect(_chat_home_url(project))
    return response


@require_POST
@project_view
def conversation_move(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    form = MoveForm(request.POST, folders=context_folders(request, project))
    if not form.is_valid():
        # An id that is not one of the user's folders: the same 404 as a missing one.
        raise Http404(_("No such folder."))
    return _sidebar_write(
        request, project, pk, services.conversation_move, folder_id=form.cleaned_data["folder"]
    )


@project_view
def chat_archived(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    """The user's archived chats of the project, to open or bring back."""
    archived = selectors.sidebar_conversations(
        user=request.user, project=project, archived=True, limit=500
    )
    context = _chat_context(
        request, membership, project, archived_page=True, archived=list(archived)
    )
    return render(request, "chat/archived.html", context)


@require_POST
@project_view
def folder_create(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    try:
        services.folder_create(
            actor=Actor(user=request.user), project=project, name=request.POST.get("name", "")
        )
    except ServiceError as error:
        messages.error(request, error.message)
    return _back(request, _chat_home_url(project))


@require_POST
@project_view
def folder_rename(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, folder_id: int
) -> HttpResponse:
    folder = selectors.get_folder_or_404(user=request.user, project=project, pk=folder_id)
    try:
        services.folder_rename(folder=folder, name=request.POST.get("name", ""))
    except ServiceError as error:
        messages.error(request, error.message)
    return _back(request, _chat_home_url(project))


@require_POST
@project_view
def folder_delete(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, folder_id: int
) -> HttpResponse:
    folder = selectors.get_folder_or_404(user=request.user, project=project, pk=folder_id)
    services.folder_delete(folder=folder)
    messages.success(
        request,
        _("Deleted the folder “%(name)s”; its chats are still here.") % {"name": folder.name},
    )
    return _back(request, _chat_home_url(project))


# --- personas --------------------------------------------------------------------------------
# Everyone in the project sees them; owners and admins add, change, switch off and delete them.


def _personas_url(project: Project) -> str:
    return reverse("personas", args=[project.organization.slug, project.slug])


def _persona_context(membership: Membership, project: Project, **extra: Any) -> dict[str, Any]:
    return {
        "project": project,
        "organization": project.organization,
        "membership": membership,
        **extra,
    }


@project_view
def persona_list(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    rows = [(p, personas.sampling_preset_of(p)) for p in personas.personas_for(project)]
    return render(request, "chat/personas.html", _persona_context(membership, project, rows=rows))


def _persona_form_page(
    request: AuthenticatedHttpRequest,
    membership: Membership,
    project: Project,
    persona: Persona | None,
) -> HttpResponse:
    """The new and edit pages: what was typed comes back with the refusal next to its field."""
    form = PersonaForm(
        request.POST if request.method == "POST" else None,
        models=selectors.allowed_models(project),
        persona=persona,
        project=project,
    )
    if request.method == "POST" and form.is_valid():
        try:
            if persona is None:
                saved = personas.persona_create(
                    project=project, changes=form.changes(only_changed=False), actor=membership
                )
            else:
                saved = personas.persona_update(
                    persona=persona, changes=form.changes(only_changed=True), actor=membership
                )
        except ServiceError as error:
            form.add_error(error.param if error.param in form.fields else None, error.message)
            if persona is not None:
                persona.refresh_from_db()  # the page names it as it is saved, not as typed
        else:
            messages.success(
                request, _("Saved %(name)s (@%(tag)s).") % {"name": saved.name, "tag": saved.tag}
            )
            return redirect(_personas_url(project))
    return render(
        request,
        "chat/persona_form.html",
        _persona_context(membership, project, form=form, persona=persona),
        status=400 if form.errors else 200,
    )


@project_view
def persona_new(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    require_manager(membership)
    return _persona_form_page(request, membership, project, None)


@project_view
def persona_edit(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, persona_id: int
) -> HttpResponse:
    require_manager(membership)
    persona = personas.get_persona_or_404(project=project, persona_id=persona_id)
    return _persona_form_page(request, membership, project, persona)


@require_POST
@project_view
def persona_set_enabled(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, persona_id: int
) -> HttpResponse:
    require_manager(membership)
    persona = personas.get_persona_or_404(project=project, persona_id=persona_id)
    enabled = request.POST.get("enabled") == "1"
    personas.persona_update(persona=persona, changes={"enabled": enabled}, actor=membership)
    if enabled:
        messages.success(
            request, _("@%(tag)s is on: people can call it again.") % {"tag": persona.tag}
        )
    else:
        messages.success(
            request,
            _("@%(tag)s is off: nobody can call it until it is on.") % {"tag": persona.tag},
        )
    return redirect(_personas_url(project))


@project_view
def persona_delete(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, persona_id: int
) -> HttpResponse:
    require_manager(membership)
    persona = personas.get_persona_or_404(project=project, persona_id=persona_id)
    if request.method == "POST":
        personas.persona_delete(persona=persona, actor=membership)
        messages.success(
            request, _("Deleted %(name)s (@%(tag)s).") % {"name": persona.name, "tag": persona.tag}
        )
        return redirect(_personas_url(project))
    return render(
        request,
        "chat/persona_delete.html",
        _persona_context(
            membership,
            project,
            persona=persona,
            conversation_count=persona.conversations.count(),
            reply_count=persona.messages.count(),
        ),
    )


# --- summaries and the project's chat settings ------------------------------------------------


def _summary_marker(conversation: Conversation, window: list[Message]) -> dict[str, Any]:
    """Where the transcript says "earlier messages are summarized": before the first message
    of the page that the summary does not cover (``at_end``: the page is all summarized)."""
    at, at_end = None, False
    if conversation.summary and conversation.summary_through is not None:
        at = next((m.pk for m in window if m.pk > conversation.summary_through), None)
        at_end = at is None
    return {
        "at": at,
        "at_end": at_end,
        "html": render_markdown(conversation.summary) if conversation.summary else "",
        "error": conversation.summary_error,
        "updated_at": conversation.summary_updated_at,
    }


@require_POST
@project_view
def conversation_summarize(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project, pk: int
) -> HttpResponse:
    """Summarize now: the earlier messages are folded in the background, billed to whoever
    asks (in a room too: like calling @summary)."""
    conversation = selectors.get_conversation_or_404(user=request.user, project=project, pk=pk)
    before = conversation.summary_updated_at
    try:
        summaries.summary_request(actor=Actor(user=request.user), conversation=conversation)
    except ServiceError as error:
        messages.info(request, error.message)
        return redirect(_conversation_url(project, conversation.pk))
    conversation.refresh_from_db(fields=["summary_updated_at", "summary_error"])
    if conversation.summary_updated_at != before:
        messages.success(
            request, _("Summarized: the earlier messages are folded into the summary.")
        )
    elif conversation.summary_error:
        messages.error(
            request, _("The summary failed: %(error)s") % {"error": conversation.summary_error}
        )
    else:
        messages.success(request, _("Summarizing the earlier messages; reload in a moment."))
    return redirect(_conversation_url(project, conversation.pk))


@project_view
def chat_settings(
    request: AuthenticatedHttpRequest, membership: Membership, project: Project
) -> HttpResponse:
    """When long conversations are summarized, and by whom: everyone in the project reads it,
    owners and admins change it."""
    if request.method == "POST":
        require_manager(membership)
    current = summaries.chat_settings_for(project)
    form = ChatSettingsForm(
        request.POST if request.method == "POST" else None,
        personas=Persona.objects.for_project(project).order_by("tag"),
        initial={
            "summarize_after_tokens": current.summarize_after_tokens,
            "summary_persona": current.summary_persona_id,
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            summaries.chat_settings_update(actor=membership, project=project, **form.cleaned_data)
        except ServiceError as error:
            form.add_error(error.param if error.param in form.fields else None, error.message)
        else:
            messages.success(request, _("Chat settings saved."))
            return redirect(
                "chat_settings", org_slug=project.organization.slug, project_slug=project.slug
            )
    persona, model = summaries.describe_writer(project)
    return render(
        request,
        "chat/chat_settings.html",
        {
            "project": project,
            "organization": project.organization,
            "membership": membership,
            "form": form,
            "current": current,
            "writer_persona": persona,
            "writer_model": model,
            "keep_recent": summaries.KEEP_RECENT,
        },
        status=400 if form.errors else 200,
    )
