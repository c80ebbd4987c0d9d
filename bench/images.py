"""Image pipeline throughput: phone-sized photos through the media worker, against a plain loop.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
MEDIA_ROOT (a temporary folder) and one `celery worker -Q media` with two pool processes, then
prints one table: images per second and CPU seconds per image of

  1. the project's path: `media.services.upload_create()` for every photo in one transaction,
     each publishing its canvas (normalize, which also makes the variants that need every
     pixel -> group(one task per variant; those find their variant made) -> finalize ->
     notify) on commit, until every upload is ready;
  2. a plain one-process Pillow loop making the same files: each photo decoded once, made
     upright, saved as the normalized original, then resized to the four variants;

their ratio against the issue's target, and where each side spends its time. It asserts
nothing: timings belong to the machine they were taken on.

    .venv/bin/python bench/images.py [--images 24]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/images.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import. The repository root goes
    # there instead, so `config` and `media` import as they do in the worker.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import ast
import io
import logging
import os
import platform
import random
import re
import statistics
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import celery
import django
import PIL
from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageOps, features

from bench import support
from media.images import (
    ORIGINAL_JPEG,
    REDUCING_GAP,
    VARIANT_JPEG,
    VARIANTS,
    variants_needing_every_pixel,
)
from tests import processes

DEFAULT_IMAGES = 24
# A 12 MP phone photo as the sensor stores it: landscape, JPEG quality 90.
PHOTO_SIZE = (4000, 3000)
PHOTO_QUALITY = 90
# The media worker as the issue sizes it: one prefork worker, two pool processes (two cores).
WORKER_CONCURRENCY = 2
# The target: two pool processes do at least 1.6x the images per second of one loop.
MIN_THROUGHPUT_RATIO = 1.6
# Uploads run through the worker before anything is timed: one per pool process, so both have
# imported Pillow and opened their database and Redis connections.
WARM_UP_IMAGES = WORKER_CONCURRENCY
# A step is killed after its 90 s hard time limit; no upload ready for longer means the
# worker is stuck (or the machine hopelessly overloaded), not slow.
STUCK_SECONDS = 180.0
# Five polls a second: each is one indexed SELECT, nothing the worker notices.
POLL_SECONDS = 0.2
# One line per task outcome, written by jobs.base.PlatformTask._log_outcome.
OUTCOME_LINE = re.compile(
    r"task=(?P<task>\S+) id=(?P<id>\S+) attempt=\d+ duration_ms=(?P<ms>[\d.]+) "
    r"outcome=(?P<outcome>\w+)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=DEFAULT_IMAGES, help=f"photos per side ({DEFAULT_IMAGES})"
    )
    images = parser.parse_args().images
    if images < 2:
        parser.error("--images must be at least 2: the loop runs in two halves")

    database_given = support.database_given()
    run = uuid.uuid4().hex[:8]
    with support.scratch_folder(prefix="celery-saas-bench-images-") as workdir:
        # First, while nothing else of the benchmark runs: it takes about a second a photo.
        photos = _photos_write(count=images, folder=workdir / "photos")
        with processes.RedisServer(workdir=workdir) as redis_server:
            support.django_setup(
                redis_url=redis_server.url,
                workdir=workdir,
                environment={
                    "MEDIA_ROOT": str(workdir / "media"),
                    # Every photo belongs to one user: `--images 300` would pass the 1 GiB quota.
                    "UPLOAD_QUOTA_BYTES": str(10**15),
                },
            )
            # The event receiver logs its connection at INFO, between the progress lines.
            logging.getLogger("kombu.mixins").setLevel(logging.WARNING)
            worker = MediaWorker(logfile=workdir / "worker.log")
            variant_names = VariantNames()
            try:
                worker.start()
                variant_names.start()
                _run(
                    photos=photos,
                    run=run,
                    workdir=workdir,
                    worker=worker,
                    redis_server=redis_server,
                    variant_names=variant_names,
                    database_given=database_given,
                )
            finally:
                variant_names.stop()
                worker.stop()
                if database_given:
                    _forget_run(run)


@dataclass
class LoopResult:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    waited_seconds: float = 0.0
    # Seconds per step name, one entry per photo.
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Per photo: {"original" or a variant name: (width, height, bytes)}.
    outputs: list[dict[str, tuple[int, int, int]]] = field(default_factory=list)


@dataclass
class PipelineResult:
    publish_seconds: float
    wall_seconds: float
    cpu_seconds: float
    waited_seconds: float
    redis_cpu_seconds: float
    request_cpu_seconds: float
    # (task name or "media.make_variant <variant>", seconds) per task outcome.
    durations: list[tuple[str, float]]
    outputs: list[dict[str, tuple[int, int, int]]]


def _run(
    *,
    photos: list[Path],
    run: str,
    workdir: Path,
    worker: "MediaWorker",
    redis_server: processes.RedisServer,
    variant_names: "VariantNames",
    database_given: bool,
) -> None:
    from accounts.models import User

    owner = User.objects.create_user(email=f"bench-images-{run}@example.com", password=None)
    _print_header(photos=photos, database_given=database_given)

    _pipeline(photos=photos[:WARM_UP_IMAGES], owner=owner, worker=worker, redis_server=None)
    _loop(photos[:1], folder=workdir / "loop-warm-up")
    if not variant_names.names:
        raise RuntimeError("no task events arrived from the worker: the per-step figures need them")

    # The loop runs in two halves, before and after the pipeline: load from other processes
    # on the machine drifts over seconds, and this spreads it over both sides.
    half = len(photos) // 2
    loop = _loop(photos[:half], folder=workdir / "loop")
    print("loop, first half measured", file=sys.stderr, flush=True)
    pipeline = _pipeline(
        photos=photos,
        owner=owner,
        worker=worker,
        redis_server=redis_server,
        variant_names=variant_names,
    )
    print("pipeline measured", file=sys.stderr, flush=True)
    second = _loop(photos[half:], folder=workdir / "loop", first_index=half)
    loop.wall_seconds += second.wall_seconds
    loop.cpu_seconds += second.cpu_seconds
    loop.waited_seconds += second.waited_seconds
    for step, seconds in second.steps.items():
        loop.steps[step] += seconds
    loop.outputs += second.outputs

    _print_results(photos=photos, loop=loop, pipeline=pipeline)


# --- the plain loop ---------------------------------------------------------------------------


def _loop(photos: list[Path], *, folder: Path, first_index: int = 0) -> LoopResult:
    """Every photo through the plain Pillow code, one after the other, in this process."""
    result = LoopResult()
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    waited_before = _waited_seconds(Path("/proc/thread-self"))
    for index, photo in enumerate(photos, start=first_index):
        result.outputs.append(_loop_one(photo, folder=folder / str(index), steps=result.steps))
    result.wall_seconds = time.perf_counter() - started_wall
    result.cpu_seconds = time.process_time() - started_cpu
    result.waited_seconds = _waited_seconds(Path("/proc/thread-self")) - waited_before
    return result


def _loop_one(
    photo: Path, *, folder: Path, steps: dict[str, list[float]]
) -> dict[str, tuple[int, int, int]]:
    """The same files as the pipeline makes for one upload, by the plainest fast Pillow code:
    the photo decoded once at full scale (the original needs every pixel), every variant
    resized from those pixels in memory, with thumbnail()'s LANCZOS and reducing gap."""
    folder.mkdir(parents=True)
    outputs = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name].append(now - clock)
        clock = now

    with Image.open(photo) as image:
        image.load()
        step("decode")
        upright = ImageOps.exif_transpose(image)
        if upright.mode != "RGB":
            upright = upright.convert("RGB")
        # No metadata in the output: the EXIF block (with the GPS position) stays behind.
        upright.info.clear()
        step("transpose")
        outputs["original"] = _save(upright, folder / "original.jpg", ORIGINAL_JPEG)
        step("save original")
        for spec in VARIANTS:
            width, height = upright.size
            if spec.square_crop:
                # ImageOps.fit's centre crop, resized with a reducing gap (fit has none).
                side = min(spec.long_edge, width, height)
                crop = min(width, height)
                left, top = (width - crop) // 2, (height - crop) // 2
                variant = upright.resize(
                    (side, side),
                    Image.Resampling.LANCZOS,
                    box=(left, top, left + crop, top + crop),
                    reducing_gap=REDUCING_GAP,
                )
            else:
                # thumbnail() without its copy of the 12 MP source: resize returns a new image.
                scale = min(1.0, spec.long_edge / max(width, height))
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                variant = upright.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
            outputs[spec.name] = _save(variant, folder / f"{spec.name}.jpg")
            step(spec.name)
    return outputs


