"""No upload stays unfinished: the sweep resumes, or fails, an upload past its deadline, and a
step run outside its canvas (a retry kept in the outbox, a re-drive) runs the rest itself.

Real Redis, real workers. A test moves a deadline into the past rather than waiting for it.
"""

from datetime import timedelta

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from config.celery import app
from jobs.deadletters import dead_letter_record, dead_letter_redrive
from jobs.models import DeadLetter, OutboxMessage
from jobs.outbox import outbox_relay
from jobs.periodic import periodic_jobs_sync
from media.models import Upload, UploadVariant
from media.services import (
    upload_fail,
    upload_file_path,
    upload_folder,
    upload_normalize,
    upload_variant_make,
    uploads_stalled_sweep,
)
from media.tasks import maintenance_uploads_sweep, make_variant
from tests.media.images_for_tests import encoded, gradient
from tests.media.test_crash_safety import (
    assert_complete_once,
    kill_worker_and_its_pool,
    owner,
    running,
    upload_slow_image,
    wait_until_done,
)
from tests.services import WorkerProcess, eventually
from tests.worker_tasks.platform import recorded

VARIANT_NAMES = ["large", "medium", "small", "thumb"]


def upload_photo(client: Client, *, width: int = 1600, height: int = 1200) -> str:
    content = encoded(gradient(width, height), "JPEG", quality=90)
    response = client.post("/api/v1/uploads", {"file": SimpleUploadedFile("photo.jpg", content)})
    assert response.status_code == 202, response.content
    return response.json()["id"]


def deadline_passed(upload_id: str) -> None:
    Upload.objects.filter(pk=upload_id).update(deadline=timezone.now() - timedelta(seconds=1))


def made(upload_id: str) -> set[str]:
    return set(UploadVariant.objects.filter(upload_id=upload_id).values_list("name", flat=True))


def announced(upload_id: str) -> int:
    """How many times upload_ready was sent for the upload (tests/worker_tasks/uploads.py)."""
    return len(recorded("announced", upload_id))


def starts(upload_id: str) -> int:
    """Processing starts published for the upload: its first (normalize itself for an image it
    processes alone, start_pipeline for the others), and one start_pipeline per resume."""
    rows = OutboxMessage.objects.filter(task_name__in=["media.start_pipeline", "media.normalize"])
    return sum(row.kwargs == {"upload_id": upload_id} for row in rows)


def reaches(client: Client, upload_id: str, status: str) -> dict:
    """The upload as the API shows it, once its status is `status`."""

    def answer() -> dict | None:
        body = client.get(f"/api/v1/uploads/{upload_id}").json()
        return body if body["status"] == status else None

    return eventually(answer, timeout=60, interval=0.2)


def test_the_sweep_leaves_a_progressing_upload_and_a_finished_one_alone(celery_worker):
    # given an upload on its way through the pipeline, its deadline ahead
    client = owner()
    upload_id = upload_photo(client)
    # when the sweep runs meanwhile
    uploads_stalled_sweep()
    # then the upload was not resumed, and ends ready
    body = wait_until_done(client, upload_id, timeout=60)
    assert body["status"] == "ready", body
    assert Upload.objects.get(pk=upload_id).resumes == 0
    # and its step, which made every variant and finalized it, published nothing more: one
    # start, announced once
    eventually(lambda: announced(upload_id) == 1)
    assert starts(upload_id) == 1
    # when the sweep runs past its deadline
    deadline_passed(upload_id)
    assert uploads_stalled_sweep() == 0
    # then a finished upload is not run again
    assert starts(upload_id) == 1 and Upload.objects.get(pk=upload_id).resumes == 0
    assert announced(upload_id) == 1


def last_variant_running(worker: WorkerProcess, upload_id: str) -> bool:
    done = made(upload_id)
    active = running(worker, "media.make_variant", upload_id)
    return len(done) == 3 and active is not None and active["kwargs"]["name"] not in done


def test_a_chord_callback_lost_in_a_redis_outage_is_published_by_the_sweep(
    no_worker_running, start_worker, redis_server
):
    # given an upload whose last variant task is running, on a one-process media worker
    first = start_worker(queues=["media"], concurrency=1)
    client = owner()
    upload_id = upload_slow_image(client)
    eventually(lambda: last_variant_running(first, upload_id), timeout=120, interval=0.1)
    # when Redis stops before that task can count itself into the chord, and comes back empty
    redis_server.stop()
    eventually(lambda: len(made(upload_id)) == 4, timeout=60)
    redis_server.start()
    # (a worker of its own: kombu's Redis transport can crash the first one's main process as it
    # closes the lost connection with a message in flight, celery/kombu#582)
    kill_worker_and_its_pool(first)
    second = start_worker(queues=["media"])
    # then the chord never calls finalize: every variant is made, and the upload still processing
    upload = Upload.objects.get(pk=upload_id)
    assert upload.status == Upload.Status.PROCESSING, (
        upload.error,
        first.logfile.read_text(errors="replace")[-6000:],
    )
    # and the sweep leaves it alone while its deadline is ahead
    assert uploads_stalled_sweep() == 0
    # when its deadline passes and the sweep runs
    deadline_passed(upload_id)
    assert uploads_stalled_sweep() == 1
    # then the upload ends ready, announced once, resumed once
    body = wait_until_done(client, upload_id, timeout=60)
    assert_complete_once(body, upload_id)
    assert Upload.objects.get(pk=upload_id).resumes == 1
    eventually(lambda: announced(upload_id) == 1)
    # and only what was missing ran: finalize, no step before it
    log = second.logfile.read_text(errors="replace")
    assert "task=media.finalize" in log
    assert "task=media.normalize" not in log and "task=media.make_variant" not in log


