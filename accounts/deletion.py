"""Account deletion: a request, a grace period, then an erasure of everything of the account's.

- `account_deletion_request`: the account's sessions and API tokens end, an email says when its
  data will be erased and how to cancel; with ACCOUNT_DELETION_GRACE_DAYS = 0 the erasure is
  queued at once.
- `account_deletion_cancel`: during the grace period, and until the erasure starts.
- `account_erasures_queue_due`: the periodic job; one erasure per account whose grace period
  ended, however often it runs and however many run at once.
- `account_erasure_start` / `account_erasure_slice` / `account_erasure_finish`: the erasure, a
  batch of id-ordered slices of each area of the registry (accounts/erasure.py), then the
  account row, the receipt and one last email.

A cancel and an erasure meet on the receipt row: the cancel wins while the erasure is queued
(it deletes the row, and the queued task finds nothing to do), the erasure wins once it has
started (the cancel is refused); both decide under the account row's lock, so never half of each.
"""

import itertools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from accounts import throttling
from accounts.emails import email_delivery_create
from accounts.erasure import ErasureArea, Policy, erasure_area, erasure_areas
from accounts.models import (
    AccountErasure,
    AccountErasureCount,
    AccountSession,
    ApiToken,
    EmailDelivery,
    User,
)
from jobs.batches import batch_items_forget, batch_start
from jobs.models import Batch, DeadLetter, IdempotencyKey, OutboxMessage
from jobs.outbox import enqueue
from notifications.models import Kind
from notifications.services import NotificationEmail, notification_send

logger = logging.getLogger(__name__)

ERASURE_BATCH_KIND = "accounts.erasure"
# The periodic job queues at most this many erasures per run; a backlog drains over runs.
QUEUE_LIMIT = 100
# Outbox rows or dead letters read at a time when looking for those that name an account's rows.
REFERENCE_PAGE = 2_000
# An erasure queued this long without starting, or whose batch finished this long ago without
# the erasure finishing, lost a message: its task waits behind an upload in flight for 10 s at
# a time, and a callback is published within seconds of its batch's end.
STALLED_SECONDS = 15 * 60


class DeletionRefused(Exception):
    """A deletion request or cancel that cannot be carried out; the message says why."""


class WrongPassword(DeletionRefused):
    pass


class StaffAccount(DeletionRefused):
    """Staff accounts are not erased: Django's admin history of what they did would go with
    them (its rows cascade), and a stolen staff session, or a slip, must not do that. Another
    administrator deactivates them in the admin."""


def account_ordering_key(user_id: int) -> str:
    """The ordering key of an account's jobs: its erasure runs after every job enqueued before
    it under this key (docs/ordering.md)."""
    return f"account:{user_id}"


def account_hash(user_id: int) -> str:
    """The receipt's name for an account: keyed with SECRET_KEY, so that a person who gives
    their old id can be told their data was erased, and nobody can list whose ids were."""
    return salted_hmac("accounts.erasure", str(user_id), algorithm="sha256").hexdigest()


# --- the request and its cancel ---------------------------------------------------------------


