from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from jobs.batches import batch_chunks_redrive
from jobs.deadletters import DeadLetterNotActionable, dead_letter_discard, dead_letter_redrive
from jobs.models import Batch, BatchChunk, DeadLetter, OutboxMessage
from jobs.operations import operations_overview
from jobs.selectors import ordered_message_of_task, ordering_messages_held_up


def _holding_up(message: OutboxMessage | None) -> str:
    """What an unfinished ordered row holds up: the tasks of its key that wait for it."""
    if message is None:
        return ""
    return f"{ordering_messages_held_up(message=message)} later task(s) of {message.ordering_key}"


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = [
        "task_name", "exception_class", "attempts", "status", "last_failed_at", "redrive_count",
        "holds_up",
    ]  # fmt: skip
    list_filter = ["status", "task_name", "exception_class"]
    search_fields = ["task_name", "task_id", "exception_message"]
    date_hierarchy = "last_failed_at"
    actions = ["redrive", "discard"]
    readonly_fields = [field.name for field in DeadLetter._meta.fields] + ["holds_up"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # dead letters come from failed tasks, never from a form

    @admin.display(description="holds up")
    def holds_up(self, letter: DeadLetter) -> str:
        # Only a dead letter still to decide holds its key up; the others' tasks moved on.
        if letter.status != DeadLetter.Status.DEAD:
            return ""
        return _holding_up(ordered_message_of_task(task_id=letter.task_id))

    @admin.action(description="Re-drive: run the selected tasks again", permissions=["change"])
    def redrive(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._act(request, queryset, dead_letter_redrive, "re-driven")

    @admin.action(description="Discard the selected dead letters", permissions=["change"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        self._act(request, queryset, dead_letter_discard, "discarded")

    def _act(self, request, queryset, action, done: str) -> None:
        succeeded, skipped = 0, []
        for letter_id in queryset.values_list("pk", flat=True):
            try:
                action(dead_letter_id=letter_id, by=request.user.get_username())
                succeeded += 1
            except DeadLetterNotActionable as refusal:
                skipped.append(str(refusal))
        if succeeded:
            self.message_user(request, f"{succeeded} dead letter(s) {done}.", messages.SUCCESS)
        for reason in skipped:
            self.message_user(request, reason, messages.WARNING)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = [
        "task_name", "status", "ordering_key", "created_at", "release_at", "finished_at",
        "publish_attempts", "holds_up",
    ]  # fmt: skip
    list_filter = ["status", "task_name"]
    search_fields = ["id", "task_name", "ordering_key"]
    readonly_fields = [field.name for field in OutboxMessage._meta.fields] + ["holds_up"]

    @admin.display(description="holds up")
    def holds_up(self, message: OutboxMessage) -> str:
        if not message.ordering_key or message.finished_at is not None:
            return ""
        return _holding_up(message)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = [
        "id", "kind", "owner", "status", "progress_percent", "total", "done", "failed",
        "created_at", "finished_at",
    ]  # fmt: skip
    list_filter = ["status", "kind"]
    search_fields = ["kind", "owner__email"]
    date_hierarchy = "created_at"
    actions = ["redrive_failed_chunks"]
    readonly_fields = [field.name for field in Batch._meta.fields] + ["progress_percent", "chunks"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # batches come from the features that start them

    @admin.display(description="progress")
    def progress_percent(self, batch: Batch) -> str:
        return f"{batch.progress} %"

    @admin.display(description="chunks")
    def chunks(self, batch: Batch) -> str:
        # A link, not an inline: a batch of 100,000 items has hundreds of chunks.
        url = reverse("admin:jobs_batchchunk_changelist") + f"?batch__id__exact={batch.pk}"
        return format_html('<a href="{}">the chunks of this batch</a>', url)

    @admin.action(
        description="Re-drive the failed chunks of the selected batches", permissions=["change"]
    )
    def redrive_failed_chunks(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        outcome = batch_chunks_redrive(
            batch_ids=list(queryset.values_list("pk", flat=True)), by=request.user.get_username()
        )
        if outcome.redriven:
            self.message_user(request, f"{outcome.redriven} chunk(s) re-driven.", messages.SUCCESS)
        for reason in outcome.refused:
            self.message_user(request, reason, messages.WARNING)


@admin.register(BatchChunk)
class BatchChunkAdmin(admin.ModelAdmin):
    list_display = ["batch", "index", "status", "size", "attempts", "started_at", "finished_at"]
    list_filter = ["status", "batch__kind"]
    list_select_related = ["batch"]
    readonly_fields = [field.name for field in BatchChunk._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # read-only: a chunk changes only through the batch services


# django-celery-beat's schedule, whose actions (run now, enable, disable, toggle) it offers to
# anyone who may see the list: here only to those who may change the rows, as our own actions.
admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class GuardedPeriodicTaskAdmin(PeriodicTaskAdmin):
    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        if self.has_change_permission(request):
            return actions
        # Django filters its own delete action by the delete permission already.
        return {name: action for name, action in actions.items() if name == "delete_selected"}


OPERATIONS_PERMISSION = "jobs.view_deadletter"


def operations_page(request: HttpRequest) -> TemplateResponse:
    """The operator's page: queues, workers, beat, outbox, dead letters, stuck jobs, batches
    (jobs/operations.py). Staff only, through the admin's own login (config/urls.py), and of
    them those who may see dead letters: the page names what failed and links to them."""
    if not request.user.has_perm(OPERATIONS_PERMISSION):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        # The whole width for the tables: the list of models is one click away, on Home.
        "is_nav_sidebar_enabled": False,
        "overview": operations_overview(),
        "canary_max_age": settings.JOBS_CANARY_MAX_AGE_SECONDS,
        "beat_max_age": settings.BEAT_HEARTBEAT_MAX_AGE,
        "flower_url": settings.FLOWER_URL,
    }
    return TemplateResponse(request, "admin/jobs/operations.html", context)
