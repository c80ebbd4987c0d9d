"""Notifications: an announcement to every account, each with two browsers subscribed to Web Push,
until every push is delivered; against the configured rate limit and against sending the same
pushes in one loop.

Starts its own redis-server, database (a SQLite file in a temporary folder, or DATABASE_URL),
an HTTPS push service in a process of its own (tests/notifications/push_service.py: it answers
201, as a browser's push service does) and one `celery worker -Q notifications`, as the
Procfile's general worker runs it. Then it prints:

1. the project's path: `announcement_publish()` as the admin calls it (the batch in chunks of
   ANNOUNCEMENT_CHUNK_SIZE people: each person's inbox row, one push delivery and its durably
   enqueued task per browser), until every push is sent: each one encrypted for its browser
   (aes128gcm), signed (VAPID), POSTed over HTTPS, its row marked sent; pushes per second,
   against the limit they were held to (JOBS_RATE_LIMITS webpush, --rate) and against the loop:
   the same pushes sent one after another from this process by the same provider code, with no
   database, queue or limit; the ratios;
2. the fan-out alone, its cheap case: an announcement to the same accounts with push off, each
   getting only the inbox row, in people per second: the batch's fixed cost per person, which
   the pushes' cost hides.

It asserts nothing.

    .venv/bin/python bench/notifications.py [--accounts 10000] [--rate 200] [--concurrency 4]
"""

import sys
from pathlib import Path

if Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    # `python bench/notifications.py` puts bench/ first on sys.path, where bench/queue.py would
    # shadow the standard library's `queue`, which Celery and kombu import.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import multiprocessing
import threading
import time

from bench import support
from tests import processes
from tests.notifications.push_service import PushService, Subscription, certificate_make

DEFAULT_ACCOUNTS = 10_000
DEVICES_PER_ACCOUNT = 2
# Pushes a second the benchmark holds Web Push to: the shipped default (JOBS_RATE_LIMITS).
DEFAULT_RATE = 50
# Push sends wait on the network; more pool processes than CPUs keep them busy.
DEFAULT_CONCURRENCY = 4
# Pushes sent in the loop: enough for a steady rate, fewer than the project's to keep the run
# short (the loop's rate does not depend on how many).
LOOP_PUSHES = 2_000
# Without a push sent for this long, something is stuck.
STUCK_SECONDS = 120.0
INSERT_BATCH = 2_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=DEFAULT_ACCOUNTS)
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    options = parser.parse_args()

    database_given = support.database_given()
    with (
        support.scratch_folder(prefix="celery-saas-bench-notifications-") as workdir,
        processes.RedisServer(workdir=workdir) as redis_server,
    ):
        port = processes.free_port()
        cert, key = certificate_make(workdir)
        service = multiprocessing.get_context("fork").Process(
            target=_push_service_run, kwargs={"port": port, "cert": cert, "key": key}, daemon=True
        )
        service.start()
        from notifications.vapid import vapid_keys_generate

        vapid = vapid_keys_generate()
        support.django_setup(
            redis_url=redis_server.url,
            workdir=workdir,
            environment={
                "VAPID_PUBLIC_KEY": vapid.public_key,
                "VAPID_PRIVATE_KEY": vapid.private_key,
                "WEBPUSH_ALLOWED_HOSTS": f"127.0.0.1:{port}",
                "WEBPUSH_ALLOW_PRIVATE_ADDRESSES": "1",
                "WEBPUSH_CA_BUNDLE": str(cert),
                "JOBS_RATE_LIMITS": f"smtp=20/s,webpush={options.rate}/s,fcm=50/s,apns=50/s",
            },
        )
        try:
            with support.Worker(
                name_prefix="bench-notifications",
                logfile=workdir / "worker.log",
                concurrency=options.concurrency,
                queues=["notifications"],
            ) as worker:
                _print_header(options, database_given=database_given)
                accounts = _accounts_made(options.accounts, port=port)
                _run(accounts, options=options, worker=worker)
        finally:
            service.terminate()


def _push_service_run(*, port: int, cert: Path, key: Path) -> None:
    PushService(port=port, cert=cert, key=key).start()
    threading.Event().wait()  # serves from its own thread until this process is terminated


def _run(accounts: list[int], *, options, worker: support.Worker) -> None:
    pushes = len(accounts) * DEVICES_PER_ACCOUNT
    project = _measure_project(pushes, push=True)
    looped, loop = _measure_loop()
    fan_out = _measure_project(len(accounts), push=False)
    project_rate, loop_rate = pushes / project, looped / loop
    print(f"{'path':<52}{'items':>8}{'seconds':>9}{'per s':>9}")
    print(f"{'announcement -> every push sent':<52}{pushes:>8}{project:>9.1f}{project_rate:>9.1f}")
    print(f"{'one loop, the same provider code, no queue':<52}{looped:>8}{loop:>9.1f}"
          f"{loop_rate:>9.1f}")  # fmt: skip
    print(f"{'announcement, push off: inbox rows only (people)':<52}{len(accounts):>8}"
          f"{fan_out:>9.1f}{len(accounts) / fan_out:>9.1f}")  # fmt: skip
    print(f"ratio against the limit ({options.rate}/s): {project_rate / options.rate:.2f}")
    print(f"ratio against the loop: {project_rate / loop_rate:.2f}x")
    print(f"load average   {support.load_average()} at the end")


