"""An account's erasure (accounts/deletion.py) against a raw SQL `DELETE` of the same rows.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
MEDIA_ROOT and one `celery worker`, then, for each size, makes two accounts with the same data
(half of the rows email deliveries, a quarter uploads, a quarter their variants; a folder with a
file for one upload in ten) and removes one of them each way, in turns:

- erasure: the periodic job queues it, the worker runs it (start, the batch of slices, the
  finish), timed from the queueing to the receipt's end;
- raw SQL: three `DELETE` statements (variants, uploads, emails) in one transaction, and the
  same folders removed.

It prints both times, their ratio, the erasure's time per thousand rows (flat means linear), and
the worker's pool processes' peak resident memory after each size (flat means the erasure does
not hold an account's rows in memory). It asserts nothing.

    .venv/bin/python bench/erasure.py [--sizes 1000,10000,100000]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/erasure.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import time
import uuid
from datetime import timedelta

from bench import support
from tests import processes

DEFAULT_SIZES = (1_000, 10_000, 100_000)
# The Procfile's worker at its default size.
WORKER_CONCURRENCY = 2
# One upload in this many has files on disk (the rest were never processed, or are tiny).
FILES_EVERY = 10
# Rows written per INSERT while making an account.
INSERT_BATCH = 2_000
# An erasure of 100,000 rows takes tens of seconds here; without progress for this long, the
# worker is stuck.
STUCK_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="rows per account"
    )
    parser.add_argument(
        "--outbox-rows",
        type=int,
        default=0,
        help="published outbox rows of other accounts, as a running service keeps for its "
        "retention period (each slice looks through them for the ids it erases)",
    )
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-erasure-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(
            redis_url=redis_server.url,
            workdir=workdir,
            environment={"MEDIA_ROOT": str(workdir / "media")},
        )
        with support.Worker(
            name_prefix="bench-erasure",
            logfile=workdir / "worker.log",
            concurrency=WORKER_CONCURRENCY,
        ) as worker:
            _outbox_fill(rows=options.outbox_rows)
            _print_header(
                sizes=sizes, outbox_rows=options.outbox_rows, database_given=database_given
            )
            _run(sizes=sizes, worker=worker)


def _run(*, sizes: list[int], worker: support.Worker) -> None:
    _measure_erasure(_account_made(rows=100))  # warm up: pool processes forked, imports done
    print(f"{'rows':>8}{'erasure s':>12}{'raw SQL s':>12}{'ratio':>8}{'ms/1000 rows':>15}"
          f"{'worker peak MB':>16}")  # fmt: skip
    times = {}
    for rows in sizes:
        erasure = _measure_erasure(_account_made(rows=rows))
        raw = _measure_raw_delete(_account_made(rows=rows))
        times[rows] = (erasure, raw)
        print(
            f"{rows:>8}{erasure:>12.2f}{raw:>12.2f}{erasure / raw:>8.1f}"
            f"{erasure / rows * 1_000_000:>15.1f}{_pool_peak_megabytes(worker):>16.0f}"
        )
    print()
    if len(times) > 1:
        # An erasure has a fixed cost (three task hops, the start, the finish) that a raw
        # DELETE has not; what the rows themselves cost is the difference between two sizes.
        (small, (small_erasure, small_raw)), (large, (large_erasure, large_raw)) = sorted(
            times.items()
        )[-2:]
        print(
            f"rows {small} to {large}: the erasure's added rows cost "
            f"{(large_erasure - small_erasure) / (large_raw - small_raw):.1f}x the raw SQL's"
        )
    print(f"load average   {support.load_average()} at the end")


def _outbox_fill(*, rows: int) -> None:
    from jobs.models import OutboxMessage

    for start in range(0, rows, INSERT_BATCH):
        OutboxMessage.objects.bulk_create(
            OutboxMessage(
                task_name="media.start_pipeline",
                kwargs={"upload_id": str(uuid.uuid4())},
                status=OutboxMessage.Status.PUBLISHED,
            )
            for _ in range(min(INSERT_BATCH, rows - start))
        )


def _account_made(*, rows: int):
    """An account with `rows` rows of its data, and files for one upload in FILES_EVERY."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from accounts.models import EmailDelivery
    from media.models import Upload, UploadVariant

    user = get_user_model().objects.create_user(f"{uuid.uuid4().hex}@example.com", "x" * 12)
    emails, uploads = rows // 2, rows // 4
    for start in range(0, emails, INSERT_BATCH):
        EmailDelivery.objects.bulk_create(
            EmailDelivery(
                kind=EmailDelivery.Kind.WELCOME,
                user=user,
                recipient=user.email,
                subject="Welcome",
                body_text="Hello",
                message_id=f"<{uuid.uuid4().hex}@bench>",
                status=EmailDelivery.Status.SENT,
            )
            for _ in range(min(INSERT_BATCH, emails - start))
        )
    for start in range(0, uploads, INSERT_BATCH):
        made = Upload.objects.bulk_create(
            Upload(owner=user, status="ready", source_format="JPEG", source_bytes=1)
            for _ in range(min(INSERT_BATCH, uploads - start))
        )
        UploadVariant.objects.bulk_create(
            UploadVariant(upload=upload, name="thumb", width=1, height=1, bytes=1)
            for upload in made
        )
        for upload in made[::FILES_EVERY]:
            folder = Path(settings.MEDIA_ROOT) / "uploads" / str(upload.pk)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "thumb.webp").write_bytes(b"x" * 4096)
    get_user_model().objects.filter(pk=user.pk).update(
        deletion_scheduled_for=timezone.now() - timedelta(seconds=1)
    )
    return user


