"""An account's erasure, on real workers: everything of the erased account goes, everything of
the other stays, a receipt and one last email remain (accounts/deletion.py)."""

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models, transaction
from django.test import Client, override_settings
from django.utils import timezone

from accounts import tasks as accounts_tasks
from accounts.deletion import account_erasure_start, account_erasures_queue_due, account_hash
from accounts.emails import email_delivery_create
from accounts.models import AccountErasure, AccountSession, EmailDelivery
from jobs.batches import CHUNK_LEASE, batches_sweep
from jobs.models import DeadLetter
from jobs.outbox import enqueue_in, outbox_relay
from media.models import Upload
from media.services import upload_folder
from reports.models import Report
from reports.services import report_file
from tests.jobs.test_worker_recovery import kill_whole
from tests.media.images_for_tests import jpeg
from tests.services import eventually

User = get_user_model()
PASSWORD = "correct horse battery staple"


@dataclass
class Account:
    user: User
    browser: Client  # logged in with a session
    app: Client  # logged in with a bearer token
    upload_ids: list[str]
    report_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def email(self) -> str:
        return self.user.email


def account_with_data(email: str, *, uploads: int = 3) -> Account:
    """An account with what a person leaves behind: sessions, a token, processed uploads (rows,
    files, idempotency keys), emails sent to it and to its address, a task waiting in the outbox
    and dead letters that name it."""
    user = User.objects.create_user(email, PASSWORD, email_verified_at=timezone.now())
    browser = Client()
    browser.force_login(user)
    credentials = {"email": email, "password": PASSWORD}
    token = Client().post("/api/v1/auth/login", credentials, content_type="application/json")
    app = Client(headers={"Authorization": f"Bearer {token.json()['token']}"})
    upload_ids = []
    for number in range(uploads):
        file = SimpleUploadedFile(f"photo-{number}.jpg", jpeg(width=1200 + number, height=900))
        response = app.post("/api/v1/uploads", {"file": file})
        assert response.status_code == 202, response.content
        upload_ids.append(response.json()["id"])
    schedule = {"frequency": "weekly", "timezone": "Europe/Paris"}
    answer = app.put("/api/v1/reports/schedule", schedule, content_type="application/json")
    assert answer.status_code == 200, answer.content
    report = app.post("/api/v1/reports", {"frequency": "daily"}, content_type="application/json")
    assert report.status_code == 202, report.content
    with transaction.atomic():
        email_delivery_create(kind=EmailDelivery.Kind.WELCOME, recipient=email, user=user)
        # Someone tried to sign up with the address: an email to it, with no account attached.
        email_delivery_create(kind=EmailDelivery.Kind.SIGNUP_ATTEMPT, recipient=email)
        enqueue_in(timedelta(days=1), accounts_tasks.send_password_reset_email, email=email)
    for kwargs in ({"upload_id": upload_ids[0]}, {"email": email}):
        DeadLetter.objects.create(
            task_name="tests.failed", task_id=uuid.uuid4().hex, kwargs=kwargs, exception_class="X"
        )
    return Account(
        user=user,
        browser=browser,
        app=app,
        upload_ids=upload_ids,
        report_ids=[report.json()["id"]],
    )


def processed(account: Account) -> bool:
    return not (
        Upload.objects.filter(
            pk__in=account.upload_ids, status__in=["queued", "processing"]
        ).exists()
        or Report.objects.filter(pk__in=account.report_ids, status__in=["queued", "rendering"])
        .exists()
    )  # fmt: skip


def traces(account: Account) -> list[str]:
    """Every row, in every table, that links to the account, holds its address or names one of
    its uploads; every file of its uploads."""
    needles = [account.email, *account.upload_ids, *account.report_ids]
    found = []
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if field.is_relation and field.related_model is User:
                lookups = [{field.attname: account.user.pk}]
            elif isinstance(field, models.CharField | models.TextField | models.JSONField):
                lookups = [{f"{field.name}__icontains": needle} for needle in needles]
            else:
                continue
            found += [
                f"{model._meta.label}.{field.name} {lookup}"
                for lookup in lookups
                if model._default_manager.filter(**lookup).exists()
            ]
    if AccountSession.objects.filter(account_id=account.user.pk).exists():
        found.append("a session of the account")
    found += [f"files of {u}" for u in account.upload_ids if upload_folder(u).exists()]
    found += [f"PDF of {r}" for r in account.report_ids if report_file(r).exists()]
    return found