def account_deletion_request(*, user: User, password: str, ip: str) -> datetime:
    """Schedule the account's erasure after the grace period; returns when. Ends every session
    and API token of the account at once. Refused (DeletionRefused) for a staff account, with a
    wrong password (WrongPassword; attempts are limited like a login's), and when one is
    scheduled already."""
    if user.is_staff or user.is_superuser:
        raise StaffAccount(
            "A staff account cannot delete itself: another administrator deactivates it in the "
            "admin."
        )
    # Counted before the check: a stolen session must not guess the password here unlimited.
    throttling.attempts_limit(scope="deletion", email=user.email, ip=ip)
    if not user.check_password(password):
        raise WrongPassword("The password is not right.")
    grace = timedelta(days=settings.ACCOUNT_DELETION_GRACE_DAYS)
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.deletion_scheduled_for is not None:
            raise DeletionRefused(
                f"Your account is already scheduled for deletion on "
                f"{user.deletion_scheduled_for:%Y-%m-%d %H:%M} UTC."
            )
        user.deletion_scheduled_for = timezone.now() + grace
        user.save(update_fields=["deletion_scheduled_for"])
        account_access_end(user=user)
        if grace:
            notification_send(
                user=user,
                kind=Kind.DELETION_SCHEDULED,
                title=f"Your account will be deleted on {user.deletion_scheduled_for:%d %B %Y}",
                body="Log in before then and cancel the deletion to keep it.",
                email=NotificationEmail(
                    kind=EmailDelivery.Kind.DELETION_SCHEDULED,
                    context={"scheduled_for": user.deletion_scheduled_for},
                ),
            )
        else:
            # No grace: the erasure's last email is the only one; one sent now would be erased
            # with the account's other emails, perhaps before it went out.
            account_erasure_queue(user=user)
    return user.deletion_scheduled_for


def account_deletion_cancel(*, user: User) -> None:
    """Cancel a scheduled deletion: during the grace period, and after it until the erasure has
    started. DeletionRefused when nothing is scheduled or the erasure is under way."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.deletion_scheduled_for is None:
            raise DeletionRefused("Your account is not scheduled for deletion.")
        erasure = AccountErasure.objects.select_for_update().filter(user=user).first()
        if erasure is not None:
            if erasure.status != AccountErasure.Status.QUEUED:
                raise DeletionRefused("Your account is being erased; it cannot be cancelled now.")
            erasure.delete()  # its queued task finds nothing to do
        user.deletion_scheduled_for = None
        user.save(update_fields=["deletion_scheduled_for"])
        notification_send(
            user=user,
            kind=Kind.DELETION_CANCELLED,
            title="Your account will not be deleted",
            body="The deletion of your account was cancelled: it stays, with all it holds.",
            email=NotificationEmail(kind=EmailDelivery.Kind.DELETION_CANCELLED, context={}),
        )


def account_erasure_order(*, user: User) -> bool:
    """Erase an account now, on staff's decision (the admin's action): no password, no grace
    period, no email before the last one. Staff accounts are not erased (their admin history
    would go with them; deactivate them instead). Returns whether an erasure was queued."""
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user.pk)
        if user.is_staff or user.is_superuser or AccountErasure.objects.filter(user=user).exists():
            return False
        user.deletion_scheduled_for = timezone.now()
        user.save(update_fields=["deletion_scheduled_for"])
        account_access_end(user=user)
        account_erasure_queue(user=user)
    return True


def account_access_end(*, user: User) -> None:
    """End every session and API token of the account, and forget its push devices, now."""
    AccountSession.objects.filter(account_id=user.pk).delete()
    ApiToken.objects.filter(user=user).delete()
    user.devices.all().delete()


# --- queueing the erasure -------------------------------------------------------------------


def account_erasures_queue_due(*, now: datetime | None = None) -> int:
    """Queue an erasure for each account whose grace period has ended and that has none (the
    periodic `accounts.maintenance_erasures_queue`); returns how many it queued. Two runs at
    once queue one each at most: each account is decided under its row's lock."""
    now = now or timezone.now()
    due = list(
        User.objects.filter(
            deletion_scheduled_for__lte=now,
            erasure__isnull=True,
            is_staff=False,
            is_superuser=False,
        )
        .order_by("deletion_scheduled_for")
        .values_list("pk", flat=True)[:QUEUE_LIMIT]
    )
    queued = 0
    for user_id in due:
        with transaction.atomic():
            user = (
                User.objects.select_for_update()
                .filter(pk=user_id, deletion_scheduled_for__lte=now)
                .first()
            )
            if user is None or AccountErasure.objects.filter(user=user).exists():
                continue  # cancelled, or queued by another run meanwhile
            account_erasure_queue(user=user)
            queued += 1
    return queued


