"""Uploads: accept on the request path (cheap, strict), process as a Celery canvas.

    normalize -> group(one task per variant) -> finalize    (finalize then enqueues notify)

normalize makes the variants `variants_made_by_normalize` gives it: every variant of an image
up to 6 MP, whose pipeline is then normalize alone (it finalizes the upload itself); of a larger
one, those that need every pixel of the original (for a 12 MP photo, `large`): it holds those
pixels already, and their own tasks would decode them all again. Their tasks stay in a canvas
built before this rule (by a worker of the previous release during a deploy) and find their
variant made, so workers of either release run each other's messages.

Each step is idempotent: it writes deterministic paths (re-running rewrites the same files),
records its result with an upsert, and guards its status transition, so a step delivered
twice (a worker killed mid-task, a relay re-publish) leaves the same state as once. What the
steps recorded is also what the pipeline still lacks: a pipeline cut short (a chord callback the
broker lost, a step run outside its canvas) is resumed by publishing only the missing steps.
"""

import contextlib
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import redis
from celery import chain, chord, group
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Aggregate, Count, F, Min, QuerySet, Sum, Value
from django.db.models.functions import Greatest
from django.dispatch import Signal
from django.utils import timezone
from django.utils.timesince import timeuntil

from jobs.idempotency import run_once
from jobs.outbox import enqueue
from jobs.ratelimit import parse_rate
from jobs.windows import WindowFull, WindowLimit, window_limits_spend
from media.images import (
    VARIANTS,
    VARIANTS_BY_NAME,
    ImageRejected,
    WrittenImage,
    image_header_read,
    image_normalize,
    image_variant_make,
    variants_made_by_normalize,
)
from media.models import Upload, UploadVariant, processing_deadline

logger = logging.getLogger(__name__)

# Sent once per upload when it is ready (kwargs: upload), and when it fails (upload, reason), in
# the transaction that records it: the notifications app connects here.
upload_ready = Signal()
upload_failed = Signal()

# Share of the progress bar the normalize step stands for; the variants split the rest.
NORMALIZED_PROGRESS = 20
# An upload in these has a pipeline ahead of it; ready and failed are final.
UNFINISHED = (Upload.Status.QUEUED, Upload.Status.PROCESSING)
# Stalled uploads one sweep run resumes or fails. Each costs a few queries and an outbox row, so
# a run ends in seconds, well inside the minute before the next, even after an outage stalled
# thousands at once; the next runs take the rest.
SWEEP_BATCH = 100
# An erasure waiting for an upload in flight looks again after at most this many seconds.
UPLOAD_RECHECK_SECONDS = 10.0


