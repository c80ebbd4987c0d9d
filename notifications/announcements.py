"""Announcements: staff write one in the admin, and every active account gets it once.

    announcement_publish(title="Maintenance on Sunday", body="…", by=staff_user)

One transaction writes the Announcement and starts its batch (jobs/batches.py): one item per
account that is active and has a verified address at that moment, in chunks of
ANNOUNCEMENT_CHUNK_SIZE people. A chunk's handler (notifications/tasks.py) gives each of its
people the notification through `notification_send`, so their choices for announcements decide
push and email, and each push waits for the provider's limit like any other. The batch's counts
are the progress the admin shows.

Once each, whatever happens to a chunk: its people get their notifications in one transaction
(a worker killed mid-chunk leaves none of them, and the chunk runs again), and each carries the
key "announcement:<id>", unique per person, so a chunk that runs twice (a duplicate message, two
workers at once) skips those who have it.
"""

from django.db import IntegrityError, transaction

from accounts.models import User
from jobs.batches import batch_start
from notifications.models import Announcement, Kind, Notification
from notifications.services import notification_send

ANNOUNCEMENT_BATCH_KIND = "notifications.announce"
# People per chunk. A chunk writes its people's notifications, push deliveries and outbox rows
# in one transaction, which on SQLite holds the database's one write lock: 200 people take a
# fraction of a second (bench/notifications.py), short enough that a signup writing meanwhile
# waits no longer than its busy timeout allows by far.
ANNOUNCEMENT_CHUNK_SIZE = 200


def announcement_publish(*, title: str, body: str, by: User | None) -> Announcement:
    """Write the announcement and start its fan-out to every active account with a verified
    address; the chunks are published once the caller's transaction commits."""
    from notifications import tasks  # noqa: F401 - declares the chunks' handler, and imports this

    with transaction.atomic():
        announcement = Announcement.objects.create(title=title, body=body, created_by=by)
        recipients = (
            User.objects.filter(is_active=True, email_verified_at__isnull=False)
            .order_by("pk")
            .values_list("pk", flat=True)
            .iterator(chunk_size=2000)
        )
        batch = batch_start(
            kind=ANNOUNCEMENT_BATCH_KIND,
            items=({"user_id": user_id} for user_id in recipients),
            owner=by,
            on_success="notifications.announcement_delivered",
            chunk_size=ANNOUNCEMENT_CHUNK_SIZE,
        )
        Announcement.objects.filter(pk=announcement.pk).update(batch=batch)
    announcement.refresh_from_db()
    return announcement


def announcement_deliver(*, batch_id: int, user_ids: list[int]) -> int:
    """Give the batch's announcement to those of these people who do not have it yet and whose
    account is still active; returns how many got it now."""
    announcement = Announcement.objects.filter(batch_id=batch_id).first()
    if announcement is None:
        return 0  # deleted by staff before its chunks ran
    once_key = f"announcement:{announcement.pk}"
    delivered = 0
    with transaction.atomic():
        have_it = Notification.objects.filter(once_key=once_key, user_id__in=user_ids)
        # Locked until the chunk commits, in one order: an erasure begins under the same lock
        # (accounts/deletion.py), so it either deactivated the account before this read, which
        # then skips it, or waits and finds the notification to erase; and no account row is
        # deleted under the inserts, whose foreign keys PostgreSQL checks at commit.
        people = list(
            User.objects.select_for_update(no_key=True)
            .filter(pk__in=user_ids, is_active=True)
            .exclude(pk__in=have_it.values("user_id"))
            .order_by("pk")
        )
        for person in people:
            try:
                notification_send(
                    user=person,
                    kind=Kind.ANNOUNCEMENT,
                    title=announcement.title,
                    body=announcement.body,
                    data={"announcement_id": announcement.pk},
                    once_key=once_key,
                )
            except IntegrityError:
                # Another run of this chunk gave it to them since the query above: its savepoint
                # is rolled back, with the deliveries it queued, and the rest go on.
                continue
            delivered += 1
    return delivered