def erasures_stalled(
    *, within: models.QuerySet | None = None, now: datetime | None = None
) -> tuple[models.QuerySet, models.QuerySet]:
    """Erasures waiting STALLED_SECONDS for a message the broker lost: queued and never started,
    or whose batch succeeded and that never finished. What the periodic job sends again, and
    /metrics counts."""
    stalled = (now or timezone.now()) - timedelta(seconds=STALLED_SECONDS)
    waiting = (within if within is not None else AccountErasure.objects).filter(user__isnull=False)
    return (
        waiting.filter(status=AccountErasure.Status.QUEUED, queued_at__lt=stalled),
        waiting.filter(
            status=AccountErasure.Status.RUNNING,
            batch__status=Batch.Status.SUCCEEDED,
            batch__finished_at__lt=stalled,
        ),
    )


def account_erasures_resume_stalled(*, now: datetime | None = None) -> int:
    """Send again the message of an erasure that waits for one the broker lost (a Redis without
    persistence restarted while it was queued): the task that starts a queued erasure, and the
    callback that finishes one whose batch is done. Both are idempotent; the start goes out
    unordered, since its first message, published, was the head of its key already. Returns how
    many it sent (part of the periodic job)."""
    from accounts import tasks  # the task module imports this one

    now = now or timezone.now()
    stalled = now - timedelta(seconds=STALLED_SECONDS)
    resumed = 0
    # Each at most once per STALLED_SECONDS: a start or finish that fails every time makes a
    # dead letter that often, not every minute.
    waiting = AccountErasure.objects.exclude(resent_at__gte=stalled)
    lost_starts, lost_finishes = erasures_stalled(within=waiting, now=now)
    for erasures, task, kwargs in (
        (lost_starts, tasks.erase_account, {}),
        (lost_finishes, tasks.finish_erasure, {"batch_id": 0}),
    ):
        for erasure_id in erasures.values_list("pk", flat=True)[:QUEUE_LIMIT]:
            with transaction.atomic():
                AccountErasure.objects.filter(pk=erasure_id).update(resent_at=now)
                enqueue(task, erasure_id=erasure_id, **kwargs)
            resumed += 1
    return resumed


def account_erasure_queue(*, user: User) -> AccountErasure:
    """The receipt row, queued, and the task that starts the erasure: under the account's
    ordering key, so it starts after every job the account enqueued before under that key.
    Call under the account row's lock."""
    from accounts import tasks  # the task module imports this one

    erasure = AccountErasure.objects.create(user=user, account_hash=account_hash(user.pk))
    enqueue(tasks.erase_account, ordering_key=account_ordering_key(user.pk), erasure_id=erasure.pk)
    return erasure


# --- the erasure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErasureStart:
    started: bool
    # Seconds to wait before trying again: the account still has a job in flight.
    wait: float = 0.0


