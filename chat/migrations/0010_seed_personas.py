"""Give every existing project the shipped personas (new projects get them when made)."""

from django.db import migrations


def seed(apps, schema_editor):
    from chat.personas import PRESETS, _preset_fields

    Project = apps.get_model("accounts", "Project")
    Persona = apps.get_model("chat", "Persona")
    for project in Project.objects.all().iterator():
        taken = set(Persona.objects.filter(project=project).values_list("tag", flat=True))
        Persona.objects.bulk_create(
            [
                Persona(project=project, tag=preset.tag, **_preset_fields(preset))
                for preset in PRESETS
                if preset.tag not in taken
            ]
        )


class Migration(migrations.Migration):
    dependencies = [("chat", "0009_personas_rooms_summaries")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