def test_a_step_whose_result_cannot_be_stored_leaves_its_upload_to_finish_not_failed(
    no_worker_running, start_worker, redis_server
):
    # given a normalized 12 MP upload whose other messages are gone
    client = owner()
    upload_id = upload_photo(client, width=4000, height=3000)
    upload_normalize(upload_id=upload_id)
    app.control.purge()
    # and a worker whose result backend fails the first store of a success (a Redis blip as a
    # step ends), which Celery then reports as the task's failure, calling its on_failure
    backend = f"tests.worker_tasks.backends:FirstSuccessStoreFailsBackend+{redis_server.url}"
    worker = start_worker(
        queues=["media"], concurrency=1, extra_env={"CELERY_RESULT_BACKEND": backend}
    )
    # when a variant's step runs, its work done and recorded
    make_variant.delay(upload_id=upload_id, name="thumb")
    eventually(lambda: "thumb" in made(upload_id), timeout=30)
    eventually(lambda: "raised unexpected" in worker.logfile.read_text(errors="replace"))
    # then the upload is not failed for a result nobody needed: its pipeline carries on
    body = reaches(client, upload_id, "ready")
    assert body["error"] == "" and sorted(body["variants"]) == VARIANT_NAMES
    assert not DeadLetter.objects.filter(task_name="media.make_variant").exists()


def test_a_step_whose_retry_waited_in_the_outbox_still_runs_the_rest_of_the_pipeline(
    no_worker_running, start_worker, redis_server
):
    # given normalize running for an upload
    first = start_worker(queues=["media"], concurrency=1)
    client = owner()
    upload_id = upload_slow_image(client)
    eventually(lambda: running(first, "media.normalize", upload_id), timeout=60, interval=0.1)
    # when the broker stops, and the disk fails under normalize (a file where its folder was), so
    # that its retry cannot be published
    redis_server.stop()
    folder = upload_folder(upload_id)
    aside = folder.with_name(f"{folder.name}.aside")
    folder.rename(aside)
    folder.write_bytes(b"")
    # then the retry waits in the outbox, with the upload it is for
    retry = eventually(
        lambda: OutboxMessage.objects.filter(task_name="media.normalize").first(), timeout=60
    )
    assert (retry.kwargs, retry.retries) == ({"upload_id": upload_id}, 1)
    # when the disk and the broker are back, and the relay publishes the retry
    folder.unlink()
    aside.rename(folder)
    redis_server.start()
    kill_worker_and_its_pool(first)  # celery/kombu#582, as above
    start_worker(queues=["media"])
    eventually(lambda: outbox_relay() or None, timeout=15)
    # then normalize, run outside its canvas, publishes the rest: the upload ends ready, with no
    # sweep, announced once
    body = wait_until_done(client, upload_id, timeout=120)
    assert_complete_once(body, upload_id)
    assert Upload.objects.get(pk=upload_id).resumes == 0
    eventually(lambda: announced(upload_id) == 1)


def test_a_redriven_normalize_resumes_its_failed_upload_to_ready(no_worker_running, start_worker):
    # given an upload whose normalize failed for good: its worker found no uploaded file (the
    # volume was not mounted), so the upload failed, with the reason
    client = owner()
    upload_id = upload_photo(client)
    source = upload_folder(upload_id) / "source.upload"
    aside = source.with_name("source.aside")
    source.rename(aside)
    start_worker()
    letter = eventually(lambda: DeadLetter.objects.filter(task_name="media.normalize").first())
    failed = wait_until_done(client, upload_id, timeout=30)
    assert failed["status"] == "failed" and "could not be decoded" in failed["error"]
    # when the file is back and a person re-drives the dead letter
    aside.rename(source)
    dead_letter_redrive(dead_letter_id=letter.pk, by="ops@example.com")
    # then normalize runs and the rest of the pipeline after it: ready, the old reason gone
    body = reaches(client, upload_id, "ready")
    assert body["progress"] == 100 and body["error"] == ""
    assert sorted(body["variants"]) == VARIANT_NAMES
    eventually(lambda: announced(upload_id) == 1)


