"""System checks: upload limits that would fail every upload, or refuse the largest images
forever, fail loudly at start-up instead."""

from django.conf import settings
from django.core.checks import Error, register

from jobs.ratelimit import parse_rate


@register()
def upload_limits_fit_an_upload(app_configs, **kwargs) -> list[Error]:
    errors = []
    for name in ("UPLOAD_RATE_PER_ACCOUNT", "UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT"):
        try:
            parse_rate(getattr(settings, name))
        except ValueError as error:
            errors.append(Error(f"{name}: {error}", id="media.E001"))
    if errors:
        return errors
    uploads, _ = parse_rate(settings.UPLOAD_RATE_PER_ACCOUNT)
    megapixels, _ = parse_rate(settings.UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT)
    if uploads < 1:
        errors.append(Error("UPLOAD_RATE_PER_ACCOUNT must allow one upload.", id="media.E002"))
    if megapixels * 1e6 < settings.UPLOAD_MAX_PIXELS:
        errors.append(
            Error(
                f"UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT ({megapixels:g} MP) must allow one image of "
                f"UPLOAD_MAX_PIXELS ({settings.UPLOAD_MAX_PIXELS / 1e6:g} MP), or images that "
                "large are refused in every window.",
                id="media.E002",
            )
        )
    return errors
