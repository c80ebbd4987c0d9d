"""PDF reports end to end: a dispatch to every subscriber until each report is ready, against a
bare one-process WeasyPrint loop rendering the same PDFs.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
MEDIA_ROOT and one `celery worker -Q reports` with two pool processes, as the Procfile's heavy
worker runs (pool processes replaced past CELERY_WORKER_MAX_MEMORY_PER_CHILD or 500 tasks).
The subscribers, all on monthly reports, have last month's activity in three sizes, so that a
fixed cost per report shows: half none (a one-page report), four in ten 10 uploads, one in ten
300 (a table over pages). Then it prints:

1. the project's path: `reports_dispatch()` as beat runs it (the run, the batch in chunks of
   500, one report row and one queued render per subscriber), until every report is ready
   (rendered, written to disk, its email queued), in reports per second; against the loop:
   the same reports' templates rendered and laid out to PDF one after another in this
   process, their data read beforehand (no database, no disk, no broker); the ratio, and the
   goal (at least 1.6x with two pool processes);
2. one PDF of each size, taken apart: the template, parsing the HTML, loading the bundled
   fonts, layout, writing the PDF;
3. memory: the pool processes' resident size every 100 reports of the project's path, and
   this process's over 500 renders of the loop, which nothing recycles.

It asserts nothing.

    .venv/bin/python bench/reports.py [--subscribers 1000]

The worker consumes the `reports` queue only: each report's email is queued for the `emails`
queue, and stays there (sending mail is not what is measured).
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/reports.py` puts bench/ first on sys.path, where bench/queue.py would shadow
    # the standard library's `queue`, which Celery and kombu import.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import logging
import resource
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench import support
from tests import processes

DEFAULT_SUBSCRIBERS = 1_000
WORKER_CONCURRENCY = 2
GOAL = 1.6
# Subscribers' activity last month: (share, uploads), cheapest first.
SIZES = {"empty": (0.5, 0), "small": (0.4, 10), "busy": (0.1, 300)}
# The month reported: the run dispatches it just after it ended.
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
DISPATCH_AT = datetime(2026, 11, 1, 0, 5, tzinfo=UTC)
MEMORY_STEP = 100
LOOP_MEMORY_RENDERS = 500
# A render takes up to seconds; without a report made for this long, the worker is stuck.
STUCK_SECONDS = 120.0
INSERT_BATCH = 2_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=DEFAULT_SUBSCRIBERS)
    options = parser.parse_args()

    database_given = support.database_given()
    # The dispatch logs the month before the one it dispatches as skipped (the subscribers are
    # new): true, and not what is measured.
    logging.getLogger("reports.services").setLevel(logging.ERROR)
    with (
        support.scratch_folder(prefix="celery-saas-bench-reports-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(
            redis_url=redis_server.url,
            workdir=workdir,
            environment={"MEDIA_ROOT": str(workdir / "media")},
        )
        with support.Worker(
            name_prefix="bench-reports",
            logfile=workdir / "worker.log",
            concurrency=WORKER_CONCURRENCY,
            queues=["reports"],
        ) as worker:
            _print_header(subscribers=options.subscribers, database_given=database_given)
            users_by_size = _subscribers_made(options.subscribers)
            _warm_up(worker)
            _run(users_by_size, worker=worker)


def _run(users_by_size: dict[str, list[int]], *, worker: support.Worker) -> None:
    count = sum(len(users) for users in users_by_size.values())
    project, pool_memory = _measure_project(count, worker=worker)
    contexts = [_context_of(user_id) for users in users_by_size.values() for user_id in users]
    loop = _measure_loop(contexts)
    ratio = loop / project
    print(f"{'path':<44}{'seconds':>9}{'reports/s':>11}")
    print(f"{'dispatch -> every report ready (2 processes)':<44}{project:>9.1f}"
          f"{count / project:>11.1f}")  # fmt: skip
    print(f"{'one-process WeasyPrint loop':<44}{loop:>9.1f}{count / loop:>11.1f}")
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"ratio {ratio:.2f}x the loop's rate; goal >= {GOAL}x: {verdict}")
    print()
    _print_breakdown(users_by_size)
    _print_memory(pool_memory, contexts)
    print(f"load average   {support.load_average()} at the end")


# --- the data -------------------------------------------------------------------------------


def _subscribers_made(count: int) -> dict[str, list[int]]:
    """Monthly subscribers in UTC with last month's uploads, by size; their ids."""
    from django.contrib.auth import get_user_model

    from media.models import Upload
    from reports.models import ReportSchedule

    users_by_size = {}
    for size, (share, uploads) in SIZES.items():
        made = get_user_model().objects.bulk_create(
            get_user_model()(email=f"{size}-{n}@example.com", password="!")
            for n in range(round(count * share))
        )
        ids = [user.pk for user in made] or list(
            get_user_model()
            .objects.filter(email__startswith=f"{size}-")
            .values_list("pk", flat=True)  # databases that return no ids from bulk_create
        )
        ReportSchedule.objects.bulk_create(
            # Chosen before the month began: the dispatch sends the periods that end after.
            ReportSchedule(user_id=user_id, frequency="monthly", timezone="UTC", since=MONTH_START)
            for user_id in ids
        )
        rows = [
            Upload(
                owner_id=user_id,
                original_name=f"holiday-{n:03}.jpg",
                source_format="JPEG",
                source_bytes=250_000 + n * 1_000,
                status="ready",
                # Two hours apart: 300 uploads fill 25 days of the month.
                created_at=MONTH_START + timedelta(hours=2 * n + 1),
            )
            for user_id in ids
            for n in range(uploads)
        ]
        for start in range(0, len(rows), INSERT_BATCH):
            Upload.objects.bulk_create(rows[start : start + INSERT_BATCH])
        users_by_size[size] = ids
    return users_by_size


