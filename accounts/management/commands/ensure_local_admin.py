"""Create (once) the development admin account and print how to log in.

`make run` calls it so a newcomer can open /admin/ at once. The password is random per checkout
and kept in var/local-admin.txt, never a well-known default.
"""

import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User

LOCAL_ADMIN_EMAIL = "admin@localhost"


class Command(BaseCommand):
    help = "Create the local development admin (DEBUG only) and print its credentials."

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG:
            raise CommandError("Refusing to create a development admin with DEBUG off.")
        credentials_file = Path(settings.VAR_DIR) / "local-admin.txt"
        user = User.objects.filter(email=LOCAL_ADMIN_EMAIL).first()
        if user is None or not credentials_file.exists():
            password = secrets.token_urlsafe(12)
            if user is None:
                user = User.objects.create_superuser(LOCAL_ADMIN_EMAIL, password)
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
            credentials_file.parent.mkdir(parents=True, exist_ok=True)
            credentials_file.write_text(f"{LOCAL_ADMIN_EMAIL} {password}\n")
            credentials_file.chmod(0o600)
        email, password = credentials_file.read_text().split()
        self.stdout.write(f"admin login: {email}  password: {password}")