def _measure_erasure(user) -> float:
    from accounts.deletion import account_erasures_queue_due
    from accounts.models import AccountErasure

    began = time.monotonic()
    account_erasures_queue_due()
    erasure = AccountErasure.objects.get(user=user)
    while not AccountErasure.objects.filter(
        pk=erasure.pk, status=AccountErasure.Status.DONE
    ).exists():
        if time.monotonic() - began > STUCK_SECONDS:
            raise RuntimeError("the erasure never finished: see the worker's log")
        time.sleep(0.02)
    return time.monotonic() - began


def _measure_raw_delete(user) -> float:
    import shutil

    from django.conf import settings
    from django.db import connection, transaction

    from media.models import Upload

    folders = [
        Path(settings.MEDIA_ROOT) / "uploads" / str(upload_id)
        for upload_id in Upload.objects.filter(owner=user).values_list("pk", flat=True)
    ]
    began = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM media_uploadvariant WHERE upload_id IN "
            "(SELECT id FROM media_upload WHERE owner_id = %s)",
            [user.pk],
        )
        cursor.execute("DELETE FROM media_upload WHERE owner_id = %s", [user.pk])
        cursor.execute("DELETE FROM accounts_emaildelivery WHERE user_id = %s", [user.pk])
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return time.monotonic() - began


def _pool_peak_megabytes(worker: support.Worker) -> float:
    """The largest peak resident set (VmHWM) among the worker's pool processes."""
    peaks = []
    for pid in support.pool_processes(worker):
        status = Path(f"/proc/{pid}/status").read_text()
        peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")]
    return max(peaks, default=0) / 1024


def _print_header(*, sizes: list[int], outbox_rows: int, database_given: bool) -> None:
    support.print_run_header(
        title="Account erasure: the batch of slices against a raw SQL DELETE of the same rows",
        script="bench/erasure.py",
        arguments=["--sizes", ",".join(map(str, sizes)), "--outbox-rows", str(outbox_rows)],
        database_given=database_given,
    )
    from django.conf import settings

    print(
        f"method      per account: 1/2 email deliveries, 1/4 uploads, 1/4 variants, files for "
        f"1 upload in {FILES_EVERY}; slices of {settings.ACCOUNT_ERASURE_SLICE_ROWS} rows; "
        f"one worker, concurrency {WORKER_CONCURRENCY}; {outbox_rows} published outbox rows of "
        "other accounts"
    )
    print()


if __name__ == "__main__":
    support.run(main)
