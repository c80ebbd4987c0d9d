"""Emails as status rows: rendered in the request, sent by a task on the `emails` queue."""

import logging
import mimetypes
from datetime import datetime, timedelta
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.db.models import QuerySet
from django.template.loader import render_to_string
from django.utils import timezone

from accounts import tokens
from accounts.models import EmailDelivery, User
from jobs.brokers import queue_drained
from jobs.deadletters import DeadLetterNotActionable
from jobs.lost_messages import interrupted_rows_mark_unknown, lost_after, lost_rows_requeue
from jobs.models import DeadLetter
from jobs.outbox import enqueue
from jobs.retry import OutcomeUnknown, PermanentError, TransientError, classify_smtp_error

logger = logging.getLogger(__name__)

# Stands in the stored body for the token of the email's link; URL-safe, so it survives the
# templates' urlencode unchanged, and says to whoever reads the body in the admin what it is.
TOKEN_PLACEHOLDER = "TOKEN-ADDED-WHEN-SENT"  # noqa: S105 (a marker, not a secret)


# Emails whose address must not outlive their sending: the last email to an erased account's
# address. Until it is sent or given up, the address is needed to send it.
FORGOTTEN_ONCE_SENT = {EmailDelivery.Kind.ACCOUNT_ERASED}


class LinkUnavailable(Exception):
    """The account a link email was for no longer exists: there is nothing to link to."""


def email_delivery_create(
    *,
    kind: str,
    recipient: str,
    user: User | None = None,
    context: dict | None = None,
    link_purpose: str = "",
    attachment: str = "",
) -> EmailDelivery:
    """Render the email and queue it durably; call inside the transaction that needs it, so it
    is sent if and only if that transaction commits (and even if the broker is down now).

    With `link_purpose` (a `tokens.PURPOSE_*`), the templates' `token` is a placeholder and the
    user's current token state is stored; the token itself is made when the email is sent.
    `attachment`: a file under MEDIA_ROOT (its path relative to it), attached when it is sent.
    """
    from accounts import tasks  # the task module imports this one

    context = {
        "site_url": settings.SITE_URL,
        "user": user,
        "recipient": recipient,
        **(context or {}),
    }
    if link_purpose:
        context["token"] = TOKEN_PLACEHOLDER
    subject = render_to_string(f"emails/{kind}.subject.txt", context)
    delivery = EmailDelivery.objects.create(
        kind=kind,
        user=user,
        recipient=recipient,
        # Templates may wrap lines; a header must be one line, whatever the template does.
        subject=" ".join(subject.split())[:200],
        body_text=render_to_string(f"emails/{kind}.txt", context),
        body_html=render_to_string(f"emails/{kind}.html", context),
        link_purpose=link_purpose,
        attachment=attachment,
        link_state=tokens.token_state(purpose=link_purpose, user=user) if link_purpose else "",
        message_id=make_msgid(domain=urlsplit(settings.SITE_URL).hostname or "localhost"),
    )
    enqueue(tasks.send_email, delivery_id=delivery.pk)
    return delivery


def email_delivery_send(*, delivery_id: int) -> None:
    """Send one queued email. Calling it again for a sent delivery does nothing.

    Raises TransientError (the task retries) or PermanentError (the task dead-letters).
    """
    with transaction.atomic():
        delivery = EmailDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None:
            return  # erased with its account (accounts/deletion.py) before it went out
        if delivery.status not in {EmailDelivery.Status.QUEUED, EmailDelivery.Status.SENDING}:
            # A redelivered message, or a person's decision (a discarded dead letter): settled.
            # A re-drive reopens a failed row first (email_delivery_reopen).
            return
        if delivery.status == EmailDelivery.Status.SENDING:
            # A worker died between starting this send and recording its outcome. The server
            # may or may not have accepted it; sending again could deliver it twice. Leave the
            # decision to a person ("send again" in the admin).
            delivery.status = EmailDelivery.Status.UNKNOWN
            delivery.last_error = "interrupted while sending; may have been delivered"
            delivery.save(update_fields=["status", "last_error", "updated_at"])
            return
        delivery.status = EmailDelivery.Status.SENDING
        delivery.attempts += 1
        delivery.save(update_fields=["status", "attempts", "updated_at"])
    try:
        _smtp_send(delivery)
    except OutcomeUnknown as error:
        # Sending again could deliver it twice: the task dead-letters it, a person decides.
        _delivery_failed(delivery, status=EmailDelivery.Status.UNKNOWN, error=error)
        raise
    except Exception as error:
        verdict = classify_smtp_error(error) or error
        transient = isinstance(verdict, TransientError)
        _delivery_failed(
            delivery,
            status=EmailDelivery.Status.QUEUED if transient else EmailDelivery.Status.FAILED,
            error=error,
        )
        if transient or isinstance(verdict, PermanentError):
            raise verdict from error
        raise
    EmailDelivery.objects.filter(pk=delivery.pk).update(
        status=EmailDelivery.Status.SENT,
        sent_at=timezone.now(),
        last_error="",
        updated_at=timezone.now(),
    )
    _address_forget_if_final(delivery_id=delivery.pk)