class UploadRejected(Exception):
    def __init__(self, message: str, *, status: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # for a 429: seconds until the limit has room again


# --- paths: all under MEDIA_ROOT, all derived from the upload's random id -----------------


def upload_folder(upload_id: UUID | str) -> Path:
    return Path(settings.MEDIA_ROOT) / "uploads" / str(upload_id)


def upload_file_path(upload_id: UUID | str, name: str) -> Path | None:
    """The file for "original" or a variant name, whatever its suffix; None if not there."""
    for candidate in sorted(upload_folder(upload_id).glob(f"{name}.*")):
        if candidate.suffix in (".jpg", ".png"):
            return candidate
    return None


def _source_path(upload_id: UUID | str) -> Path:
    # The bytes as uploaded (metadata and all): deleted once the normalized original exists.
    return upload_folder(upload_id) / "source.upload"


# --- request path -------------------------------------------------------------------------


# Longer names are cut: the column's length, and more than any file system keeps.
UPLOAD_NAME_MAX_CHARS = 255


def upload_name_cleaned(name: str | None) -> str:
    """The client's file name as a one-line label: its last path segment (a client may send a
    whole path), without control characters, cut to UPLOAD_NAME_MAX_CHARS. Not escaped: that
    is the job of whatever shows it."""
    label = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    label = "".join(character for character in label if character.isprintable())
    return label.strip()[:UPLOAD_NAME_MAX_CHARS]


def upload_create(*, owner, file: UploadedFile) -> Upload:
    """Validate and store an upload, and start its processing after commit.

    Raises UploadRejected (413 too large, 415 not an accepted image, 400 unreadable or over the
    storage quota, 429 over an account limit per hour), leaving no row and no file behind.
    """
    if file.size > settings.UPLOAD_MAX_BYTES:
        raise UploadRejected(upload_too_large_message(), status=413)
    if file.size == 0:
        raise UploadRejected("The file is empty.", status=400)
    upload = Upload(
        owner=owner,
        original_name=upload_name_cleaned(file.name),
        source_format="",
        source_bytes=file.size,
    )
    source = _source_path(upload.pk)
    source.parent.mkdir(parents=True, exist_ok=True)
    with source.open("wb") as destination:
        for chunk in file.chunks():
            destination.write(chunk)
    try:
        header = image_header_read(source, max_pixels=settings.UPLOAD_MAX_PIXELS)
    except ImageRejected as rejection:
        shutil.rmtree(upload_folder(upload.pk), ignore_errors=True)
        raise UploadRejected(str(rejection), status=rejection.status) from rejection
    upload.source_format = header.format
    upload.width, upload.height = header.width, header.height
    try:
        with transaction.atomic():
            _account_lock(owner)
            _storage_quota_check(owner=owner, size=file.size)
            _account_limits_spend(owner=owner, pixels=header.width * header.height)
            upload.save(force_insert=True)
            _processing_enqueue(upload)
    except BaseException:
        shutil.rmtree(upload_folder(upload.pk), ignore_errors=True)
        raise
    return upload


def upload_too_large_message() -> str:
    return f"The file is larger than {settings.UPLOAD_MAX_BYTES // (1024 * 1024)} MB."


# --- limits per account: checked and counted under the account's lock ------------------------


def _account_lock(owner) -> None:
    """Take the account's uploads one at a time from here to commit. The checks that follow
    read what the insert changes: two uploads checked side by side would each find room that
    only one of them fits into.

    PostgreSQL: a row lock on the account. SQLite has no row locks and Django leaves FOR UPDATE
    out there; its transactions begin IMMEDIATE (config/settings.py), taking the database's one
    write lock at BEGIN, so every writer, this one included, already runs alone until commit.
    """
    list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))


def _storage_quota_check(*, owner, size: int) -> None:
    # What the account stores now: deleting uploads makes room again.
    used = Upload.objects.filter(owner=owner).aggregate(total=Sum("source_bytes"))["total"] or 0
    if used + size > settings.UPLOAD_QUOTA_BYTES:
        raise UploadRejected("Your storage is full: delete some uploads to make room.", status=400)


# How a window from parse_rate reads in a sentence.
_PER_WINDOW = {1.0: "a second", 60.0: "a minute", 3600.0: "an hour"}


@dataclass(frozen=True)
class _AccountLimit:
    window: WindowLimit  # counted in Redis
    rows_amount: Aggregate  # the same amount over the account's rows, while Redis is down
    refusal: str  # what the person is told, before when to try again


def _account_limits(*, owner, pixels: int) -> tuple[_AccountLimit, ...]:
    """Uploads and megapixels an account may upload per window (UPLOAD_RATE_PER_ACCOUNT,
    UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT). Pixels, because a worker's cost is the decoded image,
    not the file: a 160 KB PNG of 7000 x 7000 decodes to 49 MP."""
    uploads, uploads_window = parse_rate(settings.UPLOAD_RATE_PER_ACCOUNT)
    megapixels, pixels_window = parse_rate(settings.UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT)
    return (
        _AccountLimit(
            WindowLimit(f"media:uploads:{owner.pk}:count", uploads, uploads_window),
            Count("pk"),
            f"You have reached your limit of uploads: {uploads:g} {_PER_WINDOW[uploads_window]}.",
        ),
        _AccountLimit(
            WindowLimit(
                f"media:uploads:{owner.pk}:pixels", megapixels * 1e6, pixels_window, pixels
            ),
            Sum(F("width") * F("height")),
            f"This {pixels / 1e6:.3g} MP image would take your uploads past their limit of "
            f"{megapixels:g} MP {_PER_WINDOW[pixels_window]}.",
        ),
    )


