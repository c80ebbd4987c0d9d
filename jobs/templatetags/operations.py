"""Filters of the operator's page."""

import math

from django import template

register = template.Library()


@register.filter
def age(seconds: float | None) -> str:
    """Seconds as an operator reads them: "4 s", "12 min", "3 h"; "never" for none yet, a dash
    where the source did not say."""
    if seconds is None:
        return "\N{EN DASH}"
    if math.isinf(seconds):
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


@register.filter
def ago(seconds: float | None) -> str:
    """As `age`, for a moment past: "4 s ago", "never"."""
    text = age(seconds)
    return text if seconds is None or math.isinf(seconds) else f"{text} ago"
