"""Connections, their models, the project allow-list (to providers) and IdempotentRequest (to
core) leave chat's state; their rows and tables went with them (providers 0001, core 0001)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0006_idempotency_streams_and_people"),
        ("core", "0001_initial"),
        ("providers", "0001_initial"),
        ("billing", "0006_usagerecord_connection_in_providers"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="IdempotentRequest"),
                migrations.DeleteModel(name="ProjectModel"),
                migrations.DeleteModel(name="ConnectionModel"),
                migrations.DeleteModel(name="ProviderConnection"),
            ],
        ),
    ]