def _delivery_failed(delivery: EmailDelivery, *, status: str, error: Exception) -> None:
    EmailDelivery.objects.filter(pk=delivery.pk).update(
        status=status,
        last_error=f"{type(error).__name__}: {error}"[:2000],
        updated_at=timezone.now(),
    )


def email_delivery_reopen(*, delivery_id: int) -> None:
    """Before a failed email's dead letter is re-driven (the cause fixed): queued again, in the
    re-drive's transaction. Refused for an email that may have been delivered (its "send again"
    is a person's call, in the admin) and for one whose address and body are gone (an erasure's
    confirmation, a pruned body): no re-drive could send it."""
    delivery = EmailDelivery.objects.select_for_update().filter(pk=delivery_id).first()
    if delivery is None:
        raise DeadLetterNotActionable("its email was erased with its account")
    if delivery.status == EmailDelivery.Status.UNKNOWN:
        raise DeadLetterNotActionable(
            "its email may have been delivered: if it was not, use the email's Send again"
        )
    if not delivery.recipient or delivery.body_pruned_at is not None:
        raise DeadLetterNotActionable("its email's address and body are forgotten")
    if delivery.status == EmailDelivery.Status.FAILED:
        delivery.status = EmailDelivery.Status.QUEUED
        delivery.save(update_fields=["status", "updated_at"])


def email_delivery_give_up(*, delivery_id: int, reason: str) -> None:
    """The task failed for good (its dead letter allows a re-drive): a queued delivery failed;
    one stopped mid-send (the hard time limit) may have been delivered. A delivery that was
    sent, or may have been, keeps saying so."""
    for was, now in (
        (EmailDelivery.Status.QUEUED, EmailDelivery.Status.FAILED),
        (EmailDelivery.Status.SENDING, EmailDelivery.Status.UNKNOWN),
    ):
        EmailDelivery.objects.filter(pk=delivery_id, status=was).update(
            status=now, last_error=reason[:2000], updated_at=timezone.now()
        )
    _address_forget_if_final(delivery_id=delivery_id)


def _address_forget_if_final(*, delivery_id: int) -> None:
    """An email whose address must not outlive its sending (FORGOTTEN_ONCE_SENT) forgets it once
    it went out, and also once it was given up: it is not kept to try again. Its dead letter
    forgets the server's reply, which often quotes the address."""
    forgotten = EmailDelivery.objects.filter(pk=delivery_id, kind__in=FORGOTTEN_ONCE_SENT)
    if forgotten.update(
        recipient="", body_text="", body_html="", last_error="", body_pruned_at=timezone.now()
    ):
        DeadLetter.objects.filter(kwargs__delivery_id=delivery_id).update(
            exception_message="", traceback=""
        )


def email_delivery_resend(*, delivery_id: int) -> None:
    """Send a failed (or even a sent) email again, as the admin's "send again" does."""
    with transaction.atomic():
        EmailDelivery.objects.filter(pk=delivery_id).update(
            status=EmailDelivery.Status.QUEUED, updated_at=timezone.now()
        )
        from accounts import tasks

        enqueue(tasks.send_email, delivery_id=delivery_id)


# Deliveries one sweep queues again or settles: a run stays short, a backlog drains over runs.
SWEEP_BATCH = 1000
# Where emails wait (CELERY_TASK_ROUTES: "accounts.send_email").
EMAIL_QUEUE = "emails"