# --- the data -------------------------------------------------------------------------------


def _accounts_made(count: int, *, port: int) -> list[int]:
    """Active, verified accounts, each with two browsers subscribed; their ids."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from notifications.models import Device

    user_model = get_user_model()
    for first in range(0, count, INSERT_BATCH):
        user_model.objects.bulk_create(
            user_model(
                email=f"reader{index}@example.com", password="!", email_verified_at=timezone.now()
            )
            for index in range(first, min(count, first + INSERT_BATCH))
        )
    ids = list(user_model.objects.filter(email__startswith="reader").values_list("pk", flat=True))
    # One browser's keys for all: encrypting for each is the same work whatever the key.
    keys = Subscription(endpoint="").as_json()["keys"]
    for first in range(0, len(ids), INSERT_BATCH):
        Device.objects.bulk_create(
            Device(
                user_id=user_id,
                platform="webpush",
                address=f"https://127.0.0.1:{port}/push/{user_id}-{device}",
                keys=keys,
            )
            for user_id in ids[first : first + INSERT_BATCH]
            for device in range(DEVICES_PER_ACCOUNT)
        )
    return ids


def _channels_set(*, push: bool) -> None:
    from notifications.models import ChannelPreference, Kind

    ChannelPreference.objects.filter(kind=Kind.ANNOUNCEMENT).delete()
    if push:
        from django.contrib.auth import get_user_model

        ChannelPreference.objects.bulk_create(
            (
                ChannelPreference(user_id=user_id, kind=Kind.ANNOUNCEMENT, push=True, email=False)
                for user_id in get_user_model().objects.values_list("pk", flat=True)
            ),
            batch_size=INSERT_BATCH,
        )


# --- the measures ---------------------------------------------------------------------------


def _measure_project(expected: int, *, push: bool) -> float:
    """Seconds from publishing an announcement to `expected` pushes sent (push on) or people
    given it (push off)."""
    from jobs.models import Batch
    from notifications.announcements import announcement_publish
    from notifications.models import PushDelivery

    _channels_set(push=push)
    PushDelivery.objects.all().delete()
    started = time.perf_counter()
    announcement = announcement_publish(title="Maintenance on Sunday", body="2 to 3 am", by=None)
    if push:
        done = PushDelivery.objects.filter(status=PushDelivery.Status.SENT)
    else:
        done = Batch.objects.filter(pk=announcement.batch_id, status=Batch.Status.SUCCEEDED)
        expected = 1
    last, last_moved = 0, time.monotonic()
    while (count := done.count()) < expected:
        if count != last:
            last, last_moved = count, time.monotonic()
        elif time.monotonic() - last_moved > STUCK_SECONDS:
            failed = PushDelivery.objects.exclude(status=PushDelivery.Status.SENT).count()
            raise RuntimeError(f"stuck at {count} of {expected}; {failed} deliveries not sent")
        time.sleep(0.2)
    return time.perf_counter() - started


def _measure_loop() -> tuple[int, float]:
    """Pushes sent and seconds taken, sending up to LOOP_PUSHES one after another with the
    provider code."""
    from notifications import providers
    from notifications.models import Device, Notification
    from notifications.services import push_payload

    devices = list(Device.objects.all()[:LOOP_PUSHES])
    payload = push_payload(Notification(title="Maintenance on Sunday", body="2 to 3 am"))
    started = time.perf_counter()
    for device in devices:
        providers.push_send(device, payload=payload)
    return len(devices), time.perf_counter() - started


def _print_header(options, *, database_given: bool) -> None:
    arguments = ["--accounts", str(options.accounts), "--rate", str(options.rate)]
    arguments += ["--concurrency", str(options.concurrency)]
    support.print_run_header(
        title="Notifications: an announcement pushed to every browser, against the rate limit "
        "and one loop",
        script="bench/notifications.py",
        arguments=arguments,
        database_given=database_given,
    )
    print(
        f"method      {options.accounts} accounts x {DEVICES_PER_ACCOUNT} browsers; one worker "
        f"on the notifications queue, concurrency {options.concurrency}; Web Push limited to "
        f"{options.rate}/s; a local HTTPS push service in its own process"
    )
    print()


if __name__ == "__main__":
    support.run(main)
