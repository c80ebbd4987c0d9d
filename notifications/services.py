"""Notifications: one call writes a person's inbox row and queues its push and email deliveries.

    notification_send(user=user, kind=Kind.REPORT_READY, title="Your report is ready",
                      body="...", data={"report_id": "..."}, email=NotificationEmail(...))

In the caller's transaction: the inbox row, one `PushDelivery` per enabled device (a status row
and its task, durably enqueued) when the person has push on for that kind, and the email (the
accounts email path: status rows, retries) when they have email on. A person always has the
inbox; push and email per kind are theirs to choose (`channel_preferences_set`), except the
email of what concerns their account's deletion, which always goes.

A push delivery is sent at most once: its row moves queued -> sending -> sent | failed |
unknown, and a delivery found `sending` (its worker died mid-send) is not sent again but marked
unknown, for a person to judge. What the push service answers decides the rest
(notifications/providers.py): gone (404, 410) disables the device for good; busy (429, 5xx) is
retried no sooner than its Retry-After; anything else fails at once, as a dead letter.
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.emails import email_delivery_create
from accounts.models import EmailDelivery, User
from jobs.brokers import queue_drained
from jobs.lost_messages import interrupted_rows_mark_unknown, lost_after, lost_rows_requeue
from jobs.outbox import enqueue
from jobs.retry import OutcomeUnknown, PermanentError, TransientError
from notifications import providers
from notifications.endpoints import EndpointRefused, webpush_endpoint_checked
from notifications.models import ChannelPreference, Device, Kind, Notification, PushDelivery

logger = logging.getLogger(__name__)


class NotificationRefused(ValueError):
    """A preference or device that cannot be stored; the message says why, `field` of what."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Channels:
    push: bool
    email: bool


# What a person gets until they choose: the inbox always; push when something they started has
# finished; email for a report (it carries the PDF) and for their account's deletion.
DEFAULT_CHANNELS = {
    Kind.UPLOAD_READY: Channels(push=True, email=False),
    Kind.UPLOAD_FAILED: Channels(push=True, email=False),
    Kind.REPORT_READY: Channels(push=True, email=True),
    Kind.DELETION_SCHEDULED: Channels(push=False, email=True),
    Kind.DELETION_CANCELLED: Channels(push=False, email=True),
    Kind.ANNOUNCEMENT: Channels(push=False, email=False),
}
# Kinds whose email cannot be switched off: a deletion someone else started in the person's
# name (a stolen session) must reach their mailbox, whatever was chosen in that session.
EMAIL_ALWAYS = frozenset({Kind.DELETION_SCHEDULED, Kind.DELETION_CANCELLED})


@dataclass(frozen=True)
class NotificationEmail:
    """The email a kind sends when its email channel is on: an accounts email kind with its
    context (and attachment). Without one, the generic notification email."""

    kind: str
    context: dict
    attachment: str = ""


# --- preferences ----------------------------------------------------------------------------


def channel_preferences_of(*, user: User) -> dict[str, Channels]:
    chosen = {
        choice.kind: Channels(push=choice.push, email=choice.email)
        for choice in ChannelPreference.objects.filter(user=user)
    }
    return {kind: chosen.get(kind, DEFAULT_CHANNELS[kind]) for kind in Kind.values}


def channel_preferences_set(*, user: User, choices: dict[str, Channels]) -> dict[str, Channels]:
    """Store the person's choices for the kinds given (others keep theirs)."""
    for kind, channels in choices.items():
        if kind not in Kind.values:
            raise NotificationRefused(f"{kind!r} is not a kind of notification.", field=kind)
        if kind in EMAIL_ALWAYS and not channels.email:
            raise NotificationRefused(
                f"The email about {Kind(kind).label} always goes: it is how you learn of it if "
                "someone else did it.",
                field=kind,
            )
    with transaction.atomic():
        for kind, channels in choices.items():
            ChannelPreference.objects.update_or_create(
                user=user, kind=kind, defaults={"push": channels.push, "email": channels.email}
            )
    return channel_preferences_of(user=user)


# --- sending --------------------------------------------------------------------------------