def _account_limits_spend(*, owner, pixels: int) -> None:
    """Count this upload against the account's limits per window, or refuse it (429).

    Counted when accepted and never given back: the limits bound the work an account causes,
    and an upload deleted at once has had its request served and perhaps its image decoded.
    (The storage quota, by contrast, counts what is stored, so deleting frees it.)

    Redis down: the same limits are counted from the account's rows created within the window.
    Not fail open: an upload accepted unlimited is work that happens anyway once the broker is
    back (the outbox keeps it), and an account could queue hours of decoding meanwhile. Not
    fail closed: uploads would stop whenever Redis stops, though the outbox exists to accept
    them through a broker outage. The rows miss only uploads deleted within the window; while
    the broker is down (by default the same Redis) those are never processed, so they cost
    nothing.
    """
    limits = _account_limits(owner=owner, pixels=pixels)
    try:
        window_limits_spend(*(limit.window for limit in limits))
    except WindowFull as full:
        refused = next(limit for limit in limits if limit.window == full.limit)
        raise _limit_reached(refused, retry_after=full.retry_after) from full
    except redis.RedisError as error:
        logger.warning("upload limits counted from the database, Redis unavailable: %s", error)
        _account_limits_check_rows(owner=owner, limits=limits)


def _account_limits_check_rows(*, owner, limits: tuple[_AccountLimit, ...]) -> None:
    now = timezone.now()
    for limit in limits:
        since = now - timedelta(seconds=limit.window.window_seconds)
        recent = Upload.objects.filter(owner=owner, created_at__gt=since).aggregate(
            used=limit.rows_amount, oldest=Min("created_at")
        )
        if (recent["used"] or 0) + limit.window.amount > limit.window.limit:
            # At the earliest, room comes back as the oldest of these uploads leaves the window.
            retry_after = math.ceil((recent["oldest"] - since).total_seconds())
            raise _limit_reached(limit, retry_after=max(1, retry_after))


def _limit_reached(limit: _AccountLimit, *, retry_after: int) -> UploadRejected:
    now = timezone.now()
    # Whole minutes, rounded up: trying again at the time given must not be too early.
    wait = timeuntil(now + timedelta(minutes=math.ceil(retry_after / 60)), now)
    return UploadRejected(
        f"{limit.refusal} Try again in {wait}.", status=429, retry_after=retry_after
    )


def _processing_enqueue(upload: Upload) -> None:
    """Process a new (or reset) upload once the caller's transaction commits, durably: an
    upload accepted while the broker is down is processed when the broker is back. An image
    whose variants normalize makes itself needs normalize alone, through the outbox; a larger
    one needs a canvas, which cannot go through the outbox, so the outbox carries one small
    task that publishes it from a worker."""
    from media import tasks

    if _normalize_finishes(upload):
        enqueue(tasks.normalize, upload_id=str(upload.pk))
    else:
        _pipeline_start_enqueue(upload.pk)


def _made_by_normalize(upload: Upload) -> set[str]:
    # Its size as uploaded: the rule is the same for the upright size normalize will see.
    return {spec.name for spec in variants_made_by_normalize((upload.width, upload.height))}


def _normalize_finishes(upload: Upload) -> bool:
    return len(_made_by_normalize(upload)) == len(VARIANTS)


def _pipeline_start_enqueue(upload_id: UUID | str) -> None:
    """Publish, from a worker, the canvas of what the upload still lacks, once the caller's
    transaction commits."""
    from media import tasks

    enqueue(tasks.start_pipeline, upload_id=str(upload_id))