def account_erasure_start(*, erasure_id: int) -> ErasureStart:
    """Start the queued erasure: once none of the account's uploads is being processed, its
    queued uploads are cancelled, the account can no longer log in and the batch of slices
    starts. Returns whether it started, or how long to wait for an upload in flight; a second
    call does nothing.

    Locks the account row, then the receipt, in that order, as a cancel does: the two never
    wait for each other crosswise."""
    from media.services import upload_in_flight_wait, uploads_of_account_cancel
    from reports.services import reports_of_account_cancel

    user_id = (
        AccountErasure.objects.filter(pk=erasure_id, status=AccountErasure.Status.QUEUED)
        .values_list("user_id", flat=True)
        .first()
    )
    if user_id is None:
        return ErasureStart(started=False)  # cancelled, started already, or its account gone
    wait = upload_in_flight_wait(owner_id=user_id)
    if wait:
        # Nothing changes meanwhile: a cancel during the wait leaves the account as it was.
        return ErasureStart(started=False, wait=wait)
    with transaction.atomic():
        user = User.objects.select_for_update().filter(pk=user_id).first()
        erasure = (
            AccountErasure.objects.select_for_update()
            .filter(pk=erasure_id, status=AccountErasure.Status.QUEUED, user_id=user_id)
            .first()
        )
        if user is None or erasure is None:
            return ErasureStart(started=False)
        if user.deletion_scheduled_for is None or user.is_staff or user.is_superuser:
            # Its schedule was cleared, or it became staff, by another path than a cancel.
            logger.warning("erasure %s not started: its account is no longer due", erasure_id)
            erasure.delete()
            return ErasureStart(started=False)
        wait = upload_in_flight_wait(owner_id=user_id)  # one may have begun meanwhile
        if wait:
            return ErasureStart(started=False, wait=wait)
        started_at = timezone.now()
        uploads_of_account_cancel(owner_id=user.pk)
        reports_of_account_cancel(user_id=user.pk)
        User.objects.filter(pk=user.pk).update(is_active=False)
        account_access_end(user=user)
        _job_references_erase(user=user)
        batch = batch_start(
            kind=ERASURE_BATCH_KIND,
            items=_erasure_slices(erasure=erasure, user=user),
            owner=user,
            # Only once every slice succeeded: a slice that failed for good is a dead letter,
            # and its re-drive completes the batch.
            on_success="accounts.finish_erasure",
            callback_kwargs={"erasure_id": erasure.pk},
            chunk_size=1,  # one chunk per slice: each slice is already a bounded piece of work
        )
        AccountErasure.objects.filter(pk=erasure.pk).update(
            status=AccountErasure.Status.RUNNING, batch=batch, started_at=started_at
        )
        # A count per area from the start: each slice then moves its own with one UPDATE.
        AccountErasureCount.objects.bulk_create(
            AccountErasureCount(erasure=erasure, area=area.name) for area in _areas_to_erase()
        )
    logger.info("erasure %s started: %d slice(s)", erasure_id, batch.total)
    return ErasureStart(started=True)


def _erasure_slices(*, erasure: AccountErasure, user: User):
    """For each area, the account's rows' ids in order, cut every ACCOUNT_ERASURE_SLICE_ROWS:
    one item per slice, naming its first and last id. Streamed: an area's ids are never all in
    memory."""
    size = settings.ACCOUNT_ERASURE_SLICE_ROWS
    for area in _areas_to_erase():
        ids = area.rows(user).order_by("pk").values_list("pk", flat=True).iterator(chunk_size=size)
        first = last = None
        count = 0
        for row_id in ids:
            first = row_id if count == 0 else first
            last, count = row_id, count + 1
            if count == size:
                yield _slice(erasure, area, first, last)
                count = 0
        if count:
            yield _slice(erasure, area, first, last)


def _slice(erasure: AccountErasure, area: ErasureArea, first, last) -> dict:
    return {"erasure_id": erasure.pk, "area": area.name, "first": str(first), "last": str(last)}


def account_erasure_slice(*, erasure_id: int, area: str, first: str, last: str) -> int:
    """Erase the account's rows of one area with ids from `first` to `last`: their files, the
    job platform's records that name them, the rows (deleted or anonymized, in one statement),
    the files once more. Returns how many rows; a slice run twice erases nothing the second
    time."""
    erasure = AccountErasure.objects.select_related("user").filter(pk=erasure_id).first()
    if erasure is None or erasure.user is None:
        return 0  # the account is gone already: a message of a finished erasure
    return _area_erase(
        erasure=erasure,
        area=erasure_area(area),
        rows=erasure_area(area).rows(erasure.user).filter(pk__gte=first, pk__lte=last),
    )