def email_deliveries_lost(*, now: datetime | None = None) -> QuerySet[EmailDelivery]:
    """Deliveries queued, or being sent, and unmoved for longer than a live message waits: what
    the sweep acts on (while the emails queue is empty)."""
    from accounts import tasks  # the task module imports this one

    return EmailDelivery.objects.filter(
        status__in=(EmailDelivery.Status.QUEUED, EmailDelivery.Status.SENDING),
        updated_at__lt=(now or timezone.now()) - lost_after(tasks.send_email),
    )


def email_deliveries_sweep(*, now: datetime | None = None) -> int:
    """Settle the deliveries whose message the broker lost (the periodic `accounts.emails_sweep`);
    returns how many it acted on.

    A queued one is queued again: sending it is what its lost message would have done, and a
    message that still comes finds it sent. One caught `sending` had its worker die mid-send and
    then its message lost: the server may have it, so it becomes `unknown`, for a person to
    decide (the admin's "send again"), as a redelivered message would have made it. Only while
    the emails queue holds nothing: a backlog waiting its turn is not lost."""
    from accounts import tasks  # the task module imports this one

    now = now or timezone.now()
    lost = list(
        email_deliveries_lost(now=now)
        .order_by("updated_at")
        .values_list("pk", "updated_at", "status")[:SWEEP_BATCH]
    )
    if not lost or not queue_drained(EMAIL_QUEUE):
        return 0
    sending = EmailDelivery.Status.SENDING
    interrupted = interrupted_rows_mark_unknown(
        EmailDelivery.objects.filter(status=sending),
        [(pk, updated_at) for pk, updated_at, status in lost if status == sending],
        now=now,
        status=EmailDelivery.Status.UNKNOWN,
        last_error="interrupted while sending, and its message lost; may have been delivered",
    )
    for delivery_id in interrupted:
        _address_forget_if_final(delivery_id=delivery_id)
    settled = len(interrupted)
    queued_again = lost_rows_requeue(
        EmailDelivery.objects.filter(status=EmailDelivery.Status.QUEUED),
        [(pk, updated_at) for pk, updated_at, status in lost if status != sending],
        now=now,
        requeue=lambda delivery_id: enqueue(tasks.send_email, delivery_id=delivery_id),
    )
    logger.warning(
        "email sweep: %d delivery(ies) had lost their message, %d queued again, %d unknown",
        queued_again + settled,
        queued_again,
        settled,
    )
    return queued_again + settled


def email_bodies_prune(*, older_than_days: int) -> int:
    """Erase the bodies of emails sent long ago: they carry links with tokens."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return EmailDelivery.objects.filter(
        status=EmailDelivery.Status.SENT, sent_at__lt=cutoff, body_pruned_at__isnull=True
    ).update(body_text="", body_html="", body_pruned_at=timezone.now())


def _smtp_send(delivery: EmailDelivery) -> None:
    body_text, body_html = _bodies_with_link(delivery)
    message = EmailMultiAlternatives(
        subject=delivery.subject,
        body=body_text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.recipient],
        headers={"Message-ID": delivery.message_id},
        # A fresh connection per email: a worker holds none open between tasks, and the SMTP
        # backend applies EMAIL_TIMEOUT so a hung server fails the attempt instead of the worker.
        connection=get_connection(),
    )
    if body_html:
        message.attach_alternative(body_html, "text/html")
    if delivery.attachment:
        path = _attachment_path(delivery.attachment)
        message.attach(path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0])
    message.send(fail_silently=False)


def _attachment_path(relative: str) -> Path:
    """The attachment's file; PermanentError if it is gone (a report deleted before its email
    went out: an email that says "attached" must not go without it), or outside MEDIA_ROOT."""
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise PermanentError(f"the attachment {relative!r} is no longer there")
    return path


def _bodies_with_link(delivery: EmailDelivery) -> tuple[str, str]:
    """The bodies to send, with a freshly signed token where the stored ones hold the
    placeholder. The token carries the state stored with the email: if what it confirms changed
    since (a newer signup replaced the password), the link is dead, as it would have been."""
    if not delivery.link_purpose:
        return delivery.body_text, delivery.body_html
    if delivery.user_id is None:
        raise LinkUnavailable("the account this link was for no longer exists")
    token = tokens.token_sign(
        purpose=delivery.link_purpose, user_id=delivery.user_id, state=delivery.link_state
    )
    return (
        delivery.body_text.replace(TOKEN_PLACEHOLDER, token),
        # The HTML templates urlencode the token in links, as Django's filter does.
        delivery.body_html.replace(TOKEN_PLACEHOLDER, quote(token, safe="/")),
    )
