"""Staff views of connections (keys write-only, as on the pages), their models, and the models
each project allows. Global connections (no organization) are kept here, and so is the one
setting only staff may change: whether a model with no price may run (``unpriced_allowed``)."""

from django import forms
from django.contrib import admin

from accounts.signals import AuditedAdmin

from .addresses import AddressRefused
from .crypto import encrypt, key_hint
from .models import ConnectionModel, ProjectModel, ProviderConnection
from .specs import address_policy


class ProviderConnectionForm(forms.ModelForm[ProviderConnection]):
    # Write-only: the stored key is never put back into the page; empty keeps it.
    base_url = forms.URLField(required=False, assume_scheme="https")
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Leave empty to keep the current key.",
    )

    class Meta:
        model = ProviderConnection
        fields = [
            "organization", "project", "kind", "name", "base_url", "openai_organization",
            "openai_project", "timeout", "max_retries",
        ]  # fmt: skip

    def clean_base_url(self) -> str:
        base_url: str = self.cleaned_data["base_url"]
        if base_url:
            try:  # as on the project's pages: every request is checked again anyway
                address_policy().check_url(base_url)
            except AddressRefused as refused:
                raise forms.ValidationError(refused.message) from None
        return base_url

    def save(self, commit: bool = True) -> ProviderConnection:
        connection = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            connection.api_key_encrypted = encrypt(self.cleaned_data["api_key"])
            connection.api_key_hint = key_hint(self.cleaned_data["api_key"])
        if commit:
            connection.save()
        return connection


UNPRICED_HELP = (
    "Let this model run when the price table has no price for it. Calls are then metered "
    "(tokens in the ledger) but cost nothing, and their rows say “unpriced”; budgets cannot "
    "hold an unpriced call, so under any budget it is still refused. Better: add its price "
    "(Billing: Model prices). Without either, calls to it are refused (model_unpriced)."
)


class ConnectionModelForm(forms.ModelForm[ConnectionModel]):
    class Meta:
        model = ConnectionModel
        fields = [
            "connection", "name", "context_window", "max_output_tokens", "supports_vision",
            "supports_tools", "supports_json", "supports_embeddings", "unpriced_allowed",
            "fetched",
        ]  # fmt: skip
        help_texts = {"unpriced_allowed": UNPRICED_HELP}


class ConnectionModelInline(admin.TabularInline[ConnectionModel, ProviderConnection]):
    model = ConnectionModel
    form = ConnectionModelForm
    extra = 0
    fields = [
        "name", "context_window", "max_output_tokens", "supports_vision", "supports_tools",
        "supports_json", "supports_embeddings", "unpriced_allowed", "fetched",
    ]  # fmt: skip


MODEL_AUDIT = {
    "add": "connection_model.added",
    "change": "connection_model.updated",
    "delete": "connection_model.removed",
}


@admin.register(ProviderConnection)
class ProviderConnectionAdmin(AuditedAdmin, admin.ModelAdmin[ProviderConnection]):
    audit_actions = {
        "add": "connection.created",
        "change": "connection.updated",
        "delete": "connection.deleted",
    }
    audit_inlines = {ConnectionModel: MODEL_AUDIT}
    form = ProviderConnectionForm
    list_display = ["name", "kind", "organization", "project", "api_key_hint", "base_url",
                    "models_refreshed_at"]  # fmt: skip
    list_filter = ["kind", ("organization", admin.EmptyFieldListFilter)]
    list_select_related = ["organization", "project"]
    search_fields = ["name", "base_url", "organization__name", "project__name"]
    raw_id_fields = ["organization", "project"]
    readonly_fields = ["api_key_hint", "models_refreshed_at", "created_at", "updated_at"]
    inlines = [ConnectionModelInline]


@admin.register(ConnectionModel)
class ConnectionModelAdmin(AuditedAdmin, admin.ModelAdmin[ConnectionModel]):
    audit_actions = MODEL_AUDIT
    form = ConnectionModelForm
    list_display = ["name", "connection", "context_window", "supports_vision", "supports_tools",
                    "supports_json", "supports_embeddings", "unpriced_allowed"]  # fmt: skip
    list_filter = ["supports_vision", "supports_tools", "supports_json", "supports_embeddings",
                   "unpriced_allowed", "fetched"]  # fmt: skip
    list_select_related = ["connection"]
    search_fields = ["name", "connection__name"]


@admin.register(ProjectModel)
class ProjectModelAdmin(admin.ModelAdmin[ProjectModel]):
    list_display = ["name", "project", "is_default"]
    list_filter = ["is_default"]
    list_select_related = ["project__organization"]
    search_fields = ["name", "project__name", "project__organization__name"]
    raw_id_fields = ["project", "model"]