def test_a_redriven_variant_resumes_the_rest_of_the_pipeline(no_worker_running, start_worker):
    # given a normalized 24 MP photo (its variants all left to their own tasks), whose variant
    # tasks all failed for good: the original was gone from the disk they read
    client = owner()
    upload_id = upload_photo(client, width=6000, height=4000)
    upload_normalize(upload_id=upload_id)
    assert made(upload_id) == set()
    original = upload_file_path(upload_id, "original")
    aside = original.with_suffix(".aside")
    original.rename(aside)
    start_worker()
    eventually(
        lambda: DeadLetter.objects.filter(task_name="media.make_variant").count() == 4, timeout=60
    )
    eventually(lambda: Upload.objects.get(pk=upload_id).status == Upload.Status.FAILED)
    # when the file is back and a person re-drives one of them, thumb's
    aside.rename(original)
    letters = DeadLetter.objects.filter(task_name="media.make_variant")
    thumb = next(
        letter for letter in letters if letter.kwargs == {"upload_id": upload_id, "name": "thumb"}
    )
    dead_letter_redrive(dead_letter_id=thumb.pk, by="ops@example.com")
    # then thumb is made, and the variants whose letters nobody re-drove, and finalize: ready
    body = reaches(client, upload_id, "ready")
    assert sorted(body["variants"]) == VARIANT_NAMES and body["error"] == ""
    eventually(lambda: announced(upload_id) == 1)


def test_a_redriven_finalize_publishes_the_variant_it_lacks_and_ends_ready(
    no_worker_running, start_worker
):
    # given an upload with three of its four variants, whose finalize failed for good (its
    # database unreachable, say) and which was failed for it
    client = owner()
    upload_id = upload_photo(client, width=4000, height=3000)  # normalize makes large
    upload_normalize(upload_id=upload_id)
    upload_variant_make(upload_id=upload_id, name="small")
    upload_variant_make(upload_id=upload_id, name="medium")
    assert made(upload_id) == {"small", "medium", "large"}
    error = OperationalError("could not connect to server")
    letter = dead_letter_record(task_name="media.finalize", task_id="finalize-1", args=[],
                                kwargs={"upload_id": upload_id}, queue="media", error=error,
                                attempts=1)  # fmt: skip
    upload_fail(upload_id=upload_id, reason="Processing failed; try again.")
    # and a worker, which finds the upload's queued pipeline start and, the upload failed, publishes
    # nothing
    worker = start_worker()
    eventually(lambda: "media.start_pipeline" in worker.logfile.read_text(errors="replace"))
    # when a person re-drives finalize
    dead_letter_redrive(dead_letter_id=letter.pk, by="ops@example.com")
    # then finalize, finding thumb missing, publishes it and itself again, counted as a resume:
    # ready, announced once
    body = reaches(client, upload_id, "ready")
    assert sorted(body["variants"]) == VARIANT_NAMES and body["error"] == ""
    assert Upload.objects.get(pk=upload_id).resumes == 1
    eventually(lambda: announced(upload_id) == 1)


def test_an_upload_that_keeps_stalling_is_failed_with_a_reason_after_its_resumes(
    no_worker_running, start_worker, settings
):
    # given an upload whose pipeline never runs (no worker consumes the media queue), and a
    # worker for the maintenance queue, where the periodic sweep runs
    start_worker(queues=["maintenance"])
    client = owner()
    upload_id = upload_photo(client)
    # when its deadline passes, time after time, and the sweep runs each time
    for resume in range(1, settings.UPLOAD_MAX_RESUMES + 1):
        deadline_passed(upload_id)
        maintenance_uploads_sweep.delay()
        # then it is resumed: its pipeline published again, counted, given a new deadline
        eventually(lambda: Upload.objects.get(pk=upload_id).resumes == resume)  # noqa: B023
        upload = Upload.objects.get(pk=upload_id)
        assert upload.status == Upload.Status.QUEUED and upload.deadline > timezone.now()
        assert starts(upload_id) == 1 + resume
    # and once resumed UPLOAD_MAX_RESUMES (3) times, it is failed with a reason a person can act on
    deadline_passed(upload_id)
    maintenance_uploads_sweep.delay()
    body = reaches(client, upload_id, "failed")
    assert body["error"] == (
        "Processing stalled, and resuming it 3 times did not finish it. "
        "Upload the image again; if that fails too, contact support."
    )
    assert starts(upload_id) == 1 + settings.UPLOAD_MAX_RESUMES
    # and a failed upload is final: the sweep leaves it alone
    assert uploads_stalled_sweep() == 0


def test_the_sweep_is_declared_in_code_every_minute_on_the_maintenance_queue(db):
    # when the periodic jobs declared in code are synced (every deploy does it)
    periodic_jobs_sync()
    # then beat runs the sweep every minute, expiring before the next run, on the maintenance
    # queue
    row = PeriodicTask.objects.get(name="code:media.uploads_sweep")
    assert row.task == maintenance_uploads_sweep.name
    assert (row.interval.every, row.interval.period) == (1, "minutes")
    assert 0 < row.expire_seconds < 60
    assert app.amqp.router.route({}, row.task)["queue"].name == "maintenance"