def upload_pipeline_start(*, upload_id: str) -> None:
    """Publish the canvas of what the upload still lacks (from the `media.start_pipeline` task):
    all of it for a new upload; for a resumed one, only the steps whose records are missing.
    Publishing it twice (a redelivered start) runs idempotent steps twice: the same files, rows
    and status.

    An image that normalize processes alone gets normalize through the outbox, like any single
    task. A canvas is a plain publish, not `enqueue`: it cannot ride the outbox, and this runs in
    a worker, outside any transaction, from a task the outbox delivered. If the broker fails
    here, that task fails and is dead-lettered; re-driving it publishes the canvas again, and so
    does the sweep once the upload's deadline has passed."""
    from media import tasks

    upload = Upload.objects.filter(pk=upload_id, status__in=UNFINISHED).first()
    if upload is None:
        return  # deleted, or finished by another run of its pipeline: nothing is missing
    made = set(upload.variants.values_list("name", flat=True))
    steps = []
    if not _normalized(upload):
        if _normalize_finishes(upload):
            # No canvas: normalize makes every variant, then marks the upload ready.
            enqueue(tasks.normalize, upload_id=upload_id)
            return
        steps.append(tasks.normalize.si(upload_id=upload_id))
        made |= _made_by_normalize(upload)
    missing = [spec for spec in VARIANTS if spec.name not in made]
    finalize = tasks.finalize.si(upload_id=upload_id)
    if missing:
        # A chord: finalize runs once every variant task of the group has returned.
        finalize = chord(
            group(tasks.make_variant.si(upload_id=upload_id, name=spec.name) for spec in missing),
            finalize,
        )
    chain(*steps, finalize).apply_async()


def _normalized(upload: Upload) -> bool:
    # normalize records the original, then removes the uploaded bytes: until both happened (a
    # crash in between; "Process again" puts the bytes back), it has to run.
    return upload.original_bytes is not None and not _source_path(upload.pk).exists()


def upload_pipeline_resume(*, upload_id: str) -> None:
    """Publish the rest of the pipeline after a step that ran outside its canvas: its retry
    waited in the outbox while the broker was down, or a person re-drove its dead letter. Such a
    step carries no canvas, so nothing would follow it. A failed upload whose step a person
    re-drove is processing again; a ready one has nothing left to do."""
    with transaction.atomic():
        resumed = (
            Upload.objects.filter(pk=upload_id)
            .exclude(status=Upload.Status.READY)
            .update(
                status=Upload.Status.PROCESSING,
                error="",
                deadline=processing_deadline(),
                updated_at=timezone.now(),
            )
        )
        if resumed:
            _pipeline_start_enqueue(upload_id)


def uploads_stalled(*, now: datetime | None = None) -> QuerySet[Upload]:
    """Unfinished uploads past their deadline: what the sweep acts on, and /metrics counts."""
    return Upload.objects.filter(status__in=UNFINISHED, deadline__lt=now or timezone.now())