def notification_send(
    *,
    user: User,
    kind: str,
    title: str,
    body: str = "",
    data: dict | None = None,
    email: NotificationEmail | None = None,
    once_key: str = "",
) -> Notification:
    """Write the inbox row and queue its deliveries, in the caller's transaction.

    With a `once_key`, the person gets it at most once: a second call with the same key raises
    IntegrityError and leaves nothing behind (everything here is in one savepoint)."""
    from notifications import tasks  # the task module imports this one

    with transaction.atomic():
        notification = Notification.objects.create(
            user=user,
            kind=kind,
            title=title[:200],
            body=body[:2000],
            data=data or {},
            once_key=once_key,
        )
        channels = channel_preferences_of(user=user)[kind]
        if channels.push:
            # Locked until the caller commits: on PostgreSQL a delivery's foreign key is checked
            # at commit, and a device deleted meanwhile (removed, taken over by another
            # account, forgotten on a password reset) would fail the caller's whole transaction
            # there. A deletion now waits for the commit, and then deletes the deliveries too.
            devices = Device.objects.select_for_update(no_key=True).filter(
                user=user, disabled_at__isnull=True
            )
            for device in devices:
                delivery = PushDelivery.objects.create(notification=notification, device=device)
                enqueue(tasks.send_push, push_delivery_id=delivery.pk, platform=device.platform)
        if channels.email or kind in EMAIL_ALWAYS:
            chosen = email or NotificationEmail(
                kind=EmailDelivery.Kind.NOTIFICATION, context={"notification": notification}
            )
            email_delivery_create(
                kind=chosen.kind,
                recipient=user.email,
                user=user,
                context=chosen.context,
                attachment=chosen.attachment,
            )
    return notification


