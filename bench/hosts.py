"""Workers on one, two and three hosts: the no-op drain rate and the upload pipeline's
throughput, each against one host's in the same run.

The hosts are network namespaces on this machine (scripts/test-hosts.sh, tests/hosts.py), each
with one worker of one pool process, reaching the broker (its own redis-server) and the
database over a veth link. Two more rows run a worker on this machine itself, without the link
and its forwarders: of one pool process (what the network path costs one host), and of as many
pool processes as hosts the CPUs can hold (what the CPUs can do at all).

The hosts share this machine's CPUs, so the figures can scale only until the workers' pool
processes fill them: on 2 CPUs, two hosts. The goal: two hosts do at least 0.85 times what one
worker with two pool processes does here, so hosts scale as far as the CPUs let them, and the
network between costs little. Needs root (network namespaces) and socat.

    .venv/bin/python bench/hosts.py [--tasks 2000] [--uploads 12]
"""

import sys
from pathlib import Path

sys.path.pop(0)  # bench/, where queue.py would shadow the standard library's `queue`
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from bench import support
from tests import processes
from tests.hosts import TestHosts, hosts_unavailable, local_ports

HOST_COUNTS = (1, 2, 3)
# One pool process per host: a host is one CPU's worth of worker, so the machine's CPUs, not
# the pool size, say how far the hosts can scale.
CONCURRENCY = 1
MIN_TWO_HOSTS_OF_CEILING = 0.85
CEILING = "this machine, 2 processes"
STUCK_SECONDS = 60.0
POLL_SECONDS = 0.05
# Photos of two sizes, taking turns: a large one's decode and resize, and a small one's fixed
# cost per upload (its tasks, its rows, its messages), which large photos alone would hide.
PHOTO_SIZES = ((4032, 3024), (800, 600))
# The uploads' owners: deleted at the end, with their uploads, where a DATABASE_URL outlives the
# run (the files go with the temporary MEDIA_ROOT).
OWNERS = "bench-hosts-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="no-ops per drain (2000)")
    parser.add_argument("--uploads", type=int, default=12, help="photos per pipeline run (12)")
    options = parser.parse_args()
    if options.tasks < 2 or options.uploads < 2:
        parser.error("--tasks and --uploads must be at least 2")
    why = hosts_unavailable()
    if why:
        sys.exit(f"bench/hosts.py cannot run here: {why}")

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-hosts-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        support.django_setup(
            redis_url=redis_server.url,
            workdir=workdir,
            environment={"MEDIA_ROOT": str(workdir / "media"), "UPLOAD_QUOTA_BYTES": str(10**15)},
        )
        support.print_run_header(
            title="Workers on one, two and three hosts (network namespaces on this machine)",
            script="bench/hosts.py",
            arguments=["--tasks", str(options.tasks), "--uploads", str(options.uploads)],
            database_given=database_given,
        )
        print(f"each host   one worker, {CONCURRENCY} pool process; broker: its own redis-server")
        print()
        photos = _photos(options.uploads)
        try:
            results = _measure_every_setup(options, photos=photos, workdir=workdir)
        finally:
            _forget_owners()
        _print_results(results)
        print()
        print(f"load average {support.load_average()} at the end")


def _measure_every_setup(options, *, photos: list[bytes], workdir: Path) -> dict[str, dict]:
    """Each setup's figures: this machine with one and two pool processes, then 1-3 hosts."""
    results = {}
    setups = [
        ("this machine, 1 process", 0, 1),
        (CEILING, 0, 2),
        *[(f"{count} host(s)", count, CONCURRENCY) for count in HOST_COUNTS],
    ]
    for label, count, concurrency in setups:
        results[label] = _measure(
            hosts=count,
            concurrency=concurrency,
            tasks=options.tasks,
            photos=photos,
            workdir=workdir,
            run=label,
        )
        print(f"{label} measured", file=sys.stderr, flush=True)
    return results


def _forget_owners() -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(email__startswith=OWNERS).delete()


def _photos(count: int) -> list[bytes]:
    from tests.media.images_for_tests import encoded, gradient

    return [
        encoded(gradient(*PHOTO_SIZES[i % len(PHOTO_SIZES)]), "JPEG", quality=90)
        for i in range(count)
    ]


def _measure(
    *, hosts: int, concurrency: int, tasks: int, photos: list[bytes], workdir: Path, run: str
) -> dict:
    """Start one worker per host (or one here, hosts=0), then time a no-op drain and an upload
    run."""
    with ExitStack() as stack:
        launchers: list[list[str]] = [[]]
        if hosts:
            test_hosts = stack.enter_context(
                TestHosts(hosts, ports=local_ports(dict(os.environ)), logdir=workdir / "hosts")
            )
            launchers = [test_hosts.launcher(host) for host in range(1, hosts + 1)]
        workers = [
            stack.enter_context(
                support.Worker(
                    name_prefix=f"bench-hosts-{index}",
                    logfile=workdir / f"worker-{run.replace(' ', '-')}-{index}.log",
                    concurrency=concurrency,
                    options=["--include", "bench.tasks"],
                    launcher=launcher,
                )
            )
            for index, launcher in enumerate(launchers)
        ]
        _drain(workers, count=20)  # connections open, pool processes warm
        return {
            "drain": _drain(workers, count=tasks),
            "uploads": _uploads(workers, photos=photos),
        }