def _context_of(user_id: int) -> dict:
    """What the render of this subscriber's report is given: read here, before the loop's
    timing, so that the loop does the PDFs' work alone."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from reports import rendering
    from reports.periods import period_containing
    from reports.selectors import activity_in

    period = period_containing(MONTH_START, frequency="monthly", timezone="UTC")
    activity = activity_in(user_id=user_id, period=period)
    return {
        "period": period,
        "email": get_user_model().objects.get(pk=user_id).email,
        "activity": activity,
        "bars": rendering.bars_per_day(activity.uploads_per_day, activity.days),
        "chart_width": rendering.CHART_WIDTH,
        "chart_height": rendering.CHART_HEIGHT,
        "made_at": timezone.now(),
    }


def _warm_up(worker: support.Worker) -> None:
    """Two reports on demand, one per pool process: both forked, imports done, fonts read."""
    from django.contrib.auth import get_user_model

    from reports.models import Report
    from reports.services import report_request

    for n in range(WORKER_CONCURRENCY):
        user = get_user_model().objects.create_user(f"warm-{n}@example.com", "x" * 12)
        report_request(user=user, frequency="daily")
    _wait_ready(WORKER_CONCURRENCY, worker=worker)
    Report.objects.all().delete()


# --- the measurements -----------------------------------------------------------------------


@dataclass
class MemorySample:
    made: int
    pool_megabytes: list[float]


def _measure_project(count: int, *, worker: support.Worker) -> tuple[float, list[MemorySample]]:
    from reports.services import reports_dispatch

    samples: list[MemorySample] = []
    began = time.monotonic()
    assert reports_dispatch(at=DISPATCH_AT) == 1, "one group, one period: one run"
    _wait_ready(count, worker=worker, samples=samples)
    return time.monotonic() - began, samples


def _wait_ready(
    count: int, *, worker: support.Worker, samples: list[MemorySample] | None = None
) -> None:
    from reports.models import Report

    made, last_change, next_sample = 0, time.monotonic(), MEMORY_STEP
    while made < count:
        time.sleep(0.05)
        now_made = Report.objects.filter(status=Report.Status.READY).count()
        if now_made != made:
            made, last_change = now_made, time.monotonic()
        if samples is not None and made >= next_sample:
            samples.append(MemorySample(made, _pool_resident_megabytes(worker)))
            next_sample += MEMORY_STEP
        if Report.objects.filter(status=Report.Status.FAILED).exists():
            raise RuntimeError(f"a report failed: see the worker's log\n{worker.log_tail()}")
        if time.monotonic() - last_change > STUCK_SECONDS:
            raise RuntimeError(f"no report made for {STUCK_SECONDS:.0f} s\n{worker.log_tail()}")


def _measure_loop(contexts: list[dict]) -> float:
    from reports import rendering

    began = time.monotonic()
    for context in contexts:
        rendering.pdf_render(template="reports/report.html", context=context)
    return time.monotonic() - began


def _pool_resident_megabytes(worker: support.Worker) -> list[float]:
    sizes = []
    for pid in support.pool_processes(worker):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # replaced while we looked
        sizes += [int(line.split()[1]) / 1024 for line in status.splitlines() if "VmRSS" in line]
    return sorted(sizes)


# --- one PDF taken apart --------------------------------------------------------------------


def _print_breakdown(users_by_size: dict[str, list[int]]) -> None:
    from django.template.loader import render_to_string
    from weasyprint import CSS, HTML
    from weasyprint.text.fonts import FontConfiguration

    from reports import rendering

    stylesheet = (rendering.ASSETS / "report.css").read_text()
    font_faces = "\n".join(line for line in stylesheet.splitlines() if "@font-face" in line)
    print("one PDF, ms (median of 5; fonts: the @font-face rules alone, which every render "
          "loads again)")  # fmt: skip
    phases = ["template", "parse", "fonts", "layout", "write", "total"]
    print(f"{'size':<8}{'uploads':>8}" + "".join(f"{phase:>10}" for phase in phases) + f"{'KB':>7}")
    for size, users in users_by_size.items():
        if not users:
            continue
        context = _context_of(users[0])
        runs = []
        for _ in range(5):
            fetcher = rendering.BundledAssetsOnly()
            base_url = rendering.ASSETS.as_uri() + "/"
            started = time.perf_counter()
            html = render_to_string("reports/report.html", context)
            templated = time.perf_counter()
            document = HTML(string=html, base_url=base_url, url_fetcher=fetcher)
            parsed = time.perf_counter()
            CSS(string=font_faces, base_url=base_url, url_fetcher=fetcher,
                font_config=FontConfiguration())  # fmt: skip
            fonts = time.perf_counter()
            laid_out = document.render()
            rendered = time.perf_counter()
            pdf = laid_out.write_pdf()
            written = time.perf_counter()
            runs.append(
                {
                    "template": templated - started,
                    "parse": parsed - templated,
                    "fonts": fonts - parsed,
                    # render() loads the fonts too: layout is what it does besides.
                    "layout": (rendered - fonts) - (fonts - parsed),
                    "write": written - rendered,
                    "total": written - started - (fonts - parsed),
                }
            )
        medians = {phase: sorted(run[phase] for run in runs)[2] * 1000 for phase in phases}
        uploads = context["activity"].uploads_count
        print(f"{size:<8}{uploads:>8}" + "".join(f"{medians[p]:>10.1f}" for p in phases)
              + f"{len(pdf) / 1024:>7.0f}")  # fmt: skip
    print()


# --- memory ---------------------------------------------------------------------------------


def _print_memory(pool_memory: list[MemorySample], contexts: list[dict]) -> None:
    from reports import rendering

    print("memory, resident MB")
    print(f"  the worker's pool processes, every {MEMORY_STEP} reports made (replaced past "
          "CELERY_WORKER_MAX_MEMORY_PER_CHILD or 500 tasks):")  # fmt: skip
    for sample in pool_memory:
        sizes = " ".join(f"{size:.0f}" for size in sample.pool_megabytes)
        print(f"    {sample.made:>6} made: {sizes}")
    print(f"  this process rendering {LOOP_MEMORY_RENDERS} PDFs in a row (nothing recycles it; "
          "peak so far):")  # fmt: skip
    renders = [contexts[n % len(contexts)] for n in range(LOOP_MEMORY_RENDERS)]
    line = []
    for done, context in enumerate(renders, start=1):
        rendering.pdf_render(template="reports/report.html", context=context)
        if done % MEMORY_STEP == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            line.append(f"{done}: {peak:.0f}")
    print("    " + ", ".join(line))
    print()


def _print_header(*, subscribers: int, database_given: bool) -> None:
    support.print_run_header(
        title="PDF reports: dispatch to every report ready, against a one-process WeasyPrint loop",
        script="bench/reports.py",
        arguments=["--subscribers", str(subscribers)],
        database_given=database_given,
    )
    import weasyprint

    shares = ", ".join(
        f"{share:.0%} {size} ({uploads} uploads)" for size, (share, uploads) in SIZES.items()
    )
    print(
        f"method      {subscribers} monthly subscribers: {shares}; one worker on the reports "
        f"queue, concurrency {WORKER_CONCURRENCY}; WeasyPrint {weasyprint.__version__}"
    )
    print()


if __name__ == "__main__":
    support.run(main)
