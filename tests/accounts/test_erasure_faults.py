"""An account's erasure under the faults and races production brings, run in-process: the
erasure's steps are called as the workers would (start, each slice of the batch, the finish),
so that a test can put another request, step or delivery between two of them."""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from accounts import deletion
from accounts.deletion import (
    account_deletion_cancel,
    account_erasure_finish,
    account_erasure_slice,
    account_erasure_start,
    account_erasures_queue_due,
    account_erasures_resume_stalled,
)
from accounts.models import AccountErasure, EmailDelivery
from jobs.batches import batch_chunk_complete
from jobs.models import BatchChunk, DeadLetter, OutboxMessage
from media import services as media_services
from media.models import Upload, UploadVariant
from media.services import upload_folder
from tests.media.images_for_tests import jpeg
from tests.services import eventually

User = get_user_model()
PASSWORD = "correct horse battery staple"


def verified_user(email: str = "leaving@example.com", **fields):
    return User.objects.create_user(email, PASSWORD, email_verified_at=timezone.now(), **fields)


def queued(user) -> AccountErasure:
    """Its grace period ended; the periodic job queued its erasure."""
    User.objects.filter(pk=user.pk).update(
        deletion_scheduled_for=timezone.now() - timedelta(seconds=1)
    )
    assert account_erasures_queue_due() == 1
    return AccountErasure.objects.get(user=user)


def slices_run(erasure: AccountErasure) -> None:
    """What the workers do with the erasure's batch: every slice, each chunk counted done."""
    erasure.refresh_from_db()
    for chunk in BatchChunk.objects.filter(batch_id=erasure.batch_id).order_by("index"):
        for item in chunk.items:
            account_erasure_slice(**item)
        batch_chunk_complete(chunk_id=chunk.pk)


def erased_inline(user) -> AccountErasure:
    erasure = queued(user)
    assert account_erasure_start(erasure_id=erasure.pk).started
    slices_run(erasure)
    assert account_erasure_finish(erasure_id=erasure.pk)
    erasure.refresh_from_db()
    return erasure


def in_a_thread(call, errors: list, **thread) -> threading.Thread:
    """Run `call` on a connection of its own, as another request or worker would."""

    def run():
        try:
            call()
        except Exception as error:
            errors.append(repr(error))
        finally:
            connection.close()

    started = threading.Thread(target=run, **thread)
    started.start()
    return started


@pytest.mark.django_db(transaction=True)
def test_the_last_email_failing_for_good_keeps_no_copy_of_the_address(celery_worker, smtp):
    # given an account whose mailbox no longer exists (a common reason to leave)
    user = verified_user("gone@example.com")
    smtp.fail_next("550 5.1.1 <gone@example.com>: mailbox unavailable")
    # when it is erased, and its last email is refused for good
    erasure = queued(user)
    eventually(
        lambda: AccountErasure.objects.filter(pk=erasure.pk, status="done").exists(), timeout=60
    )
    # then, once the worker gave it up, neither its row nor its dead letter keeps the address
    # ("we keep no copy of it")
    last = eventually(
        lambda: EmailDelivery.objects.filter(
            kind=EmailDelivery.Kind.ACCOUNT_ERASED,
            status=EmailDelivery.Status.FAILED,
            recipient="",
        ).first(),
        timeout=30,
    )
    assert (last.body_text, last.last_error) == ("", "")
    letter = DeadLetter.objects.get(kwargs__delivery_id=last.pk)
    assert user.email not in letter.exception_message + letter.traceback


@pytest.mark.django_db(transaction=True)
def test_admin_history_about_the_account_keeps_no_address(no_worker_running):
    # given an account a staff member edited in the admin (its log entry names it by its
    # address), and an email of it staff changed ("welcome to <address> (sent)")
    staff = User.objects.create_superuser("boss@example.com", PASSWORD)
    user = verified_user()
    delivery = EmailDelivery.objects.create(
        kind=EmailDelivery.Kind.WELCOME, user=user, recipient=user.email, subject="s",
        body_text="b", message_id="<1@example.com>", status=EmailDelivery.Status.SENT,
    )  # fmt: skip
    for row in (user, delivery):
        LogEntry.objects.log_actions(
            user_id=staff.pk,
            queryset=type(row).objects.filter(pk=row.pk),
            action_flag=CHANGE,
            change_message="Changed something.",
            single_object=True,
        )
    # when the account is erased
    erased_inline(user)
    # then the staff member's history stays, without the address
    assert LogEntry.objects.filter(user=staff).count() == 2
    assert not LogEntry.objects.filter(object_repr__contains=user.email).exists()


