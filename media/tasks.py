"""The image pipeline's tasks: thin wrappers owning retries and failure handling (their queue
comes from CELERY_TASK_ROUTES, by name)."""

from celery import shared_task

from jobs.retry import RetryPolicy
from media import services
from media.images import ImageBroken

# Disk hiccups (a full or remounting volume) are worth retrying; a broken image is not, and
# ImageBroken is not an OSError, so it fails at once.
IO_TRANSIENT = RetryPolicy(transient=(OSError,), max_retries=3)


def _fail_upload(task, error, task_id, args, kwargs, einfo) -> None:
    # Celery calls this once a step failed for good: the user sees why, in words.
    upload_id = kwargs.get("upload_id", args[0] if args else None)
    if upload_id is not None:
        reason = str(error) if isinstance(error, ImageBroken) else "Processing failed; try again."
        services.upload_fail(upload_id=upload_id, reason=reason)


STEP = {
    "idempotent": True,
    "retry_policy": IO_TRANSIENT,
    "on_failure": _fail_upload,
    # A 2048 px variant of a 50 MP image takes a few seconds; a minute means something is stuck.
    "soft_time_limit": 60,
    "time_limit": 90,
}


@shared_task(name="media.start_pipeline", idempotent=True)
def start_pipeline(upload_id: str) -> None:
    services.upload_pipeline_start(upload_id=upload_id)


@shared_task(name="media.normalize", **STEP)
def normalize(upload_id: str) -> None:
    services.upload_normalize(upload_id=upload_id)


# ignore_result=False: the chord counts its header's results to know when to call finalize.
@shared_task(name="media.make_variant", ignore_result=False, **STEP)
def make_variant(upload_id: str, name: str) -> None:
    services.upload_variant_make(upload_id=upload_id, name=name)


@shared_task(name="media.finalize", **STEP)
def finalize(upload_id: str) -> bool:
    return services.upload_finalize(upload_id=upload_id)


@shared_task(name="media.notify", idempotent=True)
def notify(upload_id: str) -> None:
    services.upload_notify(upload_id=upload_id)


@shared_task(name="media.delete_files", idempotent=True, retry_policy=IO_TRANSIENT)
def delete_files(upload_id: str) -> None:
    services.upload_files_delete(upload_id=upload_id)