def erase_now(account: Account, settings) -> AccountErasure:
    settings.ACCOUNT_DELETION_GRACE_DAYS = 0
    response = account.app.post(
        "/api/v1/account/deletion", {"password": PASSWORD}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    return AccountErasure.objects.get(user=account.user)


def erased(erasure: AccountErasure, timeout: float = 60, nets: bool = False) -> AccountErasure:
    """Wait for the erasure's end; with `nets`, running meanwhile what beat runs for messages a
    killed worker took with it: the outbox relay (a message whose publishing it had claimed) and
    the batches' sweep, as it runs once a chunk's lease lapsed (on Redis, a message the worker
    had popped from its queue and not yet recorded as unacknowledged when it died is lost)."""

    def done():
        if nets:
            outbox_relay()
            batches_sweep(now=timezone.now() + CHUNK_LEASE + timedelta(seconds=1))
        return AccountErasure.objects.filter(
            pk=erasure.pk, status=AccountErasure.Status.DONE
        ).first()

    return eventually(done, timeout=timeout, interval=0.2)


def test_an_erasure_leaves_nothing_of_the_account_and_everything_of_the_other(
    celery_worker, smtp, settings
):
    # given two accounts with uploads, emails, sessions, tokens and jobs that name them
    leaving, staying = (
        account_with_data("leaving@example.com"),
        account_with_data("stay@example.com"),
    )
    eventually(lambda: processed(leaving) and processed(staying), timeout=60, interval=0.2)
    smtp.wait_for(leaving.email)
    assert traces(leaving) and traces(staying)
    kept = traces(staying)
    # when one of them is erased (no grace period)
    receipt = erased(erase_now(leaving, settings))
    # then no table and no folder holds anything of it
    assert traces(leaving) == []
    assert not User.objects.filter(pk=leaving.user.pk).exists()
    # and everything of the other account is there, its sessions and token still good
    assert traces(staying) == kept
    assert staying.app.get("/api/v1/me").status_code == 200
    assert staying.browser.get("/api/v1/me").status_code == 200
    assert all(upload_folder(u).exists() for u in staying.upload_ids)
    assert all(report_file(r).exists() for r in staying.report_ids)
    # and the receipt says what was erased, with no personal data
    assert receipt.user_id is None
    assert receipt.account_hash == account_hash(leaving.user.pk)
    assert receipt.started_at <= receipt.finished_at
    counts = dict(receipt.counts.values_list("area", "rows"))
    assert counts["media.Upload"] == 3
    assert counts["reports.Report"] == 1 and counts["reports.ReportSchedule"] == 1
    # welcome, signup attempt, report ready (no grace: no notice)
    assert counts["accounts.EmailDelivery"] == 3
    assert counts["jobs.DeadLetter"] >= 1 and counts["jobs.OutboxMessage"] >= 1
    # and one last email went to the old address, whose row then forgot it
    smtp.wait_for(leaving.email, subject="Your account has been deleted")
    eventually(
        lambda: EmailDelivery.objects.filter(
            kind=EmailDelivery.Kind.ACCOUNT_ERASED, status=EmailDelivery.Status.SENT
        ).exists()
    )
    assert EmailDelivery.objects.get(kind=EmailDelivery.Kind.ACCOUNT_ERASED).recipient == ""
    assert [m["Subject"] for m in smtp.sent_to(leaving.email)].count(
        "Your account has been deleted"
    ) == 1


@pytest.mark.parametrize("slice_rows", [1])
def test_an_erasure_cut_into_slices_runs_each_once_and_finishes(
    no_worker_running, start_worker, smtp, settings, slice_rows
):
    # given an account, and workers that erase one row per slice
    for _ in range(2):
        start_worker(extra_env={"ACCOUNT_ERASURE_SLICE_ROWS": str(slice_rows)})
    account = account_with_data("sliced@example.com", uploads=4)
    eventually(lambda: processed(account), timeout=60, interval=0.2)
    # when it is erased
    receipt = erased(erase_now(account, settings))
    # then its batch had one chunk per row, and nothing of the account is left
    assert receipt.batch.total >= 4 + 3  # four uploads, three emails at least
    assert receipt.batch.status == "succeeded"
    assert traces(account) == []
    # and the slices' bounds are forgotten with the account
    assert not receipt.batch.chunks.exclude(items=[]).exists()


def account_with_sent_emails(email: str, count: int) -> Account:
    """An account with `count` emails already sent: rows to erase, and nothing to send."""
    user = User.objects.create_user(email, PASSWORD, email_verified_at=timezone.now())
    EmailDelivery.objects.bulk_create(
        EmailDelivery(
            kind=EmailDelivery.Kind.WELCOME,
            user=user,
            recipient=email,
            subject="Welcome",
            body_text="Hello",
            message_id=f"<{uuid.uuid4().hex}@example.com>",
            status=EmailDelivery.Status.SENT,
        )
        for _ in range(count)
    )
    return Account(user=user, browser=Client(), app=Client(), upload_ids=[])


def queued_erasure(account: Account) -> AccountErasure:
    """Its grace period ended, its erasure queued (the periodic job's part)."""
    User.objects.filter(pk=account.user.pk).update(
        deletion_scheduled_for=timezone.now() - timedelta(seconds=1)
    )
    assert account_erasures_queue_due() == 1
    return AccountErasure.objects.get(user=account.user)


def test_a_worker_killed_whole_mid_erasure_leaves_it_to_another_which_finishes_it_once(
    no_worker_running, start_worker, smtp
):
    # given an account with 60 rows, erased a row per slice by a worker with one pool process
    account = account_with_sent_emails("killed@example.com", 60)
    slices = {"ACCOUNT_ERASURE_SLICE_ROWS": "1"}
    doomed = start_worker(concurrency=1, extra_env=slices)
    erasure = queued_erasure(account)
    # when the worker is killed whole while the erasure is under way
    eventually(
        lambda: (batch := AccountErasure.objects.get(pk=erasure.pk).batch) and batch.done >= 5,
        timeout=30,
        interval=0.01,
    )
    kill_whole(doomed)
    assert AccountErasure.objects.get(pk=erasure.pk).status == AccountErasure.Status.RUNNING
    # then another worker finishes it: every row erased and counted once, one last email
    start_worker(concurrency=2, extra_env=slices)
    receipt = erased(erasure, timeout=90, nets=True)
    assert traces(account) == []
    assert dict(receipt.counts.values_list("area", "rows"))["accounts.EmailDelivery"] == 60
    smtp.wait_for(account.email, subject="Your account has been deleted")
    eventually(lambda: EmailDelivery.objects.filter(status=EmailDelivery.Status.SENT).exists())
    assert len(smtp.sent_to(account.email)) == 1


def test_an_erasure_whose_messages_the_broker_lost_is_completed_by_the_sweep(
    no_worker_running, start_worker, broker_server, smtp
):
    # given an account whose erasure started while no worker ran: its slices wait in the broker
    account = account_with_sent_emails("lost@example.com", 12)
    with override_settings(ACCOUNT_ERASURE_SLICE_ROWS=2):
        erasure = queued_erasure(account)
        assert account_erasure_start(erasure_id=erasure.pk).started
    # six slices of two emails, and one of its own queued task's outbox row
    assert AccountErasure.objects.get(pk=erasure.pk).batch.total == 7
    # when the broker comes back empty (a restart without persistence), and a worker starts
    broker_server.forget_all_messages()
    start_worker()
    # then once the slices' lease has lapsed, the batches' sweep publishes them again, and the
    # erasure completes
    batches_sweep(now=timezone.now() + CHUNK_LEASE + timedelta(seconds=1))
    erased(erasure, timeout=60)
    assert traces(account) == []
    smtp.wait_for(account.email, subject="Your account has been deleted")