@pytest.mark.django_db(transaction=True)
def test_an_erasure_whose_account_was_deleted_otherwise_is_not_sent_again(no_worker_running):
    # given a queued erasure whose account row was deleted by another path (a shell)
    user = verified_user()
    erasure = queued(user)
    User.objects.filter(pk=user.pk).delete()
    assert not account_erasure_start(erasure_id=erasure.pk).started
    # when the periodic job looks for lost messages, minute after minute
    later = timezone.now() + timedelta(minutes=16)
    sent = [account_erasures_resume_stalled(now=later + timedelta(minutes=m)) for m in range(5)]
    # then it sends nothing: there is no account left to erase
    assert sent == [0] * 5


@pytest.mark.django_db(transaction=True)
def test_a_lost_start_is_sent_again_at_most_once_per_stalled_period(no_worker_running):
    # given a queued erasure whose task message was lost
    erasure = queued(verified_user())
    later = timezone.now() + timedelta(minutes=16)
    # when the periodic job runs every minute for a quarter of an hour, and then once more
    sent = [account_erasures_resume_stalled(now=later + timedelta(minutes=m)) for m in range(15)]
    sent.append(account_erasures_resume_stalled(now=later + timedelta(minutes=31)))
    # then it sent the start again once, and once more a stalled period later
    assert sent == [1] + [0] * 14 + [1]
    assert AccountErasure.objects.get(pk=erasure.pk).resent_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_cancel_after_a_start_that_waited_finds_the_account_as_it_was(no_worker_running):
    # given a queued erasure, the account with one upload being processed and one queued
    user = verified_user()
    fields = {"owner": user, "source_format": "JPEG", "source_bytes": 1}
    Upload.objects.create(status="processing", **fields)
    waiting = Upload.objects.create(status="queued", **fields)
    erasure = queued(user)
    # when the task tries to start it (it waits for the upload in flight), then the person cancels
    assert account_erasure_start(erasure_id=erasure.pk).wait > 0
    account_deletion_cancel(user=User.objects.get(pk=user.pk))
    # then the cancel won whole: the queued upload and the account are as they were
    waiting.refresh_from_db()
    assert (waiting.status, waiting.error) == ("queued", "")
    assert User.objects.get(pk=user.pk).is_active
    assert not AccountErasure.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_queued_upload_processed_during_the_erasure_leaves_nothing(no_worker_running):
    # given an account with an upload queued (its normalize message waiting in the broker)
    user = verified_user()
    credentials = {"email": user.email, "password": PASSWORD}
    login = Client().post("/api/v1/auth/login", credentials, content_type="application/json")
    app = Client(headers={"Authorization": f"Bearer {login.json()['token']}"})
    file = SimpleUploadedFile("photo.jpg", jpeg(width=1200, height=900))
    upload_id = app.post("/api/v1/uploads", {"file": file}).json()["id"]
    erasure = queued(user)
    # when the erasure starts (the upload is only queued: it is failed, not waited for), and a
    # worker then takes the upload's waiting message before its slice runs, and after it
    assert account_erasure_start(erasure_id=erasure.pk).started
    assert Upload.objects.get(pk=upload_id).status == Upload.Status.FAILED
    media_services.upload_normalize(upload_id=upload_id)
    slices_run(erasure)
    media_services.upload_normalize(upload_id=upload_id)
    assert account_erasure_finish(erasure_id=erasure.pk)
    # then neither its rows nor its files are left
    assert not Upload.objects.filter(pk=upload_id).exists()
    assert not UploadVariant.objects.filter(upload_id=upload_id).exists()
    assert not upload_folder(upload_id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_second_finish_delivery_overlapping_the_first_leaves_the_last_email(
    no_worker_running, monkeypatch
):
    # given an erasure whose slices are all done
    user = verified_user("twice@example.com")
    erasure = queued(user)
    assert account_erasure_start(erasure_id=erasure.pk).started
    slices_run(erasure)
    # when two deliveries of the finish overlap (a relay re-publish, a redelivery): the second
    # reads the receipt "running", then erases after the first committed
    second_paused, first_done = threading.Event(), threading.Event()
    area_erase = deletion._area_erase

    def paused_area_erase(**kwargs):
        if threading.current_thread().name == "second" and not first_done.is_set():
            second_paused.set()
            first_done.wait(30)
        return area_erase(**kwargs)

    monkeypatch.setattr(deletion, "_area_erase", paused_area_erase)
    errors: list = []
    second = in_a_thread(
        lambda: account_erasure_finish(erasure_id=erasure.pk), errors, name="second"
    )
    assert second_paused.wait(30)
    assert account_erasure_finish(erasure_id=erasure.pk)
    first_done.set()
    second.join(60)
    # then the last email is still there to be sent, once
    assert errors == []
    assert EmailDelivery.objects.filter(kind=EmailDelivery.Kind.ACCOUNT_ERASED).count() == 1


@pytest.mark.parametrize("rows", [0, -1, 10_001])
def test_a_slice_size_that_would_fail_every_erasure_is_refused_at_start_up(settings, rows):
    settings.ACCOUNT_ERASURE_SLICE_ROWS = rows
    assert "accounts.E001" in [error.id for error in run_checks()]


@pytest.mark.django_db(transaction=True)
def test_a_cancel_racing_the_start_is_decided_without_a_deadlock(no_worker_running, monkeypatch):
    # given a queued erasure
    user = verified_user()
    erasure = queued(user)
    # when its start holds its locks (here: while it fails the account's uploads) and the
    # person's cancel arrives
    start_holds, go_on = threading.Event(), threading.Event()
    uploads_cancel = media_services.uploads_of_account_cancel

    def paused_uploads_cancel(**kwargs):
        start_holds.set()
        go_on.wait(10)
        return uploads_cancel(**kwargs)

    monkeypatch.setattr(media_services, "uploads_of_account_cancel", paused_uploads_cancel)
    errors: list = []
    start = in_a_thread(lambda: account_erasure_start(erasure_id=erasure.pk), errors)
    assert start_holds.wait(10)
    cancel = in_a_thread(lambda: account_deletion_cancel(user=User.objects.get(pk=user.pk)), errors)
    time.sleep(1)  # the cancel now waits for the account row's lock
    go_on.set()
    start.join(30)
    cancel.join(30)
    # then the start won, and the cancel was refused as the docs say, not killed as a deadlock
    assert errors == [
        "DeletionRefused('Your account is being erased; it cannot be cancelled now.')"
    ]
    assert AccountErasure.objects.get(pk=erasure.pk).status == AccountErasure.Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_a_step_recording_a_variant_while_its_upload_is_erased_fails_nothing(no_worker_running):
    # given an erasure under way, the account's upload still being processed by a step
    user = verified_user()
    upload = Upload.objects.create(owner=user, status="ready", source_format="JPEG", source_bytes=1)
    erasure = queued(user)
    assert account_erasure_start(erasure_id=erasure.pk).started
    erasure.refresh_from_db()
    item = next(
        item
        for chunk in BatchChunk.objects.filter(batch_id=erasure.batch_id)
        for item in chunk.items
        if item["area"] == "media.Upload"
    )
    # when the step records a variant as media.services._step_record does (the upload's row
    # locked, the variant inserted) while the slice deletes the upload
    recording = threading.Event()

    def step():
        with transaction.atomic():
            list(Upload.objects.select_for_update().filter(pk=upload.pk).values_list("pk"))
            UploadVariant.objects.create(
                upload_id=upload.pk, name="thumb", width=1, height=1, bytes=1
            )
            recording.set()
            time.sleep(1.5)

    errors: list = []
    thread = in_a_thread(step, errors)
    assert recording.wait(10)
    # then the slice waits for it, and deletes both
    try:
        account_erasure_slice(**item)
    finally:
        thread.join(30)
    assert errors == []
    assert not Upload.objects.filter(pk=upload.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_job_records_written_after_the_start_go_with_the_rows_they_name_and_no_others(
    no_worker_running,
):
    # given two accounts with an email each, and the erasure of one started
    leaving, staying = verified_user(), verified_user("staying@example.com")
    emails = {
        user.pk: EmailDelivery.objects.create(
            kind=EmailDelivery.Kind.WELCOME,
            user=user,
            recipient=user.email,
            subject="Welcome",
            body_text="Hello",
            message_id=f"<{user.pk}@test>",
        )
        for user in (leaving, staying)
    }
    erasure = queued(leaving)
    assert account_erasure_start(erasure_id=erasure.pk).started
    # when, after the start, jobs naming each email are written (a retry waiting to be
    # published, one published, a dead letter), and one whose argument is no id at all
    for user_id, email in emails.items():
        delivery_id = str(email.pk)
        OutboxMessage.objects.create(task_name="t", kwargs={"delivery_id": delivery_id})
        OutboxMessage.objects.create(
            task_name="t",
            kwargs={"delivery_id": delivery_id},
            status=OutboxMessage.Status.PUBLISHED,
            published_at=timezone.now(),
        )
        DeadLetter.objects.create(
            task_name="t", task_id=f"dead-{user_id}", kwargs={"delivery_id": delivery_id}
        )
    DeadLetter.objects.create(task_name="t", task_id="junk", kwargs={"delivery_id": "x' OR 1"})
    slices_run(erasure)
    # then those naming the erased email are gone, the other account's and the junk stay
    left = {
        (type(row).__name__, row.kwargs["delivery_id"])
        for model in (OutboxMessage, DeadLetter)
        for row in model.objects.filter(kwargs__has_key="delivery_id")
    }
    staying_id = str(emails[staying.pk].pk)
    assert left == {
        ("OutboxMessage", staying_id),
        ("DeadLetter", staying_id),
        ("DeadLetter", "x' OR 1"),
    }
    assert OutboxMessage.objects.filter(kwargs__delivery_id=staying_id).count() == 2
    assert EmailDelivery.objects.filter(user=staying).count() == 1
