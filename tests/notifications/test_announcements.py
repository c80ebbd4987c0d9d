"""Announcements from staff to everyone, as a batch (notifications/announcements.py), and what
keeps push deliveries moving: the provider's limit across workers, the sweep for lost messages,
pruning (notifications/services.py)."""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count
from django.test import Client
from django.utils import timezone

from jobs.batches import batch_chunk_run
from jobs.brokers import queue_drained
from jobs.models import Batch, BatchChunk
from jobs.outbox import enqueue
from notifications import services, tasks
from notifications.announcements import ANNOUNCEMENT_CHUNK_SIZE, announcement_deliver
from notifications.models import (
    Announcement,
    ChannelPreference,
    Device,
    Kind,
    Notification,
    PushDelivery,
)
from tests.jobs.test_worker_recovery import kill_whole
from tests.services import eventually

User = get_user_model()


def people(count: int, *, prefix: str = "person", **fields) -> list:
    """`count` accounts, active and verified unless told, made in one INSERT."""
    fields = {"is_active": True, "email_verified_at": timezone.now(), **fields}
    User.objects.bulk_create(
        User(email=f"{prefix}{index}@example.com", password="!", **fields) for index in range(count)
    )
    return list(User.objects.filter(email__startswith=prefix).order_by("pk"))


def with_devices(users: list, push_service) -> dict[str, object]:
    """Each person wants announcements pushed, to a browser of theirs; endpoint -> person."""
    ChannelPreference.objects.bulk_create(
        ChannelPreference(user=user, kind=Kind.ANNOUNCEMENT, push=True, email=False)
        for user in users
    )
    browsers = {}
    for user in users:
        browser = push_service.subscription(f"browser-{user.pk}")
        Device.objects.create(
            user=user, platform="webpush", address=browser.endpoint, keys=browser.as_json()["keys"]
        )
        browsers[browser.endpoint] = user
    return browsers


def staff_admin() -> Client:
    staff = User.objects.create_superuser("staff@example.com", "x" * 12)
    admin = Client()
    admin.force_login(staff)
    return admin


