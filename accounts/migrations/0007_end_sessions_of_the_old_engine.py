"""Sessions moved to `accounts.AccountSession` (SESSION_ENGINE = "accounts.sessions"). Those in
Django's own table are no longer read, and hold their account's id in their data, where no
erasure would find them: they go. Everyone logged in is logged out once, at this deploy."""

from django.db import migrations


def old_sessions_delete(apps, schema_editor):
    apps.get_model("sessions", "Session").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_account_deletion"),
        ("sessions", "0001_initial"),
    ]

    operations = [migrations.RunPython(old_sessions_delete, migrations.RunPython.noop)]
