"""What an account's erasure erases of the notifications app (the registry: accounts/erasure.py)."""

from accounts.erasure import ErasureArea, Policy, erasure_area_register
from notifications.models import (
    Announcement,
    ChannelPreference,
    Device,
    Notification,
    PushDelivery,
)

# A push's task names its delivery by `push_delivery_id` (not `delivery_id`, which names an
# email's: an erasure matches a task's arguments by name, and the two ids are both integers).
erasure_area_register(
    ErasureArea(
        name="notifications.PushDelivery",
        model=PushDelivery,
        rows=lambda user: PushDelivery.objects.filter(notification__user=user),
        task_argument="push_delivery_id",
    )
)
erasure_area_register(
    ErasureArea(
        name="notifications.Notification",
        model=Notification,
        rows=lambda user: Notification.objects.filter(user=user),
    )
)
erasure_area_register(
    ErasureArea(
        name="notifications.Device",
        model=Device,
        rows=lambda user: Device.objects.filter(user=user),
    )
)
erasure_area_register(
    ErasureArea(
        name="notifications.ChannelPreference",
        model=ChannelPreference,
        rows=lambda user: ChannelPreference.objects.filter(user=user),
    )
)
erasure_area_register(
    ErasureArea(
        name="notifications.Announcement",
        model=Announcement,
        rows=lambda user: Announcement.objects.filter(created_by=user),
        policy=Policy.UNLINKED,
        reason="what staff sent everyone is the service's record; only who wrote it is the "
        "person's, and that link is nulled",
    )
)