def publish(admin: Client, title: str = "Maintenance on Sunday") -> Announcement:
    answer = admin.post(
        "/admin/notifications/announcement/add/", {"title": title, "body": "From 2 to 3 am."}
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    return Announcement.objects.get(title=title)


def finished(announcement: Announcement, *, timeout: float = 60) -> Batch:
    return eventually(
        lambda: Batch.objects.filter(
            pk=announcement.batch_id, status=Batch.Status.SUCCEEDED
        ).first(),
        timeout=timeout,
        interval=0.2,
    )


def announced_to(announcement: Announcement) -> dict[int, int]:
    """person id -> how many notifications of this announcement they have."""
    return dict(
        Notification.objects.filter(once_key=f"announcement:{announcement.pk}")
        .values_list("user_id")
        .annotate(count=Count("pk"))
    )


def test_an_announcement_reaches_every_active_account_once(celery_worker, push_service):
    # given 1,000 active accounts, twenty of whom want announcements pushed to a browser, and
    # accounts that must not hear of it: deactivated (an erasure begun), or never verified
    everyone = people(1000)
    browsers = with_devices(everyone[:20], push_service)
    people(5, prefix="gone", is_active=False)
    people(5, prefix="unverified", email_verified_at=None)
    admin = staff_admin()
    # when staff publish an announcement in the admin
    announcement = publish(admin)
    # then it fans out in chunks, and each active, verified account has it exactly once
    batch = finished(announcement)
    assert batch.total == batch.done == 1000 + 1  # and the staff account itself
    assert BatchChunk.objects.filter(batch=batch).count() == -(-1001 // ANNOUNCEMENT_CHUNK_SIZE)
    counts = announced_to(announcement)
    assert set(counts) == {user.pk for user in everyone} | {announcement.created_by_id}
    assert set(counts.values()) == {1}
    # and each of the twenty browsers got its push, once
    eventually(lambda: len(push_service.received) >= 20, timeout=30)
    time.sleep(1)
    assert sorted(
        f"https://127.0.0.1:{push_service.port}{r.path}" for r in push_service.received
    ) == (sorted(browsers))
    # and the admin shows the progress, and keeps the announcement as it was sent
    listing = admin.get("/admin/notifications/announcement/").content.decode()
    assert "1,001 of 1,001 (100 %)" in listing
    page = admin.get(f"/admin/notifications/announcement/{announcement.pk}/change/")
    assert page.status_code == 200 and b"1,001 of 1,001" in page.content
    assert b'name="title"' not in page.content  # read-only
    deletion = admin.post(f"/admin/notifications/announcement/{announcement.pk}/delete/")
    assert deletion.status_code == 403
    # and once it is done, who it went to is forgotten: the chunks' items are emptied
    eventually(lambda: not BatchChunk.objects.filter(batch=batch).exclude(items=[]).exists())
    # and the same announcement submitted again (the back button) is refused, not sent twice
    again = admin.post(
        "/admin/notifications/announcement/add/",
        {"title": "Maintenance on Sunday", "body": "From 2 to 3 am."},
    )
    assert again.status_code == 200 and b"it is not sent twice" in again.content
    assert Announcement.objects.count() == 1


def chunks_of(announcement: Announcement) -> list[BatchChunk]:
    return list(BatchChunk.objects.filter(batch_id=announcement.batch_id).order_by("index"))


def test_two_runs_of_one_chunk_at_once_give_each_person_the_announcement_once(
    no_worker_running, transactional_db
):
    # given an announcement whose chunk's message was delivered twice, to two workers at once
    everyone = people(150)
    announcement = publish(staff_admin())
    (chunk,) = chunks_of(announcement)
    user_ids = [item["user_id"] for item in chunk.items]
    results = []

    def run() -> None:
        try:
            results.append(announcement_deliver(batch_id=announcement.batch_id, user_ids=user_ids))
        finally:
            connection.close()

    # when both run together
    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=60)
    # then everyone got it from one or the other, and no one twice
    assert sum(results) == len(everyone) + 1  # and the staff account
    counts = announced_to(announcement)
    assert len(counts) == len(everyone) + 1 and set(counts.values()) == {1}


def test_an_account_deactivated_before_its_chunk_runs_does_not_get_it(
    no_worker_running, transactional_db
):
    # given an announcement published, its chunk not yet run, and an erasure begun meanwhile
    everyone = people(3)
    announcement = publish(staff_admin())
    User.objects.filter(pk=everyone[0].pk).update(is_active=False)
    # when the chunk runs
    for chunk in chunks_of(announcement):
        batch_chunk_run(chunk_id=chunk.pk)
    # then the others have it, and the deactivated account does not
    assert everyone[0].pk not in announced_to(announcement)
    assert {user.pk for user in everyone[1:]} <= set(announced_to(announcement))


def test_a_worker_killed_whole_mid_broadcast_leaves_everyone_with_it_once(
    no_worker_running, start_worker, push_service
):
    # given 2,000 accounts, fifty pushing to a browser, and a worker fanning an announcement out
    everyone = people(2000)
    browsers = with_devices(everyone[:50], push_service)
    doomed = start_worker(queues=["notifications"], concurrency=2)
    announcement = publish(staff_admin())
    # when the worker is SIGKILLed whole while a chunk is half written
    eventually(
        lambda: BatchChunk.objects.filter(
            batch_id=announcement.batch_id,
            status=BatchChunk.Status.PENDING,
            started_at__isnull=False,
        ).exists(),
        timeout=30,
        interval=0.01,
    )
    kill_whole(doomed)
    assert Batch.objects.get(pk=announcement.batch_id).status == Batch.Status.RUNNING
    # and another worker takes over
    start_worker(queues=["notifications"], concurrency=2)
    # then the broadcast completes, and every account has it exactly once
    batch = finished(announcement, timeout=90)
    assert batch.done == 2001 and batch.failed == 0
    counts = announced_to(announcement)
    assert len(counts) == 2001 and set(counts.values()) == {1}
    # and no browser got it twice: each delivery is final, sent or (its worker killed mid-send)
    # possibly sent, and never sent again
    eventually(
        lambda: not PushDelivery.objects.filter(status=PushDelivery.Status.QUEUED).exists(),
        timeout=60,
    )
    time.sleep(1)
    paths = [received.path for received in push_service.received]
    assert len(paths) == len(set(paths)) <= len(browsers)
    assert PushDelivery.objects.count() == len(browsers)
    assert PushDelivery.objects.filter(status=PushDelivery.Status.SENT).count() >= (
        len(browsers) - 2  # at most one send in flight per pool process when it was killed
    )


# A push platform's limit, shared by every worker (jobs/ratelimit.py), as workers read it at start.
RATE = 5
LIMITS = f"smtp=20/s,webpush={RATE}/s,fcm=50/s,apns=50/s"
LATENESS = 0.5  # seconds a send may arrive after its slot on a loaded machine


def test_pushes_keep_to_the_providers_limit_across_two_workers(
    no_worker_running, start_worker, push_service
):
    # given two workers of two pool processes each, sharing a Web Push limit of 5/s
    workers = [
        start_worker(
            queues=["notifications"],
            concurrency=2,
            extra_env={"JOBS_RATE_LIMITS": LIMITS},
            wait=False,
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.wait_ready()
    # when an announcement goes to 25 people pushing to a browser each
    with_devices(people(25), push_service)
    publish(staff_admin())
    # then every push arrives, and no two seconds hold more than the slots the limiter hands out
    # in them, give or take LATENESS: a slot is a send time, and on a busy machine a send can
    # arrive up to half a second after its own slot, beside later ones. Four pool processes
    # without a limit would send all 25 within a second.
    eventually(lambda: len(push_service.received) >= 25, timeout=60, interval=0.2)
    stamps = sorted(received.at for received in push_service.received)
    busiest = max(sum(1 for t in stamps if start <= t <= start + 2.0) for start in stamps)
    assert busiest <= int(RATE * (2.0 + LATENESS)) + 1, stamps
    assert stamps[-1] - stamps[0] >= (25 - 1) / RATE - 0.2
    # and both workers sent some
    for worker in workers:
        assert "notifications.send_push" in worker.logfile.read_text()


# --- the sweep and pruning ------------------------------------------------------------------


def queued_delivery(push_service, *, age: timedelta, name: str = "lost"):
    """A push delivery queued `age` ago whose message never reached the broker."""
    (user,) = people(1, prefix=name)
    browser = push_service.subscription(name)
    device = Device.objects.create(
        user=user, platform="webpush", address=browser.endpoint, keys=browser.as_json()["keys"]
    )
    then = timezone.now() - age
    notification = Notification.objects.create(
        user=user, kind=Kind.UPLOAD_READY, title="lost", created_at=then
    )
    return PushDelivery.objects.create(
        notification=notification, device=device, created_at=then, updated_at=then
    )


def lost_age() -> timedelta:
    """Older than a live message's longest wait: a delivery unmoved this long lost its message."""
    return services.push_lost_after() + timedelta(minutes=10)


def test_a_push_whose_message_was_lost_is_queued_again_and_sent_once(celery_worker, push_service):
    # given a delivery whose message the broker lost, one queued moments ago, and one older than
    # a push's time to live
    lost = queued_delivery(push_service, age=lost_age())
    recent = queued_delivery(push_service, age=timedelta(minutes=5), name="recent")
    stale = queued_delivery(push_service, age=timedelta(days=2), name="stale")
    # when the sweep runs
    assert services.push_deliveries_sweep() == 2
    # then the lost one is sent, once; the recent one is left to its message; the stale one failed
    eventually(lambda: PushDelivery.objects.get(pk=lost.pk).status == PushDelivery.Status.SENT)
    assert PushDelivery.objects.get(pk=recent.pk).status == PushDelivery.Status.QUEUED
    stale.refresh_from_db()
    assert stale.status == PushDelivery.Status.FAILED and "time to live" in stale.last_error
    # and a later sweep queues only the one that is lost by then, and sends nothing twice
    assert services.push_deliveries_sweep(now=timezone.now() + lost_age()) == 1  # recent
    eventually(lambda: PushDelivery.objects.get(pk=recent.pk).status == PushDelivery.Status.SENT)
    time.sleep(1)
    assert sorted(r.path for r in push_service.received) == ["/push/lost", "/push/recent"]


def test_a_push_cut_mid_send_whose_message_was_lost_is_left_to_a_person(
    no_worker_running, push_service, transactional_db
):
    # given a delivery whose worker died mid-send (left `sending`) and whose message the broker
    # then lost
    cut = queued_delivery(push_service, age=lost_age(), name="cut")
    PushDelivery.objects.filter(pk=cut.pk).update(status=PushDelivery.Status.SENDING)
    # when the sweep runs, then it marks it unknown (the service may have it), once
    assert services.push_deliveries_sweep() == 1
    cut.refresh_from_db()
    assert cut.status == PushDelivery.Status.UNKNOWN and "may have been" in cut.last_error
    assert services.push_deliveries_sweep() == 0
    # and it was not sent again
    assert push_service.received == []


def test_a_push_whose_message_comes_after_its_time_to_live_is_not_sent(celery_worker, push_service):
    # given a delivery a day and an hour old whose message still comes (a backlog, a re-drive)
    late = queued_delivery(push_service, age=timedelta(hours=25), name="late")
    # when its task runs
    enqueue(tasks.send_push, push_delivery_id=late.pk, platform="webpush")
    # then it is failed as too old, and nothing reaches the push service
    eventually(lambda: PushDelivery.objects.get(pk=late.pk).status == PushDelivery.Status.FAILED)
    assert PushDelivery.objects.get(pk=late.pk).last_error == services.PUSH_EXPIRED
    assert push_service.received == []


def test_a_push_sent_late_lives_only_what_is_left_of_its_day(celery_worker, push_service):
    # given a delivery queued six hours ago
    late = queued_delivery(push_service, age=timedelta(hours=6), name="six-hours")
    # when it is sent
    enqueue(tasks.send_push, push_delivery_id=late.pk, platform="webpush")
    # then the push service is told to keep it 18 hours at most, not a day
    (received,) = eventually(lambda: push_service.received, timeout=30)
    assert 18 * 3600 - 60 <= int(received.headers["ttl"]) <= 18 * 3600


def test_the_sweep_leaves_queued_pushes_alone_while_the_queue_holds_messages(
    no_worker_running, push_service, transactional_db
):
    # given messages waiting in the notifications queue, with no worker to take them
    waiting = queued_delivery(push_service, age=timedelta(minutes=1), name="wait")
    services.push_deliveries_sweep(now=timezone.now() + lost_age())
    assert eventually(lambda: queue_drained(services.PUSH_QUEUE) is False)
    # and a delivery whose message looks lost
    lost = queued_delivery(push_service, age=lost_age())
    # when the sweep runs, then it leaves it: its message may be one of those waiting
    assert services.push_deliveries_sweep() == 0
    assert PushDelivery.objects.get(pk=lost.pk).updated_at == lost.updated_at
    assert PushDelivery.objects.get(pk=waiting.pk).status == PushDelivery.Status.QUEUED


@pytest.mark.django_db
def test_pruning_deletes_old_notifications_and_long_disabled_devices(push_service, settings):
    # given a notification past the retention with a delivery, a recent one, and two devices
    # disabled long ago and lately
    settings.NOTIFICATION_RETENTION_DAYS = 30
    old = queued_delivery(push_service, age=timedelta(days=31))
    Notification.objects.filter(pk=old.notification_id).update(
        created_at=timezone.now() - timedelta(days=31)
    )
    recent = queued_delivery(push_service, age=timedelta(days=1), name="recent")
    Device.objects.filter(pk=old.device_id).update(
        disabled_at=timezone.now() - timedelta(days=services.DISABLED_DEVICE_DAYS + 1)
    )
    Device.objects.filter(pk=recent.device_id).update(disabled_at=timezone.now())
    # when pruning runs
    assert services.notifications_prune() == 1
    # then the old notification and its delivery are gone, the recent one stays, and the device
    # disabled lately is kept for the admin to see why
    assert list(Notification.objects.values_list("pk", flat=True)) == [recent.notification_id]
    assert list(PushDelivery.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(Device.objects.values_list("pk", flat=True)) == [recent.device_id]


@pytest.mark.django_db
def test_only_staff_may_announce():
    (person,) = people(1)
    browser = Client()
    browser.force_login(person)
    answer = browser.post("/admin/notifications/announcement/add/", {"title": "Free money"})
    assert answer.status_code == 302 and "/login" in answer["Location"]
    assert not Announcement.objects.exists()
