"""The notifications pages: the inbox, and the settings (channels per kind, devices). Rendered
in full, so they work without JavaScript; static/js/notifications.js subscribes this browser to
Web Push, and static/js/unread.js keeps the header's unread count current."""

import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from notifications import selectors, services
from notifications.models import Kind

NOTIFICATIONS_PER_PAGE = 20


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def inbox_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if request.POST.get("action") == "read-all":
            services.notifications_read_all(user=request.user)
        else:
            services.notification_read(
                user=request.user, notification_id=_uuid_or_none(request.POST.get("id", ""))
            )
        return redirect("notifications:inbox")
    page = Paginator(selectors.inbox(user=request.user), NOTIFICATIONS_PER_PAGE)
    return render(
        request, "notifications/inbox.html", {"page": page.get_page(request.GET.get("page"))}
    )


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if request.POST.get("action") == "remove-device":
            services.device_delete(
                user=request.user, device_id=_uuid_or_none(request.POST.get("id", ""))
            )
        else:
            # Unchecked boxes are not sent: a kind's box absent means off.
            chosen = {
                kind: services.Channels(
                    push=f"{kind}:push" in request.POST,
                    email=f"{kind}:email" in request.POST or kind in services.EMAIL_ALWAYS,
                )
                for kind in Kind.values
            }
            services.channel_preferences_set(user=request.user, choices=chosen)
        return redirect("notifications:settings")
    channels = services.channel_preferences_of(user=request.user)
    context = {
        "kinds": [
            (kind, label, channels[kind], kind in services.EMAIL_ALWAYS)
            for kind, label in Kind.choices
        ],
        "devices": selectors.devices_of(user=request.user),
        "webpush_key": settings.VAPID_PUBLIC_KEY,
    }
    return render(request, "notifications/settings.html", context)


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