def uploads_stalled_sweep(*, now: datetime | None = None) -> int:
    """Resume or fail the unfinished uploads past their deadline, oldest first (the periodic
    `media.maintenance_uploads_sweep`). Returns how many it resumed or failed."""
    now = now or timezone.now()
    stalled = (
        uploads_stalled(now=now).order_by("deadline").values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    acted = 0
    for upload_id in list(stalled):
        with transaction.atomic():
            upload = (
                Upload.objects.select_for_update()
                .filter(pk=upload_id, status__in=UNFINISHED, deadline__lt=now)
                .first()
            )
            if upload is None:
                continue  # it progressed, finished or was deleted since the query
            _upload_resume_or_fail(upload, why="no progress before its deadline")
            acted += 1
    return acted


def _upload_resume_or_fail(upload: Upload, *, why: str) -> None:
    """With the upload's row locked: publish what its pipeline lacks, and count it, or, once
    it has been resumed UPLOAD_MAX_RESUMES times, fail it with a reason."""
    if upload.resumes >= settings.UPLOAD_MAX_RESUMES:
        logger.warning("upload %s failed after %d resumes: %s", upload.pk, upload.resumes, why)
        upload_fail(
            upload_id=upload.pk,
            reason=f"Processing stalled, and resuming it {upload.resumes} times did not finish "
            "it. Upload the image again; if that fails too, contact support.",
        )
        return
    logger.warning("upload %s resumed (resume %d): %s", upload.pk, upload.resumes + 1, why)
    resumed = {"resumes": upload.resumes + 1, "deadline": processing_deadline()}
    if upload.status == Upload.Status.FAILED:
        # finalize, re-driven by a person, found a variant missing: processing again.
        resumed.update(status=Upload.Status.PROCESSING, error="")
    Upload.objects.filter(pk=upload.pk).update(**resumed, updated_at=timezone.now())
    _pipeline_start_enqueue(upload.pk)


def upload_delete(*, upload: Upload) -> None:
    """The row goes now (the user sees it gone at once); the files go in the background."""
    from media import tasks

    with transaction.atomic():
        # Locked before Django collects its variant rows: a step recording a variant meanwhile
        # holds this lock (_step_record), so it commits before the collection or finds the upload
        # gone; otherwise its row would appear after the collection and fail the delete.
        if not Upload.objects.select_for_update().filter(pk=upload.pk).values_list("pk"):
            return  # deleted meanwhile
        enqueue(tasks.delete_files, upload_id=str(upload.pk))
        upload.delete()


def upload_in_flight_wait(*, owner_id: int) -> float:
    """How many seconds an account's erasure should wait before looking again for an upload of
    the account being processed, whose next step it must not race; 0 when none is (those past
    their deadline have stalled, and are cancelled with the queued ones)."""
    now = timezone.now()
    soonest = Upload.objects.filter(
        owner_id=owner_id, status=Upload.Status.PROCESSING, deadline__gt=now
    ).aggregate(soonest=Min("deadline"))["soonest"]
    if soonest is None:
        return 0.0
    # Looked at again soon: a step records progress within seconds; the deadline bounds the wait.
    return min((soonest - now).total_seconds(), UPLOAD_RECHECK_SECONDS)


def uploads_of_account_cancel(*, owner_id: int) -> int:
    """As an account's erasure starts: fail its uploads that wait to be processed, and those
    whose processing stalled. A step of theirs that runs anyway finds its upload gone once the
    erasure has deleted it, and removes what it wrote. Returns how many."""
    return Upload.objects.filter(owner_id=owner_id, status__in=UNFINISHED).update(
        status=Upload.Status.FAILED,
        error="the account is being deleted",
        updated_at=timezone.now(),
    )


def upload_files_delete(*, upload_id: str) -> None:
    # Idempotent: a second run finds nothing to remove.
    upload_folders_delete(upload_ids=[upload_id])


def upload_folders_delete(*, upload_ids: list) -> None:
    """Remove the uploads' folders (an erasure's slice: many at once, the common folder found
    once)."""
    # Plain strings, not Path objects: a slice asks this of thousands of ids, twice.
    root = f"{upload_folder('-').parent}{os.sep}"
    for upload_id in upload_ids:
        folder = f"{root}{upload_id}"
        if os.path.isdir(folder):  # most have none: asking is ten times cheaper than rmtree failing
            shutil.rmtree(folder, ignore_errors=True)


# --- pipeline steps -------------------------------------------------------------------------


def upload_normalize(*, upload_id: str) -> bool:
    """Write the normalized original and the variants normalize makes; with every variant
    made, mark the upload ready as it records them. True if nothing is left to run after it:
    the upload is ready (or was deleted); False if its variants' tasks follow."""
    upload = _live_upload(upload_id)
    if upload is None:
        return True
    Upload.objects.filter(pk=upload_id, status=Upload.Status.QUEUED).update(
        status=Upload.Status.PROCESSING, deadline=processing_deadline(), updated_at=timezone.now()
    )
    source = _source_path(upload_id)
    if not source.exists() and upload_file_path(upload_id, "original") is not None:
        # Redelivered after the source was normalized and removed: nothing left to make here.
        return Upload.objects.filter(pk=upload_id, status=Upload.Status.READY).exists()
    written = None
    with _unless_deleted_meanwhile(upload_id):
        written = image_normalize(source, upload_folder(upload_id))
    if written is None:
        return True  # deleted while it ran: nothing follows
    original = written.pop("original")
    done = _step_record(
        upload_id=upload_id,
        variants=written,
        # With every variant made here, ready at once: no finalize task follows.
        finish=True,
        width=original.width,
        height=original.height,
        original_bytes=original.path.stat().st_size,
    )
    # Only now: until the rows above are written, a rerun needs the source to start again.
    source.unlink(missing_ok=True)  # it still carries the GPS position
    _forget_files_if_deleted_meanwhile(upload_id)
    return done is None or done == len(VARIANTS)


def upload_variant_make(*, upload_id: str, name: str) -> None:
    upload = _live_upload(upload_id)
    if upload is None:
        return
    if UploadVariant.objects.filter(upload_id=upload_id, name=name).exists():
        return  # normalize made it from the pixels it held, or this message is a redelivery
    original = upload_file_path(upload_id, "original")
    if original is None:
        raise FileNotFoundError(f"normalized original of {upload_id} is missing")
    image = None
    with _unless_deleted_meanwhile(upload_id):
        image = image_variant_make(original, upload_folder(upload_id), VARIANTS_BY_NAME[name])
    if image is None:
        return
    _step_record(upload_id=upload_id, variants={name: image})
    _forget_files_if_deleted_meanwhile(upload_id)


def _step_record(
    *,
    upload_id: str,
    variants: dict[str, WrittenImage],
    finish: bool = False,
    **upload_fields: object,
) -> int | None:
    """Record what a step wrote: the variants' rows (one upsert), the upload's fields and its
    progress, unless the upload was deleted while the step worked; with `finish`, and every
    variant recorded, mark it ready in the same transaction. Returns how many variants the
    upload has, None if it is gone.

    The upload's row is locked first, so a DELETE waits for this transaction: the variant rows
    cannot lose their upload before they commit, which would fail the commit on their foreign
    key. (SQLite's IMMEDIATE transactions serialize writers the same way.)"""
    with transaction.atomic():
        if not Upload.objects.select_for_update().filter(pk=upload_id).values_list("pk"):
            return None  # deleted: the step's caller removes the files it wrote
        UploadVariant.objects.bulk_create(
            [
                UploadVariant(
                    upload_id=upload_id,
                    name=name,
                    width=image.width,
                    height=image.height,
                    bytes=image.path.stat().st_size,
                )
                for name, image in variants.items()
            ],
            update_conflicts=True,
            unique_fields=["upload", "name"],
            update_fields=["width", "height", "bytes"],
        )
        done = UploadVariant.objects.filter(upload_id=upload_id).count()
        progress = NORMALIZED_PROGRESS + (100 - NORMALIZED_PROGRESS - 1) * done // len(VARIANTS)
        Upload.objects.filter(pk=upload_id).update(
            **upload_fields,
            # Only ever forward: variants finish in any order; a late one must not move it back.
            progress=Greatest("progress", Value(progress)),
            deadline=processing_deadline(),
            updated_at=timezone.now(),
        )
        if finish and done == len(VARIANTS):
            _upload_ready_mark(upload_id)
    return done


def upload_finalize(*, upload_id: str) -> bool:
    """Mark ready once every variant exists, and announce it. True only for the call that made
    it ready.

    Every variant exists when the chord calls this; one is missing only when this runs on its
    own (a retry from the outbox, a re-drive) after a variant's task was lost: the missing steps
    are published again, counted as a resume, so this never loops."""
    with transaction.atomic():
        upload = Upload.objects.select_for_update().filter(pk=upload_id).first()
        if upload is None or upload.status == Upload.Status.READY:
            return False
        names = set(
            UploadVariant.objects.filter(upload_id=upload_id).values_list("name", flat=True)
        )
        missing = {spec.name for spec in VARIANTS} - names
        if missing:
            _upload_resume_or_fail(upload, why=f"variants {sorted(missing)} missing at finalize")
            return False
        return _upload_ready_mark(upload_id)


def _upload_ready_mark(upload_id: str) -> bool:
    """In the caller's transaction, with the upload's row locked and every variant recorded:
    ready, and its announcement enqueued. False if it was ready already."""
    from media import tasks

    made_ready = (
        Upload.objects.filter(pk=upload_id)
        .exclude(status=Upload.Status.READY)
        .update(
            status=Upload.Status.READY,
            progress=100,
            error="",
            ready_at=timezone.now(),
            updated_at=timezone.now(),
        )
    )
    if made_ready:
        # In the same transaction: the announcement cannot be lost between the two, as a chain's
        # next message can (its publish fails after this commits).
        enqueue(tasks.notify, upload_id=upload_id)
    return bool(made_ready)


class _UploadGone(Exception):
    pass


def upload_notify(*, upload_id: str) -> None:
    """Announce a ready upload once, however often its message arrives. The upload is read
    under its lock, in the transaction that writes the key: an upload deleted meanwhile (its
    owner's erasure) leaves no key naming it behind."""

    def announce() -> None:
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id, status=Upload.Status.READY)
            .first()
        )
        if upload is None:
            raise _UploadGone  # rolls the key back
        upload_ready.send(sender=Upload, upload=upload)

    with contextlib.suppress(_UploadGone):
        run_once(key=f"media.upload_ready:{upload_id}", effect=announce)


