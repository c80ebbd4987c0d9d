"""The image pipeline's tasks: thin wrappers owning retries, failure handling and what a step
run outside its canvas does next (their queue comes from CELERY_TASK_ROUTES, by name)."""

from datetime import timedelta

from celery import Task, shared_task

from jobs.base import failed_for_good
from jobs.periodic import PeriodicJob, periodic_job_register
from jobs.retry import RetryPolicy
from media import services
from media.images import ImageBroken

# Disk hiccups (a full or remounting volume) are worth retrying; a broken image is not, and
# ImageBroken is not an OSError, so it fails at once.
IO_TRANSIENT = RetryPolicy(transient=(OSError,), max_retries=3)


def _fail_upload(task, error, task_id, args, kwargs, einfo) -> None:
    # Once a step failed for good, the user sees why, in words. Not when only its result could
    # not be stored (a chord member's, with Redis down): its work is done and recorded, and the
    # sweep finishes the upload if the chord cannot.
    upload_id = kwargs.get("upload_id")
    if upload_id is not None and failed_for_good(task, error):
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


def _resume_if_outside_canvas(task: Task, upload_id: str) -> None:
    # In its canvas, a step's message carries what follows it: normalize the rest of the chain, a
    # variant its chord. Run on its own (its retry waited in the outbox while the broker was down,
    # or a person re-drove its dead letter), it carries nothing, and the pipeline would end here.
    if not (task.request.chain or task.request.chord):
        services.upload_pipeline_resume(upload_id=upload_id)


@shared_task(name="media.normalize", bind=True, **STEP)
def normalize(self: Task, upload_id: str) -> None:
    if not services.upload_normalize(upload_id=upload_id):
        _resume_if_outside_canvas(self, upload_id)


# ignore_result=False: the chord counts its header's results to know when to call finalize.
@shared_task(name="media.make_variant", bind=True, ignore_result=False, **STEP)
def make_variant(self: Task, upload_id: str, name: str) -> None:
    services.upload_variant_make(upload_id=upload_id, name=name)
    _resume_if_outside_canvas(self, upload_id)


@shared_task(name="media.finalize", **STEP)
def finalize(upload_id: str) -> bool:
    return services.upload_finalize(upload_id=upload_id)


@shared_task(name="media.notify", idempotent=True)
def notify(upload_id: str) -> None:
    services.upload_notify(upload_id=upload_id)


@shared_task(name="media.delete_files", idempotent=True, retry_policy=IO_TRANSIENT)
def delete_files(upload_id: str) -> None:
    services.upload_files_delete(upload_id=upload_id)


@shared_task(name="media.maintenance_uploads_sweep", idempotent=True)
def maintenance_uploads_sweep() -> int:
    return services.uploads_stalled_sweep()


periodic_job_register(
    PeriodicJob(
        name="media.uploads_sweep",
        task=maintenance_uploads_sweep.name,
        # Every minute: a stalled upload waits at most a minute past its deadline, and a run with
        # nothing stalled is one query on a partial index of the unfinished uploads.
        schedule=timedelta(minutes=1),
        # A run still queued when the next is due would only repeat it.
        expires_seconds=54,
    )
)