def _area_erase(*, erasure: AccountErasure, area: ErasureArea, rows) -> int:
    """Erase these rows of the area: their files, then in one transaction the job platform's
    records that name them and the rows, in one statement per table (deleted or anonymized),
    then their files once more. Returns how many rows."""
    if area.files_erase:
        # Before the rows, so that a crash leaves rows without files, never files nobody can
        # reach; and before the transaction, which on SQLite holds the one write lock.
        area.files_erase(list(rows.values_list("pk", flat=True)))
    with transaction.atomic():
        ids = None
        if _ids_read_first(area):
            # Locked first: a pipeline step recording what it wrote holds its upload's lock, so
            # it commits before this delete or finds its upload gone (its rows would otherwise
            # appear after the cascade was deleted, and fail the commit on their foreign key).
            ids = list(rows.select_for_update().order_by().values_list("pk", flat=True))
            if not ids:
                return 0
        if area.task_argument:
            _job_rows_since_naming(since=erasure.started_at, area=area, rows=rows)
        if area.idempotency_keys:
            IdempotencyKey.objects.filter(key__in=area.idempotency_keys(ids)).delete()
        # By the slice's own condition, not by its ids: a statement that reads the rows through
        # the area's index costs a fraction of one with thousands of values in it. Where ids
        # were read, these are the rows just locked: an account being erased can add none.
        if area.policy is Policy.ANONYMIZE:
            erased = rows.update(**area.anonymized)
        else:
            erased = _rows_delete(rows)
        AccountErasureCount.objects.filter(erasure=erasure, area=area.name).update(
            rows=F("rows") + erased
        )
    if area.files_erase:
        # Again: a pipeline step that wrote a file after the first pass, and recorded it before
        # the rows went, left it; one that records after finds its row gone and removes its own.
        area.files_erase(ids)
    return erased


def _ids_read_first(area: ErasureArea) -> bool:
    """Whether a slice reads (and locks) its rows' ids before deleting them: for their files,
    their idempotency keys, or the rows that cascade from them. The others are deleted by
    their condition alone, without reading thousands of ids to no purpose."""
    return bool(area.files_erase or area.idempotency_keys or area.model._meta.related_objects)


def _rows_delete(rows: models.QuerySet) -> int:
    """Delete these rows in one statement, after the rows that cascade from them (one statement
    each). Django's own `delete()` would first load every row, to collect its cascade in
    Python: a third of a slice's time for uploads."""
    model = rows.model
    for relation in model._meta.related_objects:
        if relation.on_delete is not models.CASCADE:
            raise ValueError(f"{model._meta.label}: erasing {relation} is not declared")
        _statement_delete(
            relation.related_model.objects.filter(
                **{f"{relation.field.name}__in": rows.order_by().values("pk")}
            )
        )
    return _statement_delete(rows)


def _statement_delete(rows: models.QuerySet) -> int:
    """`DELETE FROM <table> WHERE <pk> IN (<the queryset's SELECT>)`: one statement, no row read
    into Python."""
    select, params = rows.order_by().values("pk").query.sql_with_params()
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote(rows.model._meta.db_table)} "  # noqa: S608 (names from the model)
            f"WHERE {quote(rows.model._meta.pk.column)} IN ({select})",
            params,
        )
        return cursor.rowcount


def _job_rows_since_naming(*, since: datetime, area: ErasureArea, rows) -> None:
    """Delete the outbox rows and dead letters written since the erasure started that name one
    of these rows by the area's task argument. Those written before went as it started
    (_job_references_erase); these are few, and found through indexes (pending rows, rows
    published since, rows that could not be published, dead letters failed since), then matched
    against the slice's rows in one query."""
    for recent in (
        OutboxMessage.objects.filter(
            Q(status=OutboxMessage.Status.PENDING)
            | Q(status=OutboxMessage.Status.PUBLISHED, published_at__gte=since)
            | Q(status=OutboxMessage.Status.UNPUBLISHABLE)
        ),
        DeadLetter.objects.filter(last_failed_at__gte=since),
    ):
        values = recent.filter(kwargs__has_key=area.task_argument).values_list(
            "pk", f"kwargs__{area.task_argument}"
        )
        named = {pk: str(value) for pk, value in values}
        if named:
            owned = _owned_ids(area, rows, set(named.values()))
            naming = [pk for pk, value in named.items() if value in owned]
            recent.model.objects.filter(pk__in=naming).delete()