def upload_fail(*, upload_id: str, reason: str) -> None:
    """Fail the upload with a reason (a ready one stays ready), and announce it the first time:
    a second step of its canvas failing too only rewrites the reason."""
    with transaction.atomic():
        upload = (
            Upload.objects.select_for_update()
            .filter(pk=upload_id)
            .exclude(status=Upload.Status.READY)
            .first()
        )
        if upload is None:
            return
        Upload.objects.filter(pk=upload.pk).update(
            status=Upload.Status.FAILED, error=reason[:2000], updated_at=timezone.now()
        )
        if upload.status in UNFINISHED:
            upload_failed.send(sender=Upload, upload=upload, reason=reason)


def upload_reprocess(*, upload: Upload) -> None:
    """Run the pipeline again (admin). Needs the original or the source still on disk."""
    source = _source_path(upload.pk)
    original = upload_file_path(upload.pk, "original")
    if not source.exists() and original is not None:
        # Normalizing the normalized original gives the same image: the pipeline starts there.
        shutil.copyfile(original, source)
    with transaction.atomic():
        Upload.objects.filter(pk=upload.pk).update(
            status=Upload.Status.QUEUED,
            progress=0,
            error="",
            resumes=0,
            deadline=processing_deadline(),
            updated_at=timezone.now(),
        )
        UploadVariant.objects.filter(upload=upload).delete()
        _processing_enqueue(upload)


def _forget_files_if_deleted_meanwhile(upload_id: str) -> None:
    # A DELETE while this step ran removed the folder, and the step's write made it again.
    if not Upload.objects.filter(pk=upload_id).exists():
        upload_files_delete(upload_id=upload_id)


@contextlib.contextmanager
def _unless_deleted_meanwhile(upload_id: str) -> Iterator[None]:
    """Let a step's file work end quietly when the upload was deleted while it ran: the
    deletion's file cleanup removed the folder under it (FileNotFoundError), and there is
    nothing left to make. A file missing from an upload that still exists is an error."""
    try:
        yield
    except FileNotFoundError:
        if _live_upload(upload_id) is not None:
            raise
        # The step may have made the folder again before it failed: nothing of it may stay.
        upload_files_delete(upload_id=upload_id)


def _live_upload(upload_id: str) -> Upload | None:
    # Deleted while queued: nothing to do, and the file cleanup task removes what is left.
    return Upload.objects.filter(pk=upload_id).first()
