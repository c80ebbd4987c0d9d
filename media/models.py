import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


def processing_deadline() -> datetime:
    """When an upload that records no progress until then counts as stalled: the periodic sweep
    (media.services.uploads_stalled_sweep) resumes it, or fails it."""
    return timezone.now() + timedelta(seconds=settings.UPLOAD_PROGRESS_DEADLINE_SECONDS)


class Upload(models.Model):
    """One uploaded image and the state of its processing, which the API and pages read.

    The id is a random UUID: it appears in URLs, so it must not be guessable or countable.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        PROCESSING = "processing", "processing"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    # The file name the person's client gave: a label shown back to them (escaped, in pages and
    # reports), never a path, and never trusted for what the file is.
    original_name = models.CharField(max_length=255, blank=True)
    # What Pillow found in the header; the client's name and type are never trusted.
    source_format = models.CharField(max_length=10)
    source_bytes = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    original_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # Moved forward by every step that records progress; past it, an upload still queued or
    # processing has lost its pipeline (a message the broker lost, a canvas cut short).
    deadline = models.DateTimeField(default=processing_deadline)
    # Times the sweep published the rest of the pipeline; past UPLOAD_MAX_RESUMES it fails it.
    resumes = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="media_upload_owner_recent"),
            # The sweep's question: which unfinished uploads are past their deadline?
            models.Index(
                fields=["deadline"],
                condition=models.Q(status__in=["queued", "processing"]),
                name="media_upload_unfinished_due",
            ),
        ]

    def __str__(self) -> str:
        return f"upload {self.pk} ({self.status})"


class UploadVariant(models.Model):
    """One resized copy. Written by its own task (or by normalize); unique per upload and name,
    so a step that runs twice updates its row instead of adding one."""

    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=20)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["upload", "name"], name="media_variant_once_per_upload")
        ]

    def __str__(self) -> str:
        return f"{self.name} of {self.upload_id}"
