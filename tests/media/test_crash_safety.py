"""The image pipeline survives processes dying under it: a pool child, or a whole worker.

Each test uploads a 48 MP RGBA PNG (tests/media/images_for_tests.slow_png): every step takes
seconds on a 2-core machine, time enough to find the process running a step and SIGKILL it.
"""

import multiprocessing
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.services import api_token_create
from config.celery import app
from media.images import image_normalize
from media.models import Upload, UploadVariant
from media.services import upload_folder
from tests.media.images_for_tests import slow_png
from tests.services import WorkerProcess, eventually

NAMES = ["original", "thumb", "small", "medium", "large"]
# A worker restarted after a crash, tuned so lost messages come back within seconds: Redis
# hands an unacknowledged message out again once it is older than the visibility timeout.
VISIBILITY_TIMEOUT = 5
SHORT_TIMEOUTS = {
    "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    "JOBS_MAX_BROKER_COUNTDOWN_SECONDS": "2",
    "JOBS_RETRY_MAX_SECONDS": "2",
    "CELERY_TASK_TIME_LIMIT": "4",
    "CELERY_TASK_SOFT_TIME_LIMIT": "3",
}


def owner() -> Client:
    user = get_user_model().objects.create_user(
        "maker@example.com", "correct horse battery", email_verified_at="2026-01-01T00:00Z"
    )
    return Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})


def upload_slow_image(client: Client) -> str:
    response = client.post("/api/v1/uploads", {"file": SimpleUploadedFile("big.png", slow_png())})
    assert response.status_code == 202, response.content
    return response.json()["id"]


def running(worker: WorkerProcess, task_name: str, upload_id: str) -> dict | None:
    """The active request of `task_name` for this upload in `worker` (with `worker_pid`, the
    pool process running it), or None."""
    replies = app.control.inspect(destination=[worker.name], timeout=1.0).active() or {}
    for request in replies.get(worker.name, []):
        if request["name"] == task_name and request["kwargs"].get("upload_id") == upload_id:
            return request
    return None


def writing(upload_id: str, name: str) -> bool:
    """A step is in the middle of writing `name` (its temporary file exists, not yet renamed)."""
    folder = upload_folder(upload_id)
    suffix = ".png"  # the original of an RGBA image, and so every variant, is a PNG
    return folder.exists() and any(
        path.name.endswith(f"{suffix}.partial") for path in folder.iterdir()
    ) and not (folder / f"{name}{suffix}").exists()  # fmt: skip


def wait_until_done(client: Client, upload_id: str, timeout: float) -> dict:
    return eventually(
        lambda: (
            (body := client.get(f"/api/v1/uploads/{upload_id}").json())["status"]
            in ("ready", "failed")
            and body
        ),
        timeout=timeout,
        interval=0.2,
    )


def assert_complete_once(body: dict, upload_id: str) -> None:
    """Ready, and each file made exactly once: one row and one file per variant name."""
    assert body["status"] == "ready", body
    assert body["progress"] == 100 and body["error"] == ""
    assert sorted(body["variants"]) == sorted(NAMES[1:])
    variants = list(UploadVariant.objects.filter(upload_id=upload_id).values_list("name"))
    assert sorted(name for (name,) in variants) == sorted(NAMES[1:])
    files = [path.name for path in upload_folder(upload_id).iterdir()]
    for name in NAMES:
        assert [f for f in files if f.startswith(f"{name}.")] == [f"{name}.png"], files
    assert "source.upload" not in files  # the raw upload (metadata and all) was removed


def outcomes(worker: WorkerProcess, task_id: str) -> list[tuple[str, str]]:
    log = worker.logfile.read_text(errors="replace")
    return re.findall(rf"id={task_id} attempt=(\d+) \S+ outcome=(\w+)", log)


def received(worker: WorkerProcess, request: dict) -> int:
    """How many times the worker has received this message (a redelivery is received again)."""
    log = worker.logfile.read_text(errors="replace")
    return log.count(f"Task {request['name']}[{request['id']}] received")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie runs nothing: it waits for its parent to reap it


# --- a pool process dies --------------------------------------------------------------------


