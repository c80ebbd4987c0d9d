import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


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
    # What Pillow found in the header; the client's name and type are never trusted.
    source_format = models.CharField(max_length=10)
    source_bytes = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    original_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="media_upload_owner_recent")]

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
