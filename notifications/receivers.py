"""Signals of other apps (media's uploads) turned into notifications (connected in apps.py)."""

from notifications.models import Kind
from notifications.services import notification_send


def upload_ready_notify(sender, *, upload, **kwargs) -> None:
    notification_send(
        user=upload.owner,
        kind=Kind.UPLOAD_READY,
        title=f"{_name_of(upload)} is ready",
        body="Every size of it has been made.",
        data={"upload_id": str(upload.pk)},
    )


def upload_failed_notify(sender, *, upload, reason: str, **kwargs) -> None:
    notification_send(
        user=upload.owner,
        kind=Kind.UPLOAD_FAILED,
        title=f"{_name_of(upload)} could not be processed",
        body=reason,
        data={"upload_id": str(upload.pk)},
    )


def _name_of(upload) -> str:
    return upload.original_name or "Your upload"
