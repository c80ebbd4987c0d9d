import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

from django.conf import settings  # noqa: E402  (after the settings module is chosen)

# Refused here, where the web starts, not in settings: workers and beat serve no client and need
# no proxy list. Behind an undeclared proxy every client would share the proxy's address, and so
# one per-IP abuse limit: 30 signups an hour from anyone would close signup for everyone.
if not settings.DEBUG and not settings.TRUSTED_PROXIES_DECLARED:
    raise ImproperlyConfigured(
        "Set TRUSTED_PROXIES to the addresses or networks of the reverse proxies in front of the "
        "web (for example 10.0.0.0/8), or to 'none' if clients connect to it directly."
    )