def _save(image: Image.Image, path: Path, options: dict = VARIANT_JPEG) -> tuple[int, int, int]:
    # The pipeline's own JPEG options (media.images), so both sides make the same files.
    image.save(path, "JPEG", **options)
    return image.width, image.height, path.stat().st_size


# --- the pipeline -----------------------------------------------------------------------------


def _pipeline(
    *,
    photos: list[Path],
    owner,
    worker: "MediaWorker",
    redis_server: processes.RedisServer | None,
    variant_names: "VariantNames | None" = None,
) -> PipelineResult:
    """Upload every photo through the real path and wait until all are ready.

    The worker consumes nothing while the uploads are created, in one transaction: on its
    commit every canvas is published, in a burst, then the worker resumes with all N
    normalize messages queued. The variants of each upload queue behind the normalizes still
    waiting, so both pool processes stay busy until the last few tasks, and the figure is
    the worker's throughput, not one upload's latency; had the uploads trickled in, an idle
    process would wait for each one. Timed from the first publish (the commit) to the last
    upload's ready_at, as the worker wrote it.
    """
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction

    from media.models import Upload, UploadVariant
    from media.services import upload_create

    published_at: list[float] = []
    log_offset = worker.log_size()
    before = _tree_usage(worker.process.pid)
    redis_before = _tree_usage(redis_server.process.pid) if redis_server else Usage(0.0, 0.0)
    request_cpu_before = time.process_time()
    worker.pause("media")
    try:
        with transaction.atomic():
            # Registered first and last, the two run around every upload's publishing.
            transaction.on_commit(lambda: published_at.append(time.time()))
            upload_ids = [
                upload_create(
                    owner=owner,
                    file=SimpleUploadedFile(photo.name, photo.read_bytes(), "image/jpeg"),
                ).pk
                for photo in photos
            ]
            transaction.on_commit(lambda: published_at.append(time.time()))
        request_cpu_seconds = time.process_time() - request_cpu_before
    finally:
        worker.resume("media")

    uploads = Upload.objects.filter(pk__in=upload_ids)
    ready, progress_at = 0, time.monotonic()
    while ready < len(upload_ids):
        time.sleep(POLL_SECONDS)
        statuses = dict(uploads.values_list("pk", "status"))
        failed = [pk for pk, status in statuses.items() if status == Upload.Status.FAILED]
        if failed:
            error = Upload.objects.get(pk=failed[0]).error
            raise RuntimeError(f"upload {failed[0]} failed: {error}\n{worker.log_tail()}")
        now_ready = sum(status == Upload.Status.READY for status in statuses.values())
        if now_ready > ready:
            ready, progress_at = now_ready, time.monotonic()
        elif time.monotonic() - progress_at > STUCK_SECONDS:
            raise RuntimeError(
                f"{len(upload_ids) - ready} uploads never became ready:\n{worker.log_tail()}"
            )
    last_ready = max(
        ready_at.timestamp() for ready_at in uploads.values_list("ready_at", flat=True)
    )
    # notify runs after finalize, and its CPU belongs to the pipeline too.
    outcomes = worker.outcomes_after(log_offset, wait_for={"media.notify": len(upload_ids)})
    after = _tree_usage(worker.process.pid)
    redis_after = _tree_usage(redis_server.process.pid) if redis_server else Usage(0.0, 0.0)

    names = variant_names.names if variant_names else {}
    durations = [
        (f"{task} {names.get(task_id, '?')}" if task == "media.make_variant" else task, seconds)
        for task, task_id, seconds in outcomes
    ]
    variants = defaultdict(dict)
    for upload_id, name, width, height, size in UploadVariant.objects.filter(
        upload_id__in=upload_ids
    ).values_list("upload_id", "name", "width", "height", "bytes"):
        variants[upload_id][name] = (width, height, size)
    originals = {
        pk: (width, height, size)
        for pk, width, height, size in uploads.values_list(
            "pk", "width", "height", "original_bytes"
        )
    }
    outputs = [{"original": originals[pk], **variants[pk]} for pk in upload_ids]
    return PipelineResult(
        publish_seconds=published_at[1] - published_at[0],
        wall_seconds=last_ready - published_at[0],
        cpu_seconds=after.cpu - before.cpu,
        waited_seconds=after.waited - before.waited,
        redis_cpu_seconds=redis_after.cpu - redis_before.cpu,
        request_cpu_seconds=request_cpu_seconds,
        durations=durations,
        outputs=outputs,
    )


