"""The ledger's connection now names providers.ProviderConnection (the same table, renamed by
providers 0001; the database's foreign key already follows it, so only the state changes)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_budget_api_key"),
        ("providers", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usagerecord",
                    name="connection",
                    field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="providers.providerconnection"),
                ),
            ],
        ),
    ]
