from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from notifications.models import Announcement, Device, Notification


def inbox(*, user) -> QuerySet[Notification]:
    """The person's notifications, newest first."""
    return Notification.objects.filter(user=user)


def unread_count(*, user) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def devices_of(*, user) -> QuerySet[Device]:
    return Device.objects.filter(user=user)


def announcement_sent_lately(*, title: str, body: str, within: timedelta) -> Announcement | None:
    """The same announcement sent less than `within` ago, if any: a form submitted twice."""
    return (
        Announcement.objects.filter(title=title, body=body, created_at__gte=timezone.now() - within)
        .order_by("-created_at")
        .first()
    )