# Where a step is killed: normalize while its output is half written to the temporary file; a
# variant half a second into decoding and resizing, which take seconds (it writes at the end).
KILL_POINTS = pytest.mark.parametrize(
    ("step", "caught"),
    [
        ("media.normalize", lambda upload_id, request: writing(upload_id, "original")),
        (
            "media.make_variant",
            lambda upload_id, request: time.time() - request["time_start"] > 0.5,
        ),
    ],
    ids=["mid-normalize-write", "mid-resize"],
)


def step_caught(worker: WorkerProcess, upload_id: str, step: str, caught) -> dict:
    """Wait for `step` of the upload to be running in `worker` at the point `caught` names."""
    return eventually(
        lambda: (
            (active := running(worker, step, upload_id)) and caught(upload_id, active) and active
        ),
        timeout=60,
        interval=0.1,
    )


@KILL_POINTS
def test_a_pool_process_killed_mid_step_still_ends_ready_with_every_file_once(
    celery_worker, step: str, caught: Callable[[str, dict], bool]
):
    # given an upload whose `step` is running in a pool process of the worker
    client = owner()
    upload_id = upload_slow_image(client)
    request = step_caught(celery_worker, upload_id, step, caught)
    # when that process is SIGKILLed (an out-of-memory kill, say)
    os.kill(request["worker_pid"], signal.SIGKILL)
    # then the worker saw it die mid-task, and the message was handed out again
    eventually(lambda: f"pid:{request['worker_pid']} exited with 'signal 9 (SIGKILL)'"
               in celery_worker.logfile.read_text(errors="replace"))  # fmt: skip
    eventually(lambda: received(celery_worker, request) == 2)
    # and the upload still ends ready, each file made exactly once
    body = wait_until_done(client, upload_id, timeout=120)
    assert_complete_once(body, upload_id)
    # and the killed step completed exactly once after its redelivery
    assert eventually(lambda: outcomes(celery_worker, request["id"])) == [("1", "success")]


@pytest.mark.parametrize(
    ("size", "killed_writing", "files"),
    [
        ((8000, 6000), "original", ["original.png", "source.upload"]),
        # Small enough that normalize also makes `large` from the pixels it holds.
        ((4000, 3000), "large", ["large.png", "original.png", "source.upload"]),
    ],
    ids=["writing-the-original", "writing-a-variant"],
)
def test_a_step_killed_while_writing_leaves_no_partial_file_once_it_has_run_again(
    tmp_path, size, killed_writing, files
):
    """The crash of the test above at the level of media/images.py: normalize is killed while
    a temporary file is half written, then runs again (the redelivery) to completion."""
    source = tmp_path / "source.upload"
    source.write_bytes(slow_png(*size))
    # given normalize running in a process of its own, caught mid-write
    child = multiprocessing.get_context("fork").Process(
        target=image_normalize, args=(source, tmp_path)
    )
    child.start()
    partials = f".{killed_writing}.*.png.partial"  # the temporary file of a write under way
    try:
        eventually(lambda: any(tmp_path.glob(partials)), timeout=60, interval=0.01)
        # when it is SIGKILLed, and normalize runs again
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.is_alive():
            child.kill()  # the wait above failed: leave no stray process behind
        child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL
    image_normalize(source, tmp_path)
    # then there are its files beside the source, and nothing else
    assert sorted(path.name for path in tmp_path.iterdir()) == files


# --- a whole worker dies --------------------------------------------------------------------


def test_a_task_time_limit_longer_than_the_visibility_timeout_fails_the_system_checks(settings):
    # given the short visibility timeout the restarted worker below runs with, and media steps
    # that may run for up to STEP's time limit
    from django.core.checks import run_checks

    from media import tasks

    settings.CELERY_VISIBILITY_TIMEOUT = VISIBILITY_TIMEOUT
    settings.CELERY_TASK_TIME_LIMIT = 4
    settings.JOBS_RETRY_MAX_SECONDS = settings.JOBS_MAX_BROKER_COUNTDOWN_SECONDS = 2
    assert tasks.normalize.time_limit > VISIBILITY_TIMEOUT
    # when the system checks run (as `manage.py check` and every worker start-up do)
    errors = [str(message) for message in run_checks() if message.id.startswith("jobs.")]
    # then one names the media steps: a step still running after 5 s is handed to a second
    # process while the first still works on it
    assert any("media.normalize" in error for error in errors), errors


