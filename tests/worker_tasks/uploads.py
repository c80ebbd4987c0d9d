"""What the image pipeline announces, recorded where a test can count it."""

from django.dispatch import receiver

from media.services import upload_ready
from tests.worker_tasks.platform import record


@receiver(upload_ready, dispatch_uid="tests.worker_tasks.uploads.record_announcement")
def record_announcement(sender, upload, **kwargs) -> None:
    # One entry per upload_ready sent: "notify once" is one entry, whatever ran twice.
    record("announced", str(upload.pk))