def push_delivery_send(*, delivery_id: int) -> None:
    """Push one queued (or failed, re-driven) delivery to its device. Calling it again for one
    sent, or that may have been, does nothing.

    Raises TransientError (the task retries), PermanentError or OutcomeUnknown (the task
    dead-letters)."""
    with transaction.atomic():
        delivery = (
            PushDelivery.objects.select_for_update()
            .select_related("notification", "device")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.status not in (
            PushDelivery.Status.QUEUED,
            PushDelivery.Status.SENDING,
            # Not delivered: a person re-drove its dead letter, and it goes again.
            PushDelivery.Status.FAILED,
        ):
            return  # erased, sent, or may have been sent (unknown): never again by itself
        if delivery.status == PushDelivery.Status.SENDING:
            # A worker died between starting this send and recording its answer: the service
            # may have it. Sending again could show it twice.
            _delivery_settle(delivery, PushDelivery.Status.UNKNOWN, "interrupted while sending")
            return
        if delivery.device.disabled_at is not None:
            _delivery_settle(delivery, PushDelivery.Status.FAILED, "the device is disabled")
            return
        # What is left of the push's day, counted from when the notification was made: a push
        # a day late is news no more (re-driven or not), and one sent late expires on time.
        ttl = providers.PUSH_TTL_SECONDS - int(
            (timezone.now() - delivery.notification.created_at).total_seconds()
        )
        if ttl <= 0:
            _delivery_settle(delivery, PushDelivery.Status.FAILED, PUSH_EXPIRED)
            return
        PushDelivery.objects.filter(pk=delivery.pk).update(
            status=PushDelivery.Status.SENDING,
            attempts=delivery.attempts + 1,
            updated_at=timezone.now(),
        )
    try:
        providers.push_send(delivery.device, payload=push_payload(delivery.notification), ttl=ttl)
    except providers.DeviceGone as gone:
        with transaction.atomic():
            Device.objects.filter(pk=delivery.device_id, disabled_at__isnull=True).update(
                disabled_at=timezone.now(), disabled_reason=str(gone)[:200]
            )
            _delivery_settle(delivery, PushDelivery.Status.FAILED, str(gone))
        logger.info("device %s disabled: %s", delivery.device_id, gone)
        return
    except TransientError as error:
        _delivery_settle(delivery, PushDelivery.Status.QUEUED, str(error))
        raise
    except OutcomeUnknown as error:
        _delivery_settle(delivery, PushDelivery.Status.UNKNOWN, str(error))
        raise
    except (PermanentError, EndpointRefused) as error:
        _delivery_settle(delivery, PushDelivery.Status.FAILED, str(error))
        raise PermanentError(str(error)) from error
    PushDelivery.objects.filter(pk=delivery.pk).update(
        status=PushDelivery.Status.SENT,
        last_error="",
        sent_at=timezone.now(),
        updated_at=timezone.now(),
    )


def push_delivery_give_up(*, delivery_id: int, reason: str) -> None:
    """The task failed for good: a queued delivery failed; one stopped mid-send may have gone."""
    for was, now in (
        (PushDelivery.Status.QUEUED, PushDelivery.Status.FAILED),
        (PushDelivery.Status.SENDING, PushDelivery.Status.UNKNOWN),
    ):
        PushDelivery.objects.filter(pk=delivery_id, status=was).update(
            status=now, last_error=reason[:2000], updated_at=timezone.now()
        )


def _delivery_settle(delivery: PushDelivery, status: str, error: str) -> None:
    PushDelivery.objects.filter(pk=delivery.pk).update(
        status=status, last_error=error[:2000], updated_at=timezone.now()
    )


PUSH_EXPIRED = "not sent within its time to live"

# A Web Push message holds at most 4,096 bytes once encrypted (RFC 8291: 3,993 of payload).
# Title and body are cut to these many bytes of UTF-8 (an emoji takes four), so the message
# stays under whatever they hold: the inbox has the whole text. `data` is the product's own, a
# few ids.
PUSH_TITLE_BYTES = 300
PUSH_BODY_BYTES = 1000


def push_payload(notification: Notification) -> bytes:
    return json.dumps(
        {
            "id": str(notification.pk),
            "kind": notification.kind,
            "title": _cut(notification.title, PUSH_TITLE_BYTES),
            "body": _cut(notification.body, PUSH_BODY_BYTES),
            "data": notification.data,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def _cut(text: str, most_bytes: int) -> str:
    """The text, cut to at most `most_bytes` of UTF-8 between two characters."""
    return text.encode()[:most_bytes].decode(errors="ignore")


# --- the inbox ------------------------------------------------------------------------------


def notification_read(*, user: User, notification_id) -> bool:
    """Mark one of the person's notifications read; False if they have none with that id."""
    mine = Notification.objects.filter(user=user, pk=notification_id)
    if mine.filter(read_at__isnull=True).update(read_at=timezone.now()):
        return True
    return mine.exists()


def notifications_read_all(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )


# --- devices --------------------------------------------------------------------------------


# Devices an account keeps: each notification is pushed to every one of them, and the push
# services' limits are shared by every account, so one account with thousands of registrations
# would slow everyone's pushes. Past it, registering one forgets the oldest (browsers and apps
# register again whenever they start, and a person rarely has ten).
DEVICES_PER_ACCOUNT = 10


def device_register(
    *, user: User, platform: str, address: str, keys: dict | None = None
) -> tuple[Device, bool]:
    """Store a device (or find the same one stored before, enabled again); the device and
    whether it is new. Refuses what the platform's rule refuses (NotificationRefused)."""
    if not providers.push_configured(platform):
        label = Device.Platform(platform).label
        raise NotificationRefused(f"{label} is not configured on this server.")
    try:
        if platform == Device.Platform.WEBPUSH:
            address = webpush_endpoint_checked(address)
            providers.webpush_keys_checked(keys or {})
        else:
            address, keys = providers.device_token_checked(platform, address), {}
    except (EndpointRefused, ValueError) as refusal:
        raise NotificationRefused(str(refusal)) from refusal
    with transaction.atomic():
        try:
            with transaction.atomic():
                device = Device.objects.create(
                    user=user, platform=platform, address=address, keys=keys
                )
            made = True
        except IntegrityError:
            device = Device.objects.get(user=user, platform=platform, address=address)
            Device.objects.filter(pk=device.pk).update(
                keys=keys, disabled_at=None, disabled_reason=""
            )
            device.refresh_from_db()
            made = False
        beyond = Device.objects.filter(user=user).values_list("pk", flat=True)[DEVICES_PER_ACCOUNT:]
        Device.objects.filter(pk__in=list(beyond)).delete()
        # A browser's subscription (an app's token) belongs to whoever registered it last: on a
        # shared device the next person to log in and subscribe must not get the last one's
        # notifications.
        Device.objects.filter(platform=platform, address=address).exclude(user=user).delete()
    return device, made


def device_delete(*, user: User, device_id) -> bool:
    return Device.objects.filter(user=user, pk=device_id).delete()[0] > 0


# --- upkeep ---------------------------------------------------------------------------------

# Where push sends wait (CELERY_TASK_ROUTES: "notifications.*").
PUSH_QUEUE = "notifications"
# Deliveries one sweep queues again or expires: a run stays short, a backlog drains over runs.
SWEEP_BATCH = 1000
# Rows one pruning run (hourly) deletes, a slice of PRUNE_SLICE at a time: short transactions,
# and up to 1.2 million a day, above what a busy day writes (an announcement to every account is
# one row each), so a backlog (a first run on an old database) drains over a few runs.
PRUNE_SLICE = 2000
PRUNE_SLICES_PER_RUN = 25
# A device its service said is gone is kept this long, for the admin to see why pushes stopped.
DISABLED_DEVICE_DAYS = 30


def push_lost_after() -> timedelta:
    """How long a queued delivery's row may stay unmoved while its message still lives."""
    from notifications import tasks  # the task module imports this one

    return lost_after(tasks.send_push)


def push_deliveries_lost(*, now: datetime | None = None) -> QuerySet[PushDelivery]:
    """Deliveries queued, or being sent, and unmoved for longer than a live message waits: what
    the sweep acts on (while the queue is empty), and /metrics counts."""
    return PushDelivery.objects.filter(
        status__in=(PushDelivery.Status.QUEUED, PushDelivery.Status.SENDING),
        updated_at__lt=(now or timezone.now()) - push_lost_after(),
    )


def push_deliveries_sweep(*, now: datetime | None = None) -> int:
    """Queue again the push deliveries whose message was lost, and fail those too old to be
    news; returns how many it acted on.

    A delivery still queued push_lost_after() after its row last moved is queued again, but only
    while the notifications queue holds no message: a broadcast waiting its turn is not lost.
    One still `sending` by then had its worker die mid-send and its message lost: the service
    may have it, so it becomes `unknown`, for a person, as a redelivered message would make it.
    Queuing one whose message still exists costs a spare run, which finds it sent and returns
    (push_delivery_send sends at most once). One not sent within the push's time to live is
    failed: the service would drop it by then anyway, and the inbox has it (its message, if it
    still comes, finds it too old and sends nothing)."""
    from notifications import tasks  # the task module imports this one

    now = now or timezone.now()
    too_old = PushDelivery.objects.filter(
        status=PushDelivery.Status.QUEUED,
        created_at__lt=now - timedelta(seconds=providers.PUSH_TTL_SECONDS),
    ).values_list("pk", flat=True)[:SWEEP_BATCH]
    expired = PushDelivery.objects.filter(
        pk__in=list(too_old), status=PushDelivery.Status.QUEUED
    ).update(status=PushDelivery.Status.FAILED, last_error=PUSH_EXPIRED, updated_at=now)
    lost = list(
        push_deliveries_lost(now=now)
        .order_by("updated_at")
        .values_list("pk", "updated_at", "device__platform", "status")[:SWEEP_BATCH]
    )
    if not lost or not queue_drained(PUSH_QUEUE):
        return expired
    sending = PushDelivery.Status.SENDING
    interrupted = interrupted_rows_mark_unknown(
        PushDelivery.objects.filter(status=sending),
        [(pk, updated_at) for pk, updated_at, _, status in lost if status == sending],
        now=now,
        status=PushDelivery.Status.UNKNOWN,
        last_error="interrupted while sending, and its message lost; may have been delivered",
    )
    queued_again = lost_rows_requeue(
        PushDelivery.objects.filter(status=PushDelivery.Status.QUEUED),
        [
            (pk, updated_at, platform)
            for pk, updated_at, platform, status in lost
            if status != sending
        ],
        now=now,
        requeue=lambda delivery_id, platform: enqueue(
            tasks.send_push, push_delivery_id=delivery_id, platform=platform
        ),
    )
    logger.warning(
        "push sweep: %d delivery(ies) had lost their message, %d queued again, %d unknown",
        queued_again + len(interrupted),
        queued_again,
        len(interrupted),
    )
    return expired + queued_again + len(interrupted)


def notifications_prune(*, now: datetime | None = None) -> int:
    """Delete notifications older than NOTIFICATION_RETENTION_DAYS (their push deliveries with
    them) and devices disabled more than DISABLED_DEVICE_DAYS ago; returns how many
    notifications it deleted."""
    now = now or timezone.now()
    old_ones = Notification.objects.filter(
        created_at__lt=now - timedelta(days=settings.NOTIFICATION_RETENTION_DAYS)
    ).order_by()  # in no order: each slice walks the index, and sorts nothing
    deleted = 0
    for _ in range(PRUNE_SLICES_PER_RUN):
        old = list(old_ones.values_list("pk", flat=True)[:PRUNE_SLICE])
        if not old:
            break
        deleted += (
            Notification.objects.filter(pk__in=old).delete()[1].get(Notification._meta.label, 0)
        )
    Device.objects.filter(disabled_at__lt=now - timedelta(days=DISABLED_DEVICE_DAYS)).delete()
    return deleted
