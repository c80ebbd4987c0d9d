"""Make a VAPID key pair for Web Push, printed as the two environment variables to set.

    python manage.py vapid_keys >> .env

Keep the private key secret, and keep it: browsers subscribed with the public key; a new pair
makes every stored subscription useless (the push services refuse our signature for them).
"""

from django.core.management.base import BaseCommand

from notifications.vapid import vapid_keys_generate


class Command(BaseCommand):
    help = "Print a new VAPID key pair as VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY lines."

    def handle(self, *args, **options) -> None:
        keys = vapid_keys_generate()
        self.stdout.write(f"VAPID_PUBLIC_KEY={keys.public_key}")
        self.stdout.write(f"VAPID_PRIVATE_KEY={keys.private_key}")
