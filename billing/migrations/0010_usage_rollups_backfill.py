# Written by hand for the usage rollups of 0009.
"""The daily usage rollups (billing/rollups.py), filled from the ledger already written.

A migration of its own: the unique index the upsert names is created at the end of 0009.

The backfill is its own copy of the rebuild's SQL (``rollups_rebuild``): a migration must keep
working as the app's code moves on. Rows a process of the previous release settles after this
runs are not added: run ``manage.py rebuild_usage_rollups`` once the new release serves.
"""

from django.db import migrations

BATCH = 100_000  # ledger ids per grouped INSERT ... SELECT
DAY = {"sqlite": "date(created_at)", "postgresql": "(created_at AT TIME ZONE 'UTC')::date"}
BACKFILL = """INSERT INTO billing_usagerollup
    (organization_id, day, model, project_id, user_id, api_key_id,
     calls, prompt_tokens, cached_tokens, completion_tokens, cost_units)
SELECT organization_id, {day}, model, project_id, user_id, api_key_id,
    COUNT(*), SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens),
    SUM(CAST(ROUND(cost * 1000000000000) AS bigint))
FROM billing_usagerecord WHERE id BETWEEN %s AND %s
GROUP BY organization_id, {day}, model, project_id, user_id, api_key_id
ON CONFLICT (organization_id, day, model,
    (COALESCE(project_id, 0)), (COALESCE(user_id, 0)), (COALESCE(api_key_id, 0)))
DO UPDATE SET
    calls = billing_usagerollup.calls + excluded.calls,
    prompt_tokens = billing_usagerollup.prompt_tokens + excluded.prompt_tokens,
    cached_tokens = billing_usagerollup.cached_tokens + excluded.cached_tokens,
    completion_tokens = billing_usagerollup.completion_tokens + excluded.completion_tokens,
    cost_units = billing_usagerollup.cost_units + excluded.cost_units"""


def backfill(apps, schema_editor):
    connection = schema_editor.connection
    sql = BACKFILL.format(day=DAY[connection.vendor])
    ids = apps.get_model("billing", "UsageRecord").objects.order_by().values_list("id", flat=True)
    first, last = ids.order_by("id").first(), ids.order_by("-id").first()
    if first is None:
        return
    with connection.cursor() as cursor:
        for start in range(first, last + 1, BATCH):
            cursor.execute(sql, [start, min(start + BATCH - 1, last)])


def empty(apps, schema_editor):
    # Backwards: what backfill wrote goes, so that migrating forwards again counts it once.
    apps.get_model("billing", "UsageRollup").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0009_usage_rollups"),
    ]

    operations = [
        migrations.RunPython(backfill, empty, elidable=True),
    ]