class VariantNames(threading.Thread):
    """Which variant each media.make_variant task made, from the worker's task-received events
    (the outcome log line names the task, not its arguments), as Flower learns it."""

    def __init__(self) -> None:
        super().__init__(name="variant-names", daemon=True)
        self.names: dict[str, str] = {}
        self.receiver = None

    def run(self) -> None:
        from config.celery import app

        with app.connection_for_read() as connection:
            self.receiver = app.events.Receiver(
                connection, handlers={"task-received": self._received}
            )
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _received(self, event: dict) -> None:
        if event.get("name") == "media.make_variant":
            _, name = ast.literal_eval(event["args"])
            self.names[event["uuid"]] = name

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True  # seen within a second, between two reads
        if self.is_alive():
            self.join(timeout=5)


class MediaWorker(support.Worker):
    """`celery -A config worker -Q media --concurrency 2 --pool prefork`: the Procfile's
    `worker_heavy` at its default size, on the media queue alone."""

    def __init__(self, *, logfile: Path) -> None:
        super().__init__(
            name_prefix="bench-images",
            logfile=logfile,
            concurrency=WORKER_CONCURRENCY,
            queues=["media"],
        )

    def log_size(self) -> int:
        return self.logfile.stat().st_size

    def outcomes_after(
        self, offset: int, *, wait_for: dict[str, int]
    ) -> list[tuple[str, str, float]]:
        """(task, id, seconds) of every successful outcome logged after `offset`, once at least
        `wait_for[task]` of each task are there."""
        deadline = time.monotonic() + STUCK_SECONDS
        while True:
            with self.logfile.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            outcomes = [
                (match["task"], match["id"], float(match["ms"]) / 1000)
                for match in OUTCOME_LINE.finditer(text)
                if match["outcome"] == "success"
            ]
            counts = defaultdict(int)
            for task, _, _ in outcomes:
                counts[task] += 1
            if all(counts[task] >= count for task, count in wait_for.items()):
                return outcomes
            if time.monotonic() > deadline:
                raise RuntimeError(f"missing task outcomes {dict(counts)}:\n{self.log_tail()}")
            time.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Usage:
    cpu: float  # seconds running, user + system
    waited: float  # seconds runnable but waiting for a core: the machine's other load


