from django.conf import settings
from django.core.checks import Error, register

from notifications.models import Device


@register()
def push_services_have_rate_limits(app_configs, **kwargs) -> list[Error]:
    # A push books its service's slot first (jobs/ratelimit.py): without a limit for it, every
    # push to that service would fail in the worker, each a dead letter.
    return [
        Error(
            f"JOBS_RATE_LIMITS has no limit for {platform!r}, which every push to a "
            f"{label} device books first",
            hint=f"add {platform}=50/s (the default), or the limit the service grants you",
            id="notifications.E001",
        )
        for platform, label in Device.Platform.choices
        if platform not in settings.JOBS_RATE_LIMITS
    ]
