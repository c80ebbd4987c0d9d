"""Image pipeline throughput: phone-sized photos through the media worker, against a plain loop.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
MEDIA_ROOT (a temporary folder) and one `celery worker -Q media` with two pool processes, then
prints, for each kind of photo, a table: images per second and CPU seconds per image of

  1. the project's path: `media.services.upload_create()` for every photo in one transaction,
     each publishing its processing on commit (up to 6 MP normalize alone, which makes every
     variant; a larger photo its canvas: normalize, which also makes the variants that need
     every pixel -> group of the other variants' tasks -> finalize), then notify, until every
     upload is ready;
  2. a plain one-process Pillow loop making the same files: each photo decoded once, made
     upright, saved as the normalized original, then resized to the four variants;

their ratio against the issue's target, and where each side spends its time. It asserts
nothing: timings belong to the machine they were taken on.

    .venv/bin/python bench/images.py [--images 24] [--photos grainy,smooth,small,mix]

Each kind of photo gets its own table, and a summary ends the run: a task's fixed cost weighs
most on the photos that are cheapest to decode, so a kind alone would hide it.
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
import resource
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
from jobs.memory import freed_memory_kept
from media.images import (
    ORIGINAL_JPEG,
    REDUCING_GAP,
    VARIANT_JPEG,
    VARIANTS,
    variants_made_by_normalize,
)
from tests import processes

DEFAULT_IMAGES = 24
PHOTO_QUALITY = 90


@dataclass(frozen=True)
class PhotoKind:
    name: str
    size: tuple[int, int]  # landscape, as the sensor stores it
    # The blotchy texture is drawn at 1/texture_scale of the size and enlarged: 8 looks like
    # foliage or gravel, 32 like sky, skin and walls.
    texture_scale: int
    grain: int  # per-pixel sensor noise, +- levels per band; what compresses worst
    description: str


# Photos as phones take them, at JPEG quality 90. Decoding cost follows the file's entropy as
# much as its pixels: a smooth 12 MP photo decodes about twice as fast as a grainy one.
PHOTO_KINDS = {
    "grainy": PhotoKind("grainy", (4000, 3000), 8, 16, "12 MP, detailed and grainy"),
    "smooth": PhotoKind("smooth", (4000, 3000), 32, 0, "12 MP, smooth"),
    "small": PhotoKind("small", (1632, 1224), 32, 0, "2 MP, smooth"),
}
# Every other photo smooth 12 MP, the others small: what a feed of phone and messenger photos is.
MIXED = "mix"
MIX = (PHOTO_KINDS["smooth"], PHOTO_KINDS["small"])
PHOTO_CHOICES = [*PHOTO_KINDS, MIXED]
# The media worker as the issue sizes it: one prefork worker, two pool processes (two cores).
WORKER_CONCURRENCY = 2
# The target: two pool processes do at least 1.6x the images per second of one loop.
MIN_THROUGHPUT_RATIO = 1.6
# Uploads run through the worker before anything is timed: one per pool process, so both have
# imported Pillow and opened their database and Redis connections.
WARM_UP_IMAGES = WORKER_CONCURRENCY
# How the per-step table names a variant's task that found its variant made by normalize.
FOUND_MADE = ", made by normalize"
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
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help=f"photos per side and kind ({DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--photos",
        default=",".join(PHOTO_CHOICES),
        help=f"kinds of photo, each measured on its own ({','.join(PHOTO_CHOICES)})",
    )
    arguments = parser.parse_args()
    images = arguments.images
    if images < 2:
        parser.error("--images must be at least 2: the loop runs in two halves")
    choices = arguments.photos.split(",")
    if not choices or not set(choices) <= set(PHOTO_CHOICES):
        parser.error(f"--photos takes some of {','.join(PHOTO_CHOICES)}")

    database_given = support.database_given()
    run = uuid.uuid4().hex[:8]
    with support.scratch_folder(prefix="celery-saas-bench-images-") as workdir:
        # First, while nothing else of the benchmark runs: it takes about a second a photo.
        photo_sets = {
            choice: _photos_write(choice=choice, count=images, folder=workdir / "photos" / choice)
            for choice in choices
        }
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
            task_events = TaskEvents()
            try:
                worker.start()
                task_events.start()
                _run(
                    photo_sets=photo_sets,
                    run=run,
                    workdir=workdir,
                    worker=worker,
                    redis_server=redis_server,
                    task_events=task_events,
                    database_given=database_given,
                )
            finally:
                task_events.stop()
                worker.stop()
                if database_given:
                    _forget_run(run)


@dataclass
class LoopResult:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    waited_seconds: float = 0.0
    page_faults: int = 0
    # Seconds per step name, one entry per photo.
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Per photo: {"original" or a variant name: (width, height, bytes)}.
    outputs: list[dict[str, tuple[int, int, int]]] = field(default_factory=list)
    # Per photo: its size as stored (before EXIF rotation), which decides what normalize makes.
    sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class PipelineResult:
    publish_seconds: float
    wall_seconds: float
    cpu_seconds: float
    waited_seconds: float
    page_faults: int
    redis_cpu_seconds: float
    request_cpu_seconds: float
    # (task name or "media.make_variant <variant>[FOUND_MADE]", seconds) per task outcome.
    durations: list[tuple[str, float]]
    outputs: list[dict[str, tuple[int, int, int]]]


def _run(
    *,
    photo_sets: dict[str, list[Path]],
    run: str,
    workdir: Path,
    worker: "MediaWorker",
    redis_server: processes.RedisServer,
    task_events: "TaskEvents",
    database_given: bool,
) -> None:
    from accounts.models import User

    owner = User.objects.create_user(email=f"bench-images-{run}@example.com", password=None)
    # The loop runs with the worker's malloc settings, so that the ratio compares the work and
    # its scheduling, not two ways of getting memory.
    kept_memory = freed_memory_kept()
    _print_header(photo_sets=photo_sets, database_given=database_given, kept_memory=kept_memory)

    first = next(iter(photo_sets.values()))
    _pipeline(
        photos=first[:WARM_UP_IMAGES],
        owner=owner,
        worker=worker,
        redis_server=None,
        task_events=task_events,
    )
    _loop(first[:1], folder=workdir / "loop-warm-up")

    ratios = {}
    for choice, photos in photo_sets.items():
        print(f"--- {_choice_description(choice, photos)}")
        print()
        ratios[choice] = _measure(
            photos=photos,
            owner=owner,
            folder=workdir / "loop" / choice,
            worker=worker,
            redis_server=redis_server,
            task_events=task_events,
        )
        print()
    _print_summary(ratios)
    print(f"load average {support.load_average()} at the end")


def _measure(
    *,
    photos: list[Path],
    owner,
    folder: Path,
    worker: "MediaWorker",
    redis_server: processes.RedisServer,
    task_events: "TaskEvents",
) -> float:
    """One kind of photo through the loop and the pipeline; prints its table, returns the
    ratio of images per second, pipeline/loop."""
    # The loop runs in two halves, before and after the pipeline: load from other processes
    # on the machine drifts over seconds, and this spreads it over both sides.
    half = len(photos) // 2
    loop = _loop(photos[:half], folder=folder)
    print("loop, first half measured", file=sys.stderr, flush=True)
    pipeline = _pipeline(
        photos=photos,
        owner=owner,
        worker=worker,
        redis_server=redis_server,
        task_events=task_events,
    )
    print("pipeline measured", file=sys.stderr, flush=True)
    second = _loop(photos[half:], folder=folder, first_index=half)
    loop.wall_seconds += second.wall_seconds
    loop.cpu_seconds += second.cpu_seconds
    loop.waited_seconds += second.waited_seconds
    loop.page_faults += second.page_faults
    for step, seconds in second.steps.items():
        loop.steps[step] += seconds
    loop.outputs += second.outputs
    loop.sizes += second.sizes

    return _print_results(photos=photos, loop=loop, pipeline=pipeline)


# --- the plain loop ---------------------------------------------------------------------------


def _loop(photos: list[Path], *, folder: Path, first_index: int = 0) -> LoopResult:
    """Every photo through the plain Pillow code, one after the other, in this process."""
    result = LoopResult()
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    waited_before = _waited_seconds(Path("/proc/thread-self"))
    faults_before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for index, photo in enumerate(photos, start=first_index):
        result.outputs.append(_loop_one(photo, folder=folder / str(index), steps=result.steps))
    result.wall_seconds = time.perf_counter() - started_wall
    result.cpu_seconds = time.process_time() - started_cpu
    result.waited_seconds = _waited_seconds(Path("/proc/thread-self")) - waited_before
    result.page_faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults_before
    result.sizes = [_stored_size(photo) for photo in photos]
    return result


def _stored_size(photo: Path) -> tuple[int, int]:
    with Image.open(photo) as image:
        return image.size


def _made_by_normalize(size: tuple[int, int]) -> set[str]:
    return {spec.name for spec in variants_made_by_normalize(size)}


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
    task_events: "TaskEvents",
) -> PipelineResult:
    """Upload every photo through the real path and wait until all are ready.

    The worker consumes nothing while the uploads are created, in one transaction: on its
    commit every canvas is published, in a burst, then the worker resumes with all N
    normalize messages queued. The variants of each upload queue behind the normalizes still
    waiting, so both pool processes stay busy until the last few tasks, and the figure is
    the worker's throughput, not one upload's latency; had the uploads trickled in, an idle
    process would wait for each one. Timed from the first task starting (its task-started
    event) to the last upload's ready_at, as the worker wrote it.
    """
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction

    from media.models import Upload, UploadVariant
    from media.services import upload_create

    published_at: list[float] = []
    log_offset = worker.log_size()
    before = _tree_usage(worker.process.pid)
    redis_before = _tree_usage(redis_server.process.pid) if redis_server else Usage(0.0, 0.0, 0)
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
    redis_after = _tree_usage(redis_server.process.pid) if redis_server else Usage(0.0, 0.0, 0)

    names = task_events.names
    made_by_normalize = {
        str(pk): _made_by_normalize(_stored_size(photo))
        for pk, photo in zip(upload_ids, photos, strict=True)
    }

    def step(task: str, task_id: str) -> str:
        if task != "media.make_variant":
            return task
        upload_id, name = names.get(task_id, ("", "?"))
        found = name in made_by_normalize.get(upload_id, ())
        return f"{task} {name}" + (FOUND_MADE if found else "")

    durations = [(step(task, task_id), seconds) for task, task_id, seconds in outcomes]
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
        # From the first task starting, as the loop is timed from its first photo: publishing
        # and resuming the paused worker are the benchmark's doing, and on a run of cheap
        # photos lasting two seconds they would weigh as a tenth of it.
        wall_seconds=last_ready - task_events.first_start_after(published_at[0]),
        cpu_seconds=after.cpu - before.cpu,
        waited_seconds=after.waited - before.waited,
        page_faults=after.faults - before.faults,
        redis_cpu_seconds=redis_after.cpu - redis_before.cpu,
        request_cpu_seconds=request_cpu_seconds,
        durations=durations,
        outputs=outputs,
    )


class TaskEvents(threading.Thread):
    """What the worker's task events tell, as Flower learns it: which upload and variant each
    media.make_variant task was for (the outcome log line names the task, not its arguments),
    and when tasks started."""

    def __init__(self) -> None:
        super().__init__(name="task-events", daemon=True)
        self.names: dict[str, tuple[str, str]] = {}
        self.events = 0  # task-received events of any task
        self.started: list[float] = []  # time.time() in the worker, one clock with this process
        self.receiver = None

    def run(self) -> None:
        from config.celery import app

        with app.connection_for_read() as connection:
            self.receiver = app.events.Receiver(
                connection,
                handlers={"task-received": self._on_received, "task-started": self._on_started},
            )
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_received(self, event: dict) -> None:
        self.events += 1
        if event.get("name") == "media.make_variant":
            kwargs = ast.literal_eval(event["kwargs"])
            self.names[event["uuid"]] = (kwargs["upload_id"], kwargs["name"])

    def _on_started(self, event: dict) -> None:
        self.started.append(event["timestamp"])

    def first_start_after(self, moment: float) -> float:
        started = [started for started in self.started if started >= moment]
        if not started:
            raise RuntimeError("no task-started events arrived from the worker: timing needs them")
        return min(started)

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
    # Minor page faults: fresh memory touched, each a zeroed page the kernel hands out.
    faults: int


def _tree_usage(pid: int) -> Usage:
    """CPU, run-queue wait and page faults of a process and its children so far, every thread
    included.

    CPU and faults of a child already gone (a recycled pool process) are in the parent's
    cutime/cstime and cminflt; its wait is lost, so `waited` is a lower bound then.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_ticks, waited, faults = 0, 0.0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) may hold spaces; the fields after its ")" do not.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid:
                cpu_ticks += sum(int(value) for value in fields[11:15])  # u/s time, cu/cs time
                faults += int(fields[7]) + int(fields[8])  # minflt, cminflt
            elif int(fields[1]) == pid:
                cpu_ticks += int(fields[11]) + int(fields[12])  # utime stime
                faults += int(fields[7])
            else:
                continue
            waited += sum(_waited_seconds(thread) for thread in (entry / "task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while being read
    return Usage(cpu=cpu_ticks / ticks, waited=waited, faults=faults)


def _waited_seconds(thread: Path) -> float:
    # schedstat: nanoseconds on a CPU, nanoseconds runnable in a run queue, timeslices.
    return int((thread / "schedstat").read_text().split()[1]) / 1e9


# --- the photos -------------------------------------------------------------------------------


def _photos_write(*, choice: str, count: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"photo-{index:03d}.jpg"
        path.write_bytes(_photo(index, _photo_kind(choice, index)))
        paths.append(path)
        print(f"{choice} photo {index + 1}/{count} made", file=sys.stderr, flush=True)
    return paths


def _photo_kind(choice: str, index: int) -> PhotoKind:
    # In a mix, pairs alternate, so that both kinds have landscape and portrait photos.
    return MIX[index // 2 % 2] if choice == MIXED else PHOTO_KINDS[choice]


def _photo(index: int, kind: PhotoKind) -> bytes:
    """A JPEG with a photo's mix of detail, so it costs what such a photo costs to decode and
    encode (a flat colour compresses to nothing and decodes several times faster): smooth
    gradients, a blotchy texture, hard-edged shapes and, for a grainy kind, per-pixel sensor
    noise (a grainy 12 MP photo is ~4 MB at quality 90 as phones write, a smooth one ~1 MB).
    Odd ones are portrait shots as phones store them: landscape pixels with EXIF orientation 6
    (rotate 90 degrees to view) and a GPS position. The same index and kind give the same
    photo."""
    chance = random.Random(index)
    width, height = kind.size
    # Gradients at an eighth of the size, enlarged: smooth like sky and skin.
    small = (width // 8, height // 8)
    ramp = Image.linear_gradient("L")
    scene = Image.merge(
        "RGB", [ramp.rotate(chance.uniform(0, 360)).resize(small) for _ in range(3)]
    )
    draw = ImageDraw.Draw(scene)
    for _ in range(30):
        x, y, r = chance.randrange(small[0]), chance.randrange(small[1]), chance.randrange(5, 100)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_colour(chance))
    texture = (width // kind.texture_scale, height // kind.texture_scale)
    blotches = Image.frombytes("RGB", texture, chance.randbytes(texture[0] * texture[1] * 3))
    if texture != small:
        blotches = blotches.resize(small, Image.Resampling.BICUBIC)
    scene = ImageChops.add(scene, blotches.point(lambda value: 96 + value // 4), offset=-128)
    photo = scene.resize(kind.size, Image.Resampling.BICUBIC)
    # Hard edges at full size, as objects have.
    draw = ImageDraw.Draw(photo)
    for _ in range(25):
        x, y, r = chance.randrange(width), chance.randrange(height), chance.randrange(40, 600)
        corners = [(x + chance.randint(-r, r), y + chance.randint(-r, r)) for _ in range(5)]
        draw.polygon(corners, fill=_colour(chance))
    if kind.grain:
        # What keeps a real photo from compressing well.
        noise = Image.frombytes("RGB", kind.size, chance.randbytes(width * height * 3))
        levels = 2 * kind.grain + 1
        noise = noise.point(lambda value: 128 - kind.grain + value * levels // 256)
        photo = ImageChops.add(photo, noise, offset=-128)

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Bench"
    exif[ExifTags.Base.Model] = "Phone"
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


def _print_header(
    *, photo_sets: dict[str, list[Path]], database_given: bool, kept_memory: bool
) -> None:
    from django.conf import settings

    libjpeg = features.version("jpg")
    if features.check_feature("libjpeg_turbo"):
        libjpeg = f"libjpeg-turbo {features.version('libjpeg_turbo')}"
    photos = next(iter(photo_sets.values()))

    support.print_run_header(
        title=(
            "Image pipeline throughput: upload -> all variants ready, worker vs a plain Pillow loop"
        ),
        script="bench/images.py",
        arguments=["--images", str(len(photos)), "--photos", ",".join(photo_sets)],
        database_given=database_given,
        database_note="; MEDIA_ROOT a temporary folder",
    )
    print(
        f"versions    Python {platform.python_version()}, Pillow {PIL.__version__} "
        f"({libjpeg}), Celery {celery.__version__}, Django {django.__version__}, "
        f"redis-server {support.redis_server_version()}"
    )
    print(
        f"photos      {len(photos)} per kind made here, JPEG q{PHOTO_QUALITY}, gradients + "
        "texture + shapes (+ grain);"
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
        "the first task's start"
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
    print("            run in two halves, before and after the pipeline; CPU of this process;")
    print(f"            malloc keeps freed memory as in the worker (jobs/memory.py): {kept_memory}")
    print(f"warm-up     {WARM_UP_IMAGES} uploads through the worker, 1 photo through the loop")
    print()


def _choice_description(choice: str, photos: list[Path]) -> str:
    kinds = MIX if choice == MIXED else (PHOTO_KINDS[choice],)
    described = " and ".join(
        f"{kind.description} ({kind.size[0]}x{kind.size[1]})" for kind in kinds
    )
    megabytes = statistics.mean(photo.stat().st_size for photo in photos) / 1e6
    return f"{choice}: {described}, {megabytes:.2f} MB on average"


def _print_summary(ratios: dict[str, float]) -> None:
    print(f"summary: images/s pipeline/loop, target >= {MIN_THROUGHPUT_RATIO:g} for every kind")
    for choice, ratio in ratios.items():
        verdict = "met" if ratio >= MIN_THROUGHPUT_RATIO else "MISSED"
        print(f"  {choice:10}{ratio:>8.2f}{verdict:>10}")


def _print_results(*, photos: list[Path], loop: LoopResult, pipeline: PipelineResult) -> float:
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
    faults = {"pipeline": pipeline.page_faults / count, "loop": loop.page_faults / count}
    print(
        f"{'page faults per image (fresh memory)':40}{faults['pipeline']:>12.0f}"
        f"{faults['loop']:>12.0f}"
    )
    print(
        f"(pipeline: {pipeline.wall_seconds:.2f} s for {count} uploads from the first task's "
        f"start, after {pipeline.publish_seconds * 1000:.0f} ms publishing; loop: "
        f"{loop.wall_seconds:.2f} s)"
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
    return ratio


def _print_breakdown(*, count: int, loop: LoopResult, pipeline: PipelineResult) -> None:
    """Mean wall time per step: each pipeline task as its outcome line reports it (from the
    task starting to its return, database and Redis work included), against the loop's code
    making the same files for the same photos."""
    by_step = defaultdict(list)
    for step, seconds in pipeline.durations:
        by_step[step].append(seconds)
    made_by_normalize = [_made_by_normalize(size) for size in loop.sizes]

    def loop_mean_ms(step_of_photo) -> float | None:
        # The loop's time for what the task did, over the photos whose canvas ran that task.
        seconds = [step_of_photo(index) for index in range(len(loop.sizes))]
        seconds = [value for value in seconds if value is not None]
        return statistics.mean(seconds) * 1000 if seconds else None

    def as_normalize(index: int) -> float:
        steps = ["decode", "transpose", "save original", *made_by_normalize[index]]
        return sum(loop.steps[step][index] for step in steps)

    def own_task(name: str):
        return lambda index: None if name in made_by_normalize[index] else loop.steps[name][index]

    # (task as the durations name it, loop ms for the same files or None, the loop's step)
    rows = [
        (
            "media.normalize",
            loop_mean_ms(as_normalize),
            "decode + transpose + save original + resize, save what it makes",
        )
    ]
    for spec in VARIANTS:
        task = f"media.make_variant {spec.name}"
        rows.append((task, loop_mean_ms(own_task(spec.name)), f"resize + save {spec.name}"))
        rows.append((task + FOUND_MADE, None, "(nothing: it finds its row)"))
    rows += [("media.finalize", None, ""), ("media.notify", None, "")]
    print("per step, mean ms per task (wall)")
    print(f"{'':48}{'tasks':>7}{'pipeline':>10}{'loop':>9}   loop step")
    pipeline_total = 0.0
    for step, loop_step_ms, loop_label in rows:
        durations = by_step.pop(step, [])
        if not durations:
            continue
        pipeline_ms = statistics.mean(durations) * 1000
        pipeline_total += pipeline_ms * len(durations) / count
        loop_cell = "-" if loop_step_ms is None else f"{loop_step_ms:.0f}"
        print(f"{step:48}{len(durations):>7}{pipeline_ms:>10.0f}{loop_cell:>9}   {loop_label}")
    for step, durations in sorted(by_step.items()):  # a variant whose event never arrived
        print(f"{step:48}{len(durations):>7}{statistics.mean(durations) * 1000:>10.0f}")
    loop_total = sum(statistics.mean(seconds) for seconds in loop.steps.values()) * 1000
    print(f"{'sum per image':48}{'':>7}{pipeline_total:>10.0f}{loop_total:>9.0f}")
    print(
        f"{'CPU per image':48}{'':>7}{pipeline.cpu_seconds / count * 1000:>10.0f}"
        f"{loop.cpu_seconds / count * 1000:>9.0f}"
    )
    loop_parts = ", ".join(
        f"{step} {statistics.mean(loop.steps[step]) * 1000:.0f}"
        for step in ("decode", "transpose", "save original")
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
