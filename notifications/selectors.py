from django.db.models import QuerySet

from notifications.models import Device, Notification


def inbox(*, user) -> QuerySet[Notification]:
    """The person's notifications, newest first."""
    return Notification.objects.filter(user=user)


def unread_count(*, user) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def devices_of(*, user) -> QuerySet[Device]:
    return Device.objects.filter(user=user)
