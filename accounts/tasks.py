from datetime import timedelta

from celery import shared_task
from celery.schedules import crontab
from django.conf import settings

from accounts import deletion, emails, services
from jobs.batches import batch_handler
from jobs.models import Batch
from jobs.periodic import PeriodicJob, periodic_job_register
from jobs.ratelimit import rate_limit_or_defer
from jobs.retry import SMTP_TRANSIENT


def _delivery_failed_for_good(task, error, task_id, args, kwargs, einfo) -> None:
    # Celery calls this once the task failed for good (not on retries): the status row says
    # "failed", the dead letter allows a re-drive.
    emails.email_delivery_give_up(
        delivery_id=kwargs["delivery_id"], reason=f"{type(error).__name__}: {error}"
    )


def _delivery_reopened(task, delivery_id: int) -> None:
    # A re-drive of its dead letter: the row that says "failed" is queued again (or the re-drive
    # refused), else the task would find it settled and send nothing.
    emails.email_delivery_reopen(delivery_id=delivery_id)


@shared_task(
    name="accounts.send_email",
    bind=True,
    idempotent=True,
    retry_policy=SMTP_TRANSIENT,
    on_failure=_delivery_failed_for_good,
    before_redrive=_delivery_reopened,
    # A stuck SMTP conversation fails by EMAIL_TIMEOUT long before this.
    soft_time_limit=60,
    time_limit=90,
)
def send_email(self, delivery_id: int) -> None:
    rate_limit_or_defer(self, provider="smtp")
    emails.email_delivery_send(delivery_id=delivery_id)


# The two requests that answer every address alike hand the lookup to these tasks, so the
# request's timing does not depend on whether the address has an account.
@shared_task(name="accounts.send_verification_email", bind=True, idempotent=True)
def send_verification_email(self, email: str) -> None:
    services.verification_resend_carry_out(email=email, request_key=self.request.id)


@shared_task(name="accounts.send_password_reset_email", bind=True, idempotent=True)
def send_password_reset_email(self, email: str) -> None:
    services.password_reset_carry_out(email=email, request_key=self.request.id)


@shared_task(name="accounts.maintenance_clear_sessions", idempotent=True)
def maintenance_clear_sessions() -> None:
    services.expired_sessions_clear()


@shared_task(name="accounts.maintenance_delete_unverified", idempotent=True)
def maintenance_delete_unverified() -> int:
    return services.unverified_accounts_delete(
        older_than=timedelta(days=settings.UNVERIFIED_ACCOUNT_DAYS)
    )


@shared_task(name="accounts.maintenance_prune_email_bodies", idempotent=True)
def maintenance_prune_email_bodies() -> int:
    return emails.email_bodies_prune(older_than_days=settings.EMAIL_BODY_RETENTION_DAYS)


@shared_task(name="accounts.maintenance_emails_sweep", idempotent=True)
def maintenance_emails_sweep() -> int:
    return emails.email_deliveries_sweep()


periodic_job_register(
    PeriodicJob(
        name="accounts.emails-sweep",
        task=maintenance_emails_sweep.name,
        # Every ten minutes: an email counts as lost after hours (email_deliveries_lost), and a
        # run with nothing to do is one query.
        schedule=timedelta(minutes=10),
        expires_seconds=9 * 60,
    )
)


# Daily, at quiet hours (UTC), each dropped if it could not start within an hour: the next day's
# run does the same work on fresher data.
for job_name, task_name, minute in (
    ("accounts.clear-expired-sessions", maintenance_clear_sessions.name, 5),
    ("accounts.delete-unverified-accounts", maintenance_delete_unverified.name, 25),
    ("accounts.prune-email-bodies", maintenance_prune_email_bodies.name, 45),
):
    periodic_job_register(
        PeriodicJob(
            name=job_name,
            task=task_name,
            schedule=crontab(minute=minute, hour=3),
            expires_seconds=3600,
        )
    )


# --- account deletion (accounts/deletion.py) ---------------------------------------------------


@shared_task(name="accounts.maintenance_erasures_queue", idempotent=True)
def maintenance_erasures_queue() -> int:
    return deletion.account_erasures_queue_due() + deletion.account_erasures_resume_stalled()


periodic_job_register(
    PeriodicJob(
        name="accounts.queue-due-erasures",
        task=maintenance_erasures_queue.name,
        # An ended grace period is erased within the minute; a run that could not start within
        # it has nothing to do that the next one will not.
        schedule=timedelta(seconds=60),
        expires_seconds=54,
    )
)


# Ordered under the account's key (accounts.deletion.account_ordering_key): no expiry, so that
# the key never waits behind a message that expired unrun.
@shared_task(name="accounts.erase_account", bind=True, idempotent=True)
def erase_account(self, erasure_id: int) -> None:
    start = deletion.account_erasure_start(erasure_id=erasure_id)
    if start.wait:
        # An upload of the account is being processed: not a failure, so no retry limit; its
        # deadline bounds the wait.
        raise self.retry(countdown=start.wait, max_retries=None)


@batch_handler(deletion.ERASURE_BATCH_KIND)
def erase_slices(items: list[dict], batch: Batch) -> None:
    for item in items:
        deletion.account_erasure_slice(**item)


@shared_task(name="accounts.finish_erasure", idempotent=True)
def finish_erasure(batch_id: int, erasure_id: int) -> None:
    deletion.account_erasure_finish(erasure_id=erasure_id)