@contextmanager
def _paused(workers: list[support.Worker], queue: str) -> Iterator[None]:
    """No worker consumes `queue` meanwhile, so a backlog builds up whole."""
    for worker in workers:
        worker.pause(queue)
    try:
        yield
    finally:
        for worker in workers:
            worker.resume(queue)


def _drain(workers: list[support.Worker], *, count: int) -> float:
    """No-ops per second, from the first one's start to the last one's, of a backlog of `count`."""
    from bench.tasks import noop
    from config.celery import app
    from jobs.redis import redis_client

    key = uuid.uuid4().hex
    queue = app.amqp.router.route({}, noop.name)["queue"].name
    with _paused(workers, queue):
        for _ in range(count):
            noop.delay(run=key, enqueued_at=time.time())
    _wait(lambda: redis_client().llen(f"bench:{key}"), count, workers, what="no-ops")
    starts = sorted(
        float(entry.split()[1]) for entry in redis_client().lrange(f"bench:{key}", 0, -1)
    )
    return (count - 1) / (starts[-1] - starts[0])


def _uploads(workers: list[support.Worker], *, photos: list[bytes]) -> float:
    """Uploads per second: every photo created in one transaction while no worker takes media
    work, then from the workers' resuming to the last upload's ready_at."""
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction

    from media.models import Upload
    from media.services import upload_create

    owner = get_user_model().objects.create_user(f"{OWNERS}{uuid.uuid4().hex}@example.com")
    with _paused(workers, "media"):
        with transaction.atomic():
            ids = [
                upload_create(
                    owner=owner, file=SimpleUploadedFile(f"{i}.jpg", photo, "image/jpeg")
                ).pk
                for i, photo in enumerate(photos)
            ]
        resumed_at = time.time()
    uploads = Upload.objects.filter(pk__in=ids)

    def ready() -> int:
        if uploads.filter(status=Upload.Status.FAILED).exists():
            raise RuntimeError(f"an upload failed:\n{workers[0].log_tail()}")
        return uploads.filter(status=Upload.Status.READY).count()

    _wait(ready, len(ids), workers, what="uploads")
    last_ready = max(moment.timestamp() for moment in uploads.values_list("ready_at", flat=True))
    return len(ids) / (last_ready - resumed_at)


def _wait(done, count: int, workers: list[support.Worker], *, what: str) -> None:
    """Until `done()` reaches `count`, or nothing moved for STUCK_SECONDS."""
    seen, moved_at = 0, time.monotonic()
    while seen < count:
        time.sleep(POLL_SECONDS)
        now = done()
        if now > seen:
            seen, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > STUCK_SECONDS:
            tails = "\n".join(worker.log_tail() for worker in workers)
            raise RuntimeError(f"{count - seen} {what} never finished:\n{tails}")


def _print_results(results: dict[str, dict[str, float]]) -> None:
    one = results["1 host(s)"]
    print(f"{'workers on':<26} {'no-op drain':>12} {'ratio':>6} {'uploads':>10} {'ratio':>6}")
    for label, figures in results.items():
        print(
            f"{label:<26} {figures['drain']:>9.0f} /s {figures['drain'] / one['drain']:>6.2f}"
            f" {figures['uploads']:>7.2f} /s {figures['uploads'] / one['uploads']:>6.2f}"
        )
    print("(ratio: against one host)")
    print()
    cpus = os.cpu_count() or 1
    if cpus < 2 * CONCURRENCY:
        print(f"goal        not measurable: {cpus} CPU leaves no CPU for a second host")
        return
    two, ceiling = results["2 host(s)"], results[CEILING]
    for name, label in (("drain", "no-op drain"), ("uploads", "upload pipeline")):
        ratio = two[name] / ceiling[name]
        verdict = "met" if ratio >= MIN_TWO_HOSTS_OF_CEILING else "NOT met"
        print(
            f"goal        {label}: two hosts {ratio:.2f}x one worker of two processes here "
            f"(goal >= {MIN_TWO_HOSTS_OF_CEILING}x): {verdict}"
        )
    print(
        f"ceiling     {cpus} CPUs: hosts beyond {cpus // CONCURRENCY} share CPUs with the others, "
        "so a third adds little here; on machines of their own each adds its share"
    )


if __name__ == "__main__":
    support.run(main)
