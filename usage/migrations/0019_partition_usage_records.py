"""The usage ledger partitioned by month of created_at on PostgreSQL (usage.partitions).

The table is rebuilt as a partitioned one with the same columns, defaults and
checks, its rows copied into monthly partitions, its indexes recreated under
their own names; the primary key becomes (id, created_at), as a partitioned
table's unique constraints must hold its partition key. SQLite (embedded mode)
keeps one table.
"""

import django.db.models.deletion
from django.db import migrations, models

OLD = "usage_usagerecord_unpartitioned"


def partition(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    from usage import partitions

    run = schema_editor.execute
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'usage_usagerecord' AND indexname NOT IN "
                       "(SELECT conname FROM pg_constraint WHERE conrelid = 'usage_usagerecord'::regclass)")
        indexes = [row[0] for row in cursor.fetchall()]
        run(f"ALTER TABLE usage_usagerecord RENAME TO {OLD}")
        run(f"CREATE TABLE usage_usagerecord (LIKE {OLD} INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING CONSTRAINTS) PARTITION BY RANGE (created_at)")
        cursor.execute(f"SELECT min(created_at), max(created_at), max(id) FROM {OLD}")  # noqa: S608  # nosec B608: a constant
        first, last, top = cursor.fetchone()
        partitions.create_default()
        partitions.ensure(first=first, last=last)
        run(f"INSERT INTO usage_usagerecord SELECT * FROM {OLD}")  # noqa: S608  # nosec B608: a constant
        if top:
            cursor.execute("SELECT setval(pg_get_serial_sequence('usage_usagerecord', 'id'), %s)", [top])
        run(f"DROP TABLE {OLD}")
    run("ALTER TABLE usage_usagerecord ADD PRIMARY KEY (id, created_at)")
    run("ALTER TABLE usage_usagerecord ADD CONSTRAINT usage_record_once UNIQUE (request_id, created_at)")
    for index in indexes:  # read before the rename: they name usage_usagerecord, now the partitioned table
        run(index)


class Migration(migrations.Migration):

    dependencies = [
        ('keys', '0003_key_rotation'),
        ('providers', '0010_deployment_mode_moderation'),
        ('tenants', '0007_alter_tenant_retention_days'),
        ('usage', '0018_usagerecord_batch_id'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usagerecord',
            name='deployment',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.deployment'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='provider',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.provider'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='request_id',
            field=models.CharField(help_text="The gateway's own id for the call.", max_length=100),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='tenant',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='tenants.tenant'),
        ),
        migrations.AddConstraint(
            model_name='usagerecord',
            constraint=models.UniqueConstraint(fields=('request_id', 'created_at'), name='usage_record_once'),
        ),
        # Not reversible on PostgreSQL: a partitioned table cannot take back a unique request_id alone.
        migrations.RunPython(partition, migrations.RunPython.noop, elidable=False),
    ]