def _tree_usage(pid: int) -> Usage:
    """CPU and run-queue wait of a process and its children so far, every thread included.

    CPU of a child already gone (a recycled pool process) is in the parent's cutime/cstime;
    its wait is lost, so `waited` is a lower bound then.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_ticks, waited = 0, 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) may hold spaces; the fields after its ")" do not.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid:
                cpu_ticks += sum(int(value) for value in fields[11:15])  # u/s time, cu/cs time
            elif int(fields[1]) == pid:
                cpu_ticks += int(fields[11]) + int(fields[12])  # utime stime
            else:
                continue
            waited += sum(_waited_seconds(thread) for thread in (entry / "task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while being read
    return Usage(cpu=cpu_ticks / ticks, waited=waited)


def _waited_seconds(thread: Path) -> float:
    # schedstat: nanoseconds on a CPU, nanoseconds runnable in a run queue, timeslices.
    return int((thread / "schedstat").read_text().split()[1]) / 1e9


# --- the photos -------------------------------------------------------------------------------


def _photos_write(*, count: int, folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"photo-{index:03d}.jpg"
        path.write_bytes(_photo(index))
        paths.append(path)
        print(f"photo {index + 1}/{count} made", file=sys.stderr, flush=True)
    return paths


def _photo(index: int) -> bytes:
    """A 12 MP JPEG with a photo's mix of detail, so it costs what a photo costs to decode and
    encode (a flat colour compresses to nothing and decodes several times faster): smooth
    gradients, a blotchy mid-scale texture, hard-edged shapes and per-pixel sensor grain,
    ~4 MB at quality 90 as phones write. Odd ones are portrait shots as phones store them:
    landscape pixels with EXIF orientation 6 (rotate 90 degrees to view) and a GPS position.
    The same index always gives the same photo."""
    chance = random.Random(index)
    width, height = PHOTO_SIZE
    # Gradients and texture at an eighth of the size, enlarged: smooth like sky and skin.
    small = (width // 8, height // 8)
    ramp = Image.linear_gradient("L")
    scene = Image.merge(
        "RGB", [ramp.rotate(chance.uniform(0, 360)).resize(small) for _ in range(3)]
    )
    draw = ImageDraw.Draw(scene)
    for _ in range(30):
        x, y, r = chance.randrange(small[0]), chance.randrange(small[1]), chance.randrange(5, 100)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(chance))
    blotches = Image.frombytes("RGB", small, chance.randbytes(small[0] * small[1] * 3))
    scene = ImageChops.add(scene, blotches.point(lambda value: 96 + value // 4), offset=-128)
    photo = scene.resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    # Hard edges at full size, as objects have.
    draw = ImageDraw.Draw(photo)
    for _ in range(25):
        x, y, r = chance.randrange(width), chance.randrange(height), chance.randrange(40, 600)
        corners = [(x + chance.randint(-r, r), y + chance.randint(-r, r)) for _ in range(5)]
        draw.polygon(corners, fill=_colour(chance))
    # Grain of +-16 levels per pixel and band: what keeps a real photo from compressing well.
    grain = Image.frombytes("RGB", PHOTO_SIZE, chance.randbytes(width * height * 3))
    photo = ImageChops.add(photo, grain.point(lambda value: 112 + value // 8), offset=-128)

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Bench"
    exif[ExifTags.Base.Model] = "Phone 12MP"
    if index % 2:
        exif[ExifTags.Base.Orientation] = 6
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSLatitudeRef] = "N"
        gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.5)
        gps[ExifTags.GPS.GPSLongitudeRef] = "E"
        gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 3.25)
    else:
        exif[ExifTags.Base.Orientation] = 1
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=PHOTO_QUALITY, exif=exif)
    return buffer.getvalue()


def _colour(chance: random.Random) -> tuple[int, int, int]:
    return chance.randrange(256), chance.randrange(256), chance.randrange(256)


# --- set-up -----------------------------------------------------------------------------------


def _forget_run(run: str) -> None:
    """Delete the user of this run, and with it its uploads and variants; on a DATABASE_URL
    they would outlive it (the files go with the temporary MEDIA_ROOT)."""
    from accounts.models import User

    User.objects.filter(email=f"bench-images-{run}@example.com").delete()


# --- output -----------------------------------------------------------------------------------


def _print_header(*, photos: list[Path], database_given: bool) -> None:
    from django.conf import settings

    megabytes = statistics.mean(photo.stat().st_size for photo in photos) / 1e6
    libjpeg = features.version("jpg")
    if features.check_feature("libjpeg_turbo"):
        libjpeg = f"libjpeg-turbo {features.version('libjpeg_turbo')}"
    width, height = PHOTO_SIZE

    support.print_run_header(
        title=(
            "Image pipeline throughput: upload -> all variants ready, worker vs a plain Pillow loop"
        ),
        script="bench/images.py",
        arguments=["--images", str(len(photos))],
        database_given=database_given,
        database_note="; MEDIA_ROOT a temporary folder",
    )
    print(
        f"versions    Python {platform.python_version()}, Pillow {PIL.__version__} "
        f"({libjpeg}), Celery {celery.__version__}, Django {django.__version__}, "
        f"redis-server {support.redis_server_version()}"
    )
    print(
        f"photos      {len(photos)} made here, {width}x{height}, JPEG q{PHOTO_QUALITY}, "
        f"{megabytes:.1f} MB on average, gradients + texture + shapes + grain;"
    )
    print("            every other one EXIF orientation 6 (portrait) with a GPS block")
    print(
        "outputs     normalized original + "
        + ", ".join(
            f"{spec.name} {spec.long_edge}" + (" square" if spec.square_crop else "")
            for spec in VARIANTS
        )
        + f"; JPEG original {ORIGINAL_JPEG}, variants {VARIANT_JPEG}"
    )
    print(
        "pipeline    upload_create() x N in one transaction, canvases published on commit to "
        "one worker -Q media,"
    )
    print(
        f"            prefork, concurrency {WORKER_CONCURRENCY}, prefetch multiplier "
        f"{settings.CELERY_WORKER_PREFETCH_MULTIPLIER}, paused while publishing; timed from "
        "the first publish"
    )
    print("            to the last ready_at; CPU of the worker and its pool processes (/proc)")
    print(
        "loop        this process, one photo at a time: decode once, exif_transpose, save the "
        "original,"
    )
    print(
        f"            resize each variant from those pixels (LANCZOS, reducing_gap "
        f"{REDUCING_GAP:g}), same save options;"
    )
    print("            run in two halves, before and after the pipeline; CPU of this process")
    print(f"warm-up     {WARM_UP_IMAGES} uploads through the worker, 1 photo through the loop")
    print()


def _print_results(*, photos: list[Path], loop: LoopResult, pipeline: PipelineResult) -> None:
    count = len(photos)
    rates = {"pipeline": count / pipeline.wall_seconds, "loop": count / loop.wall_seconds}
    cpu = {"pipeline": pipeline.cpu_seconds / count, "loop": loop.cpu_seconds / count}
    # Share of the cores each side had: below its core count, something else took the CPU
    # (other processes) or the side waited (locks, disk).
    used = {
        "pipeline": pipeline.cpu_seconds / pipeline.wall_seconds / WORKER_CONCURRENCY,
        "loop": loop.cpu_seconds / loop.wall_seconds,
    }
    print(f"{'':40}{'pipeline':>12}{'loop':>12}{'pipeline/loop':>15}")
    for label, values, number in [
        ("images/s", rates, "{:.3f}"),
        ("wall seconds per image", {side: 1 / rate for side, rate in rates.items()}, "{:.3f}"),
        ("CPU seconds per image", cpu, "{:.3f}"),
    ]:
        print(
            f"{label:40}{number.format(values['pipeline']):>12}{number.format(values['loop']):>12}"
            f"{values['pipeline'] / values['loop']:>15.2f}"
        )
    waited = {
        "pipeline": pipeline.waited_seconds / count,
        "loop": loop.waited_seconds / count,
    }
    print(
        f"{'waiting for a core, s per image':40}{waited['pipeline']:>12.3f}{waited['loop']:>12.3f}"
    )
    print(f"{'share of its cores busy (2 / 1)':40}{used['pipeline']:>12.0%}{used['loop']:>12.0%}")
    print(
        f"(pipeline: {pipeline.wall_seconds:.1f} s for {count} uploads, of which "
        f"{pipeline.publish_seconds * 1000:.0f} ms publishing; loop: {loop.wall_seconds:.1f} s)"
    )
    print()
    ratio = rates["pipeline"] / rates["loop"]
    # Two estimates of the ratio on a machine with nothing else to run, for a busy one: each
    # side's wall time without its wait for a core (the pipeline's wait is shared by its two
    # processes); and the bound two fully used cores give from the CPU per image.
    pipeline_alone = pipeline.wall_seconds - pipeline.waited_seconds / WORKER_CONCURRENCY
    unloaded = (loop.wall_seconds - loop.waited_seconds) / pipeline_alone
    ideal = WORKER_CONCURRENCY * cpu["loop"] / cpu["pipeline"]
    verdict = "met" if ratio >= MIN_THROUGHPUT_RATIO else "MISSED"
    print(f"{'target (from the issue)':40}{'measured':>12}{'target':>12}{'verdict':>15}")
    print(
        f"{'images/s pipeline/loop':40}{ratio:>12.2f}{f'>= {MIN_THROUGHPUT_RATIO:g}':>12}"
        f"{verdict:>15}"
    )
    print(f"{'  estimate: without waits for a core':40}{unloaded:>12.2f}")
    print(f"{'  bound: 2 x loop CPU / pipeline CPU':40}{ideal:>12.2f}")
    print()

    _print_breakdown(count=count, loop=loop, pipeline=pipeline)
    print()
    print(_outputs_compared(loop.outputs, pipeline.outputs))
    print(
        f"not counted above: redis-server {pipeline.redis_cpu_seconds / count * 1000:.0f} ms CPU "
        f"per image (broker, chord counts, events); upload_create() in this process "
        f"{pipeline.request_cpu_seconds / count * 1000:.0f} ms CPU per upload"
    )
    print(f"load average {support.load_average()} at the end")


def _print_breakdown(*, count: int, loop: LoopResult, pipeline: PipelineResult) -> None:
    """Mean wall time per step: each pipeline task as its outcome line reports it (from the
    task starting to its return, database and Redis work included), against the loop's code
    making the same file."""
    by_step = defaultdict(list)
    for step, seconds in pipeline.durations:
        by_step[step].append(seconds)
    loop_ms = {step: statistics.mean(seconds) * 1000 for step, seconds in loop.steps.items()}
    # Every photo has the same size, so every canvas splits its variants the same way.
    in_normalize = [spec.name for spec in variants_needing_every_pixel(PHOTO_SIZE)]
    normalize_steps = ["decode", "transpose", "save original", *in_normalize]
    # (task as the durations name it, loop ms for the same files or None, what the loop did
    # for them or what the task did instead)
    rows = [
        (
            "media.normalize",
            sum(loop_ms[step] for step in normalize_steps),
            " + ".join(normalize_steps[:3])
            + "".join(f" + resize, save {name}" for name in in_normalize),
        ),
        *(
            (f"media.make_variant {spec.name}", None, "(found it made by normalize)")
            if spec.name in in_normalize
            else (
                f"media.make_variant {spec.name}",
                loop_ms[spec.name],
                f"resize + save {spec.name}",
            )
            for spec in VARIANTS
        ),
        ("media.finalize", None, ""),
        ("media.notify", None, ""),
    ]
    print("per step, mean ms per image (wall)")
    print(f"{'':32}{'tasks':>7}{'pipeline':>10}{'loop':>9}   loop step")
    pipeline_total = loop_total = 0.0
    for step, loop_step_ms, loop_label in rows:
        label = step + (
            "".join(f" +{n}" for n in in_normalize) if step == "media.normalize" else ""
        )
        durations = by_step.pop(step, [])
        pipeline_ms = statistics.mean(durations) * 1000 if durations else 0.0
        pipeline_total += pipeline_ms
        loop_total += loop_step_ms or 0.0
        loop_cell = "-" if loop_step_ms is None else f"{loop_step_ms:.0f}"
        print(f"{label:32}{len(durations):>7}{pipeline_ms:>10.0f}{loop_cell:>9}   {loop_label}")
    for step, durations in sorted(by_step.items()):  # a variant whose event never arrived
        print(f"{step:32}{len(durations):>7}{statistics.mean(durations) * 1000:>10.0f}")
    print(f"{'sum per image':32}{'':>7}{pipeline_total:>10.0f}{loop_total:>9.0f}")
    print(
        f"{'CPU per image':32}{'':>7}{pipeline.cpu_seconds / count * 1000:>10.0f}"
        f"{loop.cpu_seconds / count * 1000:>9.0f}"
    )
    loop_parts = ", ".join(
        f"{step} {ms:.0f}"
        for step, ms in loop_ms.items()
        if step in ("decode", "transpose", "save original")
    )
    print(f"loop's normalize: {loop_parts} ms")
    print("(wall times: on a busy machine a step also waits for a core, so they exceed CPU)")


def _outputs_compared(
    loop: list[dict[str, tuple[int, int, int]]], pipeline: list[dict[str, tuple[int, int, int]]]
) -> str:
    names = ["original", *(spec.name for spec in VARIANTS)]
    different = [
        f"photo {index} {name}: loop {a[name][:2]}, pipeline {b.get(name, ('missing',))[:2]}"
        for index, (a, b) in enumerate(zip(loop, pipeline, strict=True))
        for name in names
        if a[name][:2] != b.get(name, (None, None, None))[:2]
    ]
    files = len(loop) * len(names)
    loop_mb = sum(size for outputs in loop for _, _, size in outputs.values()) / 1e6
    pipeline_mb = sum(size for outputs in pipeline for _, _, size in outputs.values()) / 1e6
    summary = (
        f"outputs: {files - len(different)}/{files} files the same size on both sides; "
        f"{pipeline_mb:.1f} MB written by the pipeline, {loop_mb:.1f} MB by the loop"
    )
    if different:
        summary += "\n  " + "\n  ".join(different[:10])
    return summary


if __name__ == "__main__":
    support.run(main)
