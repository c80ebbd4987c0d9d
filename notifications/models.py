import uuid

from django.conf import settings
from django.db import models
from django.utils.timezone import now


class Kind(models.TextChoices):
    UPLOAD_READY = "upload_ready", "upload ready"
    UPLOAD_FAILED = "upload_failed", "upload failed"
    REPORT_READY = "report_ready", "report ready"
    DELETION_SCHEDULED = "deletion_scheduled", "account deletion scheduled"
    DELETION_CANCELLED = "deletion_cancelled", "account deletion cancelled"
    ANNOUNCEMENT = "announcement", "announcement"


class Notification(models.Model):
    """One message in a person's inbox. Always written, whatever their channels; push and email
    deliveries of it are rows of their own.

    The id is a random UUID: it appears in URLs, so it must not be guessable or countable."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=30, choices=Kind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(max_length=2000, blank=True)
    # Small JSON the client acts on ({"upload_id": ...}); sent in the push payload too.
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now)
    read_at = models.DateTimeField(null=True, blank=True)
    # What a person gets at most once, whoever asks twice ("announcement:7" when a broadcast's
    # chunk runs again); empty for the rest.
    once_key = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "once_key"],
                condition=~models.Q(once_key=""),
                name="notifications_once",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notifications_inbox"),
            # The badge's question, asked on every page: how many unread?
            models.Index(
                fields=["user"],
                condition=models.Q(read_at__isnull=True),
                name="notifications_unread",
            ),
            # Pruning's question: which are past the retention?
            models.Index(fields=["created_at"], name="notifications_by_age"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user_id}"


class ChannelPreference(models.Model):
    """A person's choice of channels for one kind; no row means the kind's defaults
    (notifications/kinds.py)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_channels"
    )
    kind = models.CharField(max_length=30, choices=Kind.choices)
    push = models.BooleanField()
    email = models.BooleanField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "kind"], name="notifications_one_choice"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: push {self.push}, email {self.email}"


class Device(models.Model):
    """Somewhere a person's push notifications go: a browser's Web Push subscription, or an app's
    FCM or APNs token. Disabled, never to be tried again, once its service says it is gone."""

    class Platform(models.TextChoices):
        WEBPUSH = "webpush", "Web Push"
        FCM = "fcm", "Firebase Cloud Messaging"
        APNS = "apns", "Apple Push Notification service"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="devices"
    )
    platform = models.CharField(max_length=10, choices=Platform.choices)
    # Web Push: the subscription's endpoint URL, checked against WEBPUSH_ALLOWED_HOSTS when it
    # is stored and again when it is called; FCM and APNs: the device token.
    address = models.CharField(max_length=2048)
    # Web Push: the subscription's keys (p256dh, auth), base64url, for the payload's encryption.
    keys = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Registering the same subscription again (every page load may) finds this row.
            models.UniqueConstraint(
                fields=["user", "platform", "address"], name="notifications_one_device"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.platform} device {self.pk}"


class PushDelivery(models.Model):
    """One notification pushed to one device: at most one row, hence at most one send, per
    pair. What a person or the admin reads to see what happened."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        SENDING = "sending", "sending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        # The service may have it: its reply was lost, or a worker died mid-send. Never sent
        # again by itself.
        UNKNOWN = "unknown", "may have been delivered"

    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, related_name="push_deliveries"
    )
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["notification", "device"], name="notifications_push_once"
            ),
        ]
        indexes = [
            # The sweep's question, every few minutes: which queued ones have not moved?
            models.Index(
                fields=["updated_at"],
                condition=models.Q(status="queued"),
                name="notifications_push_queued",
            ),
        ]

    def __str__(self) -> str:
        return f"push of {self.notification_id} to {self.device_id} ({self.status})"


class Announcement(models.Model):
    """A message from staff to every active account, fanned out as a batch (jobs/batches.py):
    each person gets it once in their inbox, and by push and email as they chose for
    announcements."""

    title = models.CharField(max_length=200)
    body = models.TextField(max_length=2000, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=now)
    # The fan-out: its counts are the progress, in people.
    batch = models.OneToOneField(
        "jobs.Batch", null=True, on_delete=models.SET_NULL, related_name="announcement"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title
