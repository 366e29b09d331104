"""Connections, their models and the project allow-list move here from chat without losing a
row: the models are taken over as they stand in the database (state only), their content types
(and so their permissions and admin log) follow them, then their tables are renamed to
providers'. Foreign keys into them follow the renamed tables."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ["providerconnection", "connectionmodel", "projectmodel"]


def content_types_to_providers(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(
        app_label="chat", model__in=MOVED
    ).update(app_label="providers")


def content_types_to_chat(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(
        app_label="providers", model__in=MOVED
    ).update(app_label="chat")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0004_apikey_requests_per_minute_apikey_tokens_per_minute"),
        ("chat", "0006_idempotency_streams_and_people"),
        # Every table with a foreign key into the moved ones exists before they are renamed, so
        # the rename carries those keys along (on a new database as on an old one).
        ("billing", "0005_budget_api_key"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ProviderConnection",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("kind", models.CharField(choices=[("local", "Local model (built in)"), ("openai", "OpenAI"), ("openai_compatible", "OpenAI-compatible server")], max_length=20)),
                        ("name", models.CharField(max_length=100)),
                        ("base_url", models.URLField(blank=True, help_text="For OpenAI-compatible servers.")),
                        ("api_key_encrypted", models.TextField(blank=True, editable=False)),
                        ("api_key_hint", models.CharField(blank=True, editable=False, max_length=20)),
                        ("openai_organization", models.CharField(blank=True, max_length=100)),
                        ("openai_project", models.CharField(blank=True, max_length=100)),
                        ("timeout", models.FloatField(default=60.0, help_text="Seconds to wait between chunks.")),
                        ("max_retries", models.PositiveSmallIntegerField(default=2)),
                        ("models_refreshed_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                        ("organization", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="provider_connections", to="accounts.organization")),
                        ("project", models.ForeignKey(blank=True, help_text="Empty: shared by every project of the organization.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name="provider_connections", to="accounts.project")),
                    ],
                    options={
                        "ordering": ["name", "id"],
                        "db_table": "chat_providerconnection",
                        "constraints": [
                            models.CheckConstraint(condition=models.Q(("project__isnull", True), ("organization__isnull", False), _connector="OR"), name="chat_connection_project_has_org"),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ConnectionModel",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("name", models.CharField(max_length=200)),
                        ("context_window", models.PositiveIntegerField(default=8192)),
                        ("supports_vision", models.BooleanField(default=False)),
                        ("supports_tools", models.BooleanField(default=False)),
                        ("supports_json", models.BooleanField(default=False)),
                        ("fetched", models.BooleanField(default=False, help_text="Listed by the provider itself.")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("connection", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="models", to="providers.providerconnection")),
                    ],
                    options={
                        "ordering": ["name"],
                        "db_table": "chat_connectionmodel",
                        "constraints": [
                            models.UniqueConstraint(fields=("connection", "name"), name="chat_connmodel_unique"),
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ProjectModel",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("name", models.CharField(max_length=200)),
                        ("is_default", models.BooleanField(default=False)),
                        ("model", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="providers.connectionmodel")),
                        ("project", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="allowed_models", to="accounts.project")),
                    ],
                    options={
                        "ordering": ["name"],
                        "db_table": "chat_projectmodel",
                        "constraints": [
                            models.UniqueConstraint(fields=("project", "name"), name="chat_projectmodel_name"),
                            models.UniqueConstraint(condition=models.Q(("is_default", True)), fields=("project",), name="chat_projectmodel_one_default"),
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_types_to_providers, content_types_to_chat),
        migrations.AlterModelTable(name="providerconnection", table=None),
        migrations.AlterModelTable(name="connectionmodel", table=None),
        migrations.AlterModelTable(name="projectmodel", table=None),
    ]
