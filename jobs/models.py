import uuid

from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """A task to publish, written in the same transaction as the change that asked for it.

    The row is the durable intent: if publishing right after commit fails (broker down, process
    killed), the relay publishes it later. Its id is the Celery task id, so a message published
    twice is recognisably the same task.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        PUBLISHED = "published", "published"
        # Publishing this row failed JOBS_OUTBOX_MAX_PUBLISH_ATTEMPTS times for a reason of its
        # own (not the broker being down): it is a dead letter now, for a person to act on.
        UNPUBLISHABLE = "unpublishable", "unpublishable"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_name = models.CharField(max_length=200)
    kwargs = models.JSONField(default=dict)
    queue = models.CharField(max_length=50, blank=True)
    # A task's retry that the worker could not publish waits here: it keeps its task's id (the
    # row's own id otherwise) and its retry count.
    task_id = models.CharField(max_length=255, blank=True)
    retries = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=13, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    # Not published before this instant: a delay too long for a broker countdown.
    release_at = models.DateTimeField(default=timezone.now)
    # Whoever publishes holds the row until then; an expired claim means its publisher died.
    claimed_until = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    publish_attempts = models.PositiveIntegerField(default=0)
    # Of those, the failures that were this row's own (the broker answered, but not for it).
    row_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Rows of one ordering key run one after the other, in `ordering_position` order
    # (docs/ordering.md); blank for the unordered rest. Only ordered rows are ever marked
    # finished: the next row of their key waits for exactly that.
    ordering_key = models.CharField(max_length=200, blank=True)
    ordering_position = models.PositiveBigIntegerField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Two rows in one place of a key would make "the head of the key" ambiguous.
            models.UniqueConstraint(
                fields=["ordering_key", "ordering_position"],
                condition=~models.Q(ordering_key=""),
                name="jobs_outbox_one_row_per_ordering_position",
            ),
        ]
        indexes = [
            # The relay's question: which pending rows are due?
            models.Index(
                fields=["release_at"],
                condition=models.Q(status="pending"),
                name="jobs_outbox_pending_due",
            ),
            models.Index(fields=["status", "published_at"], name="jobs_outbox_published"),
            # Ordering's questions, asked per task: is anything of this key unfinished, which is
            # its head, does an earlier row hold this one up? Finished rows, most of a busy
            # key's until they are pruned, stay out of it.
            models.Index(
                fields=["ordering_key", "ordering_position"],
                condition=~models.Q(ordering_key="") & models.Q(finished_at__isnull=True),
                name="jobs_outbox_order_unfinished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} ({self.status})"

    @property
    def celery_task_id(self) -> str:
        return self.task_id or str(self.id)


class DeadLetter(models.Model):
    """A task that will not succeed by itself: retries exhausted, a permanent error, or a
    message that killed its worker every time. Kept for a person to re-drive or discard."""

    class Status(models.TextChoices):
        DEAD = "dead", "dead"
        REDRIVEN = "redriven", "re-driven"
        DISCARDED = "discarded", "discarded"

    task_name = models.CharField(max_length=200, db_index=True)
    task_id = models.CharField(max_length=255, unique=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    queue = models.CharField(max_length=50, blank=True)
    exception_class = models.CharField(max_length=200, db_index=True)
    exception_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DEAD)
    redriven_at = models.DateTimeField(null=True, blank=True)
    redrive_count = models.PositiveIntegerField(default=0)
    resolved_by = models.CharField(max_length=254, blank=True)

    class Meta:
        ordering = ["-last_failed_at"]

    def __str__(self) -> str:
        return f"{self.task_name} {self.exception_class} ({self.status})"


class IdempotencyKey(models.Model):
    """Proof that an effect identified by `key` happened. The unique constraint, not a lock,
    is what makes a second delivery (concurrent or after a crash) a no-op."""

    key = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return self.key
