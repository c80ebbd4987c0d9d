from django.contrib.auth.hashers import make_password
from django.db import migrations


def unverified_passwords_unusable(apps, schema_editor):
    """Before this release a repeat signup of an unverified address kept the first signup's
    password, and a verification link did not cover it: an account signed up by someone other
    than the address's owner would open with that stranger's password once verified. Nobody has
    proven they own these addresses, so no password set so far is trusted: whoever owns one signs
    up again (which sets the password) or resets it through the emailed link."""
    User = apps.get_model("accounts", "User")
    for user in User.objects.filter(email_verified_at__isnull=True).only("pk"):
        User.objects.filter(pk=user.pk).update(password=make_password(None))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_delivery_outcome_unknown"),
    ]

    operations = [
        migrations.RunPython(unverified_passwords_unusable, migrations.RunPython.noop),
    ]