def kill_worker_and_its_pool(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process and every pool process at the same instant, as a
    power cut or a node's out-of-memory killer would: nothing gets to clean up or hand back."""
    main = worker.process.pid
    os.kill(main, signal.SIGSTOP)  # frozen, it cannot replace a pool process we kill
    pool = worker.pool_pids()
    assert pool, "a prefork worker has pool processes"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)
    worker.kill()  # SIGKILL works on a stopped process; then it is reaped
    eventually(lambda: all(gone(pid) for pid in pool), timeout=10)


def unacknowledged_for_longer_than(seconds: float) -> bool:
    """Every message the dead worker held is older than `seconds` in Redis' unacked index."""
    from jobs.redis import redis_client

    client = redis_client()
    now, _ = client.time()
    newest = client.zrange("unacked_index", -1, -1, withscores=True)
    return bool(newest) and now - newest[0][1] > seconds


@KILL_POINTS
def test_a_worker_killed_mid_pipeline_leaves_it_to_a_new_worker_which_finishes_it_once(
    no_worker_running, start_worker, step: str, caught: Callable[[str, dict], bool]
):
    # given a media worker (the shared one is stopped, so nothing else takes the messages)
    # running `step` of an upload
    first = start_worker(queues=["media"], extra_env=SHORT_TIMEOUTS)
    client = owner()
    upload_id = upload_slow_image(client)
    step_caught(first, upload_id, step, caught)
    # when the worker and its pool are killed outright
    kill_worker_and_its_pool(first)
    killed_at = Upload.objects.get(pk=upload_id)
    assert killed_at.status == Upload.Status.PROCESSING
    # and, once the lost messages are older than the visibility timeout, a new worker starts
    # (kombu's Redis transport looks for them when a worker starts, then only every
    # unacked_restore_interval x unacked_restore_throttle = 10 x 10 s, which settings leave as is)
    eventually(lambda: unacknowledged_for_longer_than(VISIBILITY_TIMEOUT), timeout=20)
    started = time.monotonic()
    second = start_worker(queues=["media"], extra_env=SHORT_TIMEOUTS)
    # then the new worker finishes the upload, every file made exactly once
    body = wait_until_done(client, upload_id, timeout=120)
    assert_complete_once(body, upload_id)
    assert time.monotonic() - started < 90, "recovered at start-up, not by the 100 s sweep"
    # and the new worker ran the step that was lost, with no step failing on the way
    log = second.logfile.read_text(errors="replace")
    assert re.search(rf"task={re.escape(step)} \S+ attempt=1 \S+ outcome=success", log), log
    assert "outcome=failure" not in log, second.log_tail()


@pytest.mark.django_db(transaction=True)
def test_a_delete_while_a_step_records_its_variant_deletes_both(no_worker_running):
    import threading

    from django.db import connection, transaction

    from media.services import upload_delete

    # given an upload whose step is recording a variant (its transaction holds the upload's row)
    user = get_user_model().objects.create_user("racer@example.com", "correct horse battery")
    upload = Upload.objects.create(owner=user, source_format="PNG", source_bytes=1)
    recorded = threading.Event()

    def step() -> None:
        with transaction.atomic():
            Upload.objects.select_for_update().get(pk=upload.pk)
            UploadVariant.objects.create(upload=upload, name="thumb", width=1, height=1, bytes=1)
            recorded.set()
            time.sleep(1)  # the DELETE arrives meanwhile
        connection.close()

    worker = threading.Thread(target=step)
    worker.start()
    recorded.wait(5)
    # when the owner deletes it meanwhile
    upload_delete(upload=upload)
    worker.join()
    # then both are gone, and nothing failed on the variant's foreign key
    assert not Upload.objects.filter(pk=upload.pk).exists()
    assert not UploadVariant.objects.filter(upload_id=upload.pk).exists()
