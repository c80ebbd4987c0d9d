import uuid

from django.conf import settings
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
    # The request that wrote the row (jobs/request_ids.py): its task carries the id whenever it
    # is published, so the worker's lines name the request.
    # db_default: rows written by the release before this one (a rolling deploy) need no value.
    request_id = models.CharField(max_length=128, blank=True, default="", db_default="")
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
        indexes = [
            # The admin's list, newest first, and an erasure's question: which failed since it
            # began?
            models.Index(fields=["last_failed_at"], name="jobs_deadletter_last_failed"),
            # /metrics counts them by status on every scrape; re-driven and discarded ones are
            # kept, so the table only grows.
            models.Index(fields=["status"], name="jobs_deadletter_status"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.exception_class} ({self.status})"


class IdempotencyKey(models.Model):
    """Proof that an effect identified by `key` happened. The unique constraint, not a lock,
    is what makes a second delivery (concurrent or after a crash) a no-op."""

    key = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return self.key


class Batch(models.Model):
    """A large fan-out (thousands of items) counted in the database: its items are split into
    BatchChunk rows, one message each, and the chunk that completes the count enqueues the
    callbacks, exactly once (jobs/batches.py)."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        # Every item is accounted for and some failed for good; re-driving their chunks' dead
        # letters can still turn it into succeeded.
        FAILED = "failed", "failed"

    kind = models.CharField(max_length=100, db_index=True)
    # Who the work is for, when anyone: a feature's API shows its owner the progress. A plain
    # foreign key, not a generic one, keeps the database's integrity checks; SET_NULL because a
    # batch may outlive its owner (an account erasure's batch deletes the very user it serves,
    # and its receipt still has to go out).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.RUNNING)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Task names, called with batch_id= and callback_kwargs once every item is accounted for.
    on_success = models.CharField(max_length=200, blank=True)
    on_complete = models.CharField(max_length=200, blank=True)
    callback_kwargs = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "batches"
        indexes = [
            # The sweep's question: which batches are not finished yet?
            models.Index(
                fields=["created_at"],
                condition=models.Q(status="running"),
                name="jobs_batch_running",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def progress(self) -> int:
        """Percent of the items accounted for (done or failed for good), 0-100."""
        if not self.total:
            return 100
        return (self.done + self.failed) * 100 // self.total


class BatchChunk(models.Model):
    """A slice of a batch's items, run by one message of `jobs.batch_chunk_run`. The row is the
    durable record: a message lost on the way is published again by the sweep."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    items = models.JSONField()
    # len(items), so counting never loads the items themselves.
    size = models.PositiveIntegerField()
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # The chunk's lease: the sweep publishes a pending chunk again once both its last publish and
    # its last start are older than the lease (jobs/batches.py, CHUNK_LEASE).
    published_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "index"], name="jobs_batchchunk_unique_index")
        ]
        indexes = [
            # The sweep's question: which chunks are pending, oldest publish first?
            models.Index(
                fields=["published_at"],
                condition=models.Q(status="pending"),
                name="jobs_batchchunk_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"chunk {self.index} of batch {self.batch_id} ({self.status})"