def _job_references_erase(*, user: User) -> None:
    """As the erasure starts, while every row of the account still exists: the outbox rows and
    dead letters that name one of its rows by a task argument (`upload_id`, `delivery_id`),
    found in one pass over each table a page at a time, each page's ids checked against the
    account's rows in one query. Once per erasure: a pass per slice would read the whole outbox
    (a service's history for its retention period) for every slice erased."""
    for area in _areas_to_erase():
        if not area.task_argument:
            continue
        for model in (OutboxMessage, DeadLetter):
            values = (
                model.objects.filter(kwargs__has_key=area.task_argument)
                .order_by("pk")
                .values_list("pk", f"kwargs__{area.task_argument}")
            )
            rows = values.iterator(chunk_size=REFERENCE_PAGE)
            while page := list(itertools.islice(rows, REFERENCE_PAGE)):
                owned = _owned_ids(area, area.rows(user), {str(value) for _, value in page})
                naming = [pk for pk, value in page if str(value) in owned]
                model.objects.filter(pk__in=naming).delete()


def _owned_ids(area: ErasureArea, rows, candidates: set[str]) -> set[str]:
    """Which of these texts are ids of these rows of the area. A task argument can hold
    anything (a message published by hand): one that is no id of the area's is no one's."""
    field = area.model._meta.pk
    valid = []
    for candidate in candidates:
        try:
            valid.append(field.to_python(candidate))
        except (ValidationError, ValueError, TypeError):
            continue
    # Found by their ids, each then checked to be one of `rows`: asked as one condition, SQLite
    # reads every row of the account through its owner index instead, for every page.
    found = (
        area.model.objects.filter(pk__in=valid)
        .filter(Exists(rows.filter(pk=OuterRef("pk"))))
        .order_by()
        .values_list("pk", flat=True)
    )
    return {str(pk) for pk in found}


def account_erasure_finish(*, erasure_id: int) -> bool:
    """Once every slice is done: erase what appeared since the slices were cut (an email an
    in-flight job wrote), check that no area holds anything of the account, delete the account
    row, close the receipt and send the last email, once. Returns whether this call did it."""
    erasure = AccountErasure.objects.select_related("user").filter(pk=erasure_id).first()
    if erasure is None or erasure.user is None or erasure.status != AccountErasure.Status.RUNNING:
        return False  # finished by an earlier delivery
    user = erasure.user
    for area in _areas_to_erase():
        while _area_erase(erasure=erasure, area=area, rows=_first_slice(area, user)):
            pass
    with transaction.atomic():
        if not AccountErasure.objects.filter(
            pk=erasure_id, status=AccountErasure.Status.RUNNING
        ).update(status=AccountErasure.Status.DONE, finished_at=timezone.now()):
            return False
        leftovers = [area.name for area in _areas_to_erase() if _holds_personal_rows(area, user)]
        if leftovers:
            raise RuntimeError(f"erasure {erasure_id}: rows remain in {', '.join(leftovers)}")
        address = user.email
        user.delete()  # the receipt's link is nulled with it
        throttling.login_failures_clear(email=address)  # Redis keys named by the address
        # The slices' bounds are ids of rows that are gone; the batch keeps its counts only.
        batch_items_forget(batch_id=erasure.batch_id)
        email_delivery_create(kind=EmailDelivery.Kind.ACCOUNT_ERASED, recipient=address)
    logger.info("erasure %s finished", erasure_id)
    return True


def _areas_to_erase() -> list[ErasureArea]:
    return [area for area in erasure_areas() if area.policy is not Policy.UNLINKED]


def _first_slice(area: ErasureArea, user: User):
    return area.rows(user).filter(
        pk__in=area.rows(user).order_by("pk").values("pk")[: settings.ACCOUNT_ERASURE_SLICE_ROWS]
    )


def _holds_personal_rows(area: ErasureArea, user: User) -> bool:
    # An anonymized row no longer matches its area's question, which asks by the account.
    return area.rows(user).exists()
