"""IdempotentRequest moves here from chat without losing a row: the model is taken over as it
stands in the database (state only), its content type (and so its permissions and admin log)
follows it, then its table is renamed to core's."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ["idempotentrequest"]


def content_types_to_core(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(
        app_label="chat", model__in=MOVED
    ).update(app_label="core")


def content_types_to_chat(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(
        app_label="core", model__in=MOVED
    ).update(app_label="chat")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0004_apikey_requests_per_minute_apikey_tokens_per_minute"),
        ("chat", "0006_idempotency_streams_and_people"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="IdempotentRequest",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("key", models.CharField(max_length=255)),
                        ("body_digest", models.CharField(max_length=64)),
                        ("status_code", models.PositiveSmallIntegerField(blank=True, null=True)),
                        ("response", models.JSONField(blank=True, null=True)),
                        ("stream_body", models.TextField(blank=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("api_key", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+", to="accounts.apikey")),
                        ("user", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "chat_idempotentrequest",
                        "constraints": [
                            models.UniqueConstraint(condition=models.Q(("api_key__isnull", False)), fields=("api_key", "key"), name="chat_idempotency_unique"),
                            models.UniqueConstraint(condition=models.Q(("user__isnull", False)), fields=("user", "key"), name="chat_idempotency_user_unique"),
                            models.CheckConstraint(condition=models.Q(models.Q(("api_key__isnull", False), ("user__isnull", True)), models.Q(("api_key__isnull", True), ("user__isnull", False)), _connector="OR"), name="chat_idempotency_one_caller"),
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_types_to_core, content_types_to_chat),
        migrations.AlterModelTable(name="idempotentrequest", table=None),
    ]
