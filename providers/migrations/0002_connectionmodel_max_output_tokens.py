"""The longest reply each model may write: the reply cap sent upstream is never above it.
Models already listed get OpenAI's published figure where the catalog knows their family."""

from django.db import migrations, models

from providers.llm.catalog import max_output_tokens


def fill_from_catalog(apps, schema_editor):
    ConnectionModel = apps.get_model("providers", "ConnectionModel")
    for model in ConnectionModel.objects.using(schema_editor.connection.alias).filter(
        max_output_tokens__isnull=True
    ):
        limit = max_output_tokens(model.name)
        if limit is not None:
            model.max_output_tokens = limit
            model.save(update_fields=["max_output_tokens"])


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="connectionmodel",
            name="max_output_tokens",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="The longest reply the model may write; empty: what its context "
                "window leaves.",
                null=True,
            ),
        ),
        migrations.RunPython(fill_from_catalog, migrations.RunPython.noop),
    ]
