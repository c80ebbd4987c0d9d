"""The product's pipelines as the chaos suite asks for them and counts them.

Each workload asks for `size` jobs the way a person or staff does (the API, the services a page
calls), and says of each job what a person would see: the outside effect it was for (an email at
the mail server, a push at the push service), counted, and the job's state (done, failed where a
person sees it, or still open). A job is one key: an address, an upload's device.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from accounts import deletion
from accounts.models import EmailDelivery
from accounts.services import api_token_create
from media.models import Upload
from notifications.announcements import announcement_publish
from notifications.models import ChannelPreference, Device, Kind, Notification, PushDelivery
from reports.models import Report
from tests.media.images_for_tests import jpeg

User = get_user_model()

DONE, HELD, OPEN = "done", "held", "open"
# What a person can see and act on: a failed job says why; an email or push whose outcome is
# unknown waits for "send again"; each has its dead letter or status in the admin.
EMAIL_HELD = {EmailDelivery.Status.FAILED, EmailDelivery.Status.UNKNOWN}
PUSH_HELD = {PushDelivery.Status.FAILED, PushDelivery.Status.UNKNOWN}
ERASED_SUBJECT = "Your account has been deleted"


@dataclass
class Workload:
    size: int
    smtp: object
    push_service: object
    keys: list[str] = field(default_factory=list)
    # endpoint -> (the address of the browser's owner, the browser's subscription)
    browsers: dict = field(default_factory=dict)
    name: ClassVar[str] = ""

    def ask(self) -> None:
        raise NotImplementedError

    def effects(self) -> Counter:
        """key -> how many times its outside effect arrived."""
        raise NotImplementedError

    def states(self) -> dict[str, str]:
        """key -> DONE, HELD or OPEN."""
        raise NotImplementedError

    def begun(self) -> bool:
        """The work is under way: a job is final."""
        return set(self.states().values()) != {OPEN}

    # --- shared by the workloads -----------------------------------------------------------

    def people(self, *, push_kind: str = "", email_kind: str = "", pushed: int = 0) -> list:
        """`size` verified accounts (no password: made in one INSERT), each wanting `email_kind`
        emailed, and the first `pushed` (all by default) `push_kind` pushed to a browser of
        its own; the keys are the addresses of those whose notices are counted."""
        User.objects.bulk_create(
            User(
                email=f"{self.name}-{i}@example.com", password="!", email_verified_at=timezone.now()
            )
            for i in range(self.size)
        )
        users = list(User.objects.filter(email__startswith=f"{self.name}-").order_by("pk"))
        pushed_to = users[: pushed or self.size] if push_kind else []
        ChannelPreference.objects.bulk_create(
            [ChannelPreference(user=u, kind=push_kind, push=True, email=False) for u in pushed_to]
            + [
                ChannelPreference(user=u, kind=email_kind, push=False, email=True)
                for u in (users if email_kind else [])
            ]
        )
        for user in pushed_to:
            browser = self.push_service.subscription(f"{self.name}-{user.pk}")
            Device.objects.create(
                user=user,
                platform="webpush",
                address=browser.endpoint,
                keys=browser.as_json()["keys"],
            )
            self.browsers[browser.endpoint] = (user.email, browser)
        self.keys = [user.email for user in (pushed_to or users)]
        return users

    def pushes(self, kind: str) -> Counter:
        """address -> pushes of `kind` its browser received (decrypted, as its browser would)."""
        arrived = Counter()
        base = f"https://127.0.0.1:{self.push_service.port}"
        for received in list(self.push_service.received):
            owner = self.browsers.get(base + received.path)
            if owner and owner[1].decrypt(received.body)["kind"] == kind:
                arrived[owner[0]] += 1
        return arrived

    def emails(self, subject_contains: str) -> Counter:
        return Counter(
            {
                key: sum(subject_contains in m["Subject"] for m in self.smtp.sent_to(key))
                for key in self.keys
            }
        )

    @staticmethod
    def push_state(user_email: str, kind: str) -> str:
        statuses = set(
            PushDelivery.objects.filter(
                notification__user__email=user_email, notification__kind=kind
            ).values_list("status", flat=True)
        )
        if statuses == {PushDelivery.Status.SENT}:
            return DONE
        return HELD if statuses & PUSH_HELD else OPEN

    @classmethod
    def email_state(cls, deliveries) -> str:
        return cls.email_state_of(set(deliveries.values_list("status", flat=True)))

    @staticmethod
    def email_state_of(statuses: set[str]) -> str:
        if statuses == {EmailDelivery.Status.SENT}:
            return DONE
        return HELD if statuses & EMAIL_HELD else OPEN


class Signups(Workload):
    """Signups through the API; each one's verification email."""

    name = "signup"

    def ask(self) -> None:
        self.keys = [f"{self.name}-{i}@example.com" for i in range(self.size)]
        for address in self.keys:
            answer = Client().post(
                "/api/v1/auth/signup",
                {"email": address, "password": "correct horse battery staple"},
                content_type="application/json",
            )
            assert answer.status_code == 202, answer.content

    def effects(self) -> Counter:
        return self.emails("Confirm your email")

    def states(self) -> dict[str, str]:
        return {
            key: self.email_state(
                EmailDelivery.objects.filter(recipient=key, kind=EmailDelivery.Kind.VERIFICATION)
            )
            for key in self.keys
        }


class Uploads(Workload):
    """One photo each through the API, processed to its variants; the "ready" push."""

    name = "upload"

    def ask(self) -> None:
        image = jpeg(2400, 1600)
        for user in self.people(push_kind=Kind.UPLOAD_READY):
            owner = Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})
            answer = owner.post("/api/v1/uploads", {"file": SimpleUploadedFile("photo.jpg", image)})
            assert answer.status_code == 202, answer.content

    def effects(self) -> Counter:
        return self.pushes(Kind.UPLOAD_READY)

    def begun(self) -> bool:
        """A step has made a variant (progress), long before the first upload is ready."""
        return Upload.objects.filter(owner__email__in=self.keys, progress__gt=0).exists()

    def states(self) -> dict[str, str]:
        states = {}
        for key in self.keys:
            status = Upload.objects.filter(owner__email=key).values_list("status", flat=True)
            if list(status) == [Upload.Status.FAILED]:
                states[key] = HELD
            elif list(status) == [Upload.Status.READY]:
                states[key] = self.push_state(key, Kind.UPLOAD_READY)
            else:
                states[key] = OPEN
        return states


class Reports(Workload):
    """One report each, asked for through the API; the "ready" email with its PDF."""

    name = "report"

    def ask(self) -> None:
        for user in self.people(email_kind=Kind.REPORT_READY):
            owner = Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})
            answer = owner.post(
                "/api/v1/reports", {"frequency": "daily"}, content_type="application/json"
            )
            assert answer.status_code == 202, answer.content

    def effects(self) -> Counter:
        return self.emails("report is ready")

    def states(self) -> dict[str, str]:
        states = {}
        for key in self.keys:
            status = list(Report.objects.filter(user__email=key).values_list("status", flat=True))
            if status == [Report.Status.FAILED]:
                states[key] = HELD
            elif status == [Report.Status.READY]:
                states[key] = self.email_state(
                    EmailDelivery.objects.filter(
                        recipient=key, kind=EmailDelivery.Kind.REPORT_READY
                    )
                )
            else:
                states[key] = OPEN
        return states


class Erasures(Workload):
    """Accounts deleted for good (grace over), as beat's periodic job queues them; the last
    email, "your account has been deleted"."""

    name = "erasure"

    def ask(self) -> None:
        for user in self.people():
            user.deletion_scheduled_for = timezone.now()
            user.save(update_fields=["deletion_scheduled_for"])
        # What beat's periodic job does each minute; a beat may have done it first.
        deletion.account_erasures_queue_due()

    def effects(self) -> Counter:
        return self.emails(ERASED_SUBJECT)

    def states(self) -> dict[str, str]:
        # An erased account's address is forgotten once its last email is settled: each key is
        # matched to its delivery row by the Message-ID of the email that arrived. The rows of
        # the keys whose email never arrived are theirs in some order; what those rows say
        # (sent with nothing arrived: lost; failed or unknown: held; still queued: open) holds
        # whichever key each belongs to.
        rows = dict(
            EmailDelivery.objects.filter(kind=EmailDelivery.Kind.ACCOUNT_ERASED).values_list(
                "message_id", "status"
            )
        )
        states, unmatched = {}, []
        for key in self.keys:
            arrived = [m for m in self.smtp.sent_to(key) if ERASED_SUBJECT in m["Subject"]]
            statuses = {rows.pop(m["Message-ID"], None) for m in arrived} - {None}
            if statuses:
                states[key] = self.email_state_of(statuses)
            else:
                unmatched.append(key)
        left = list(rows.values())
        for key in unmatched:
            states[key] = self.email_state_of({left.pop()}) if left else OPEN
        return states


class Broadcast(Workload):
    """An announcement from staff to every account, as a batch; pushed to those who want it."""

    name = "broadcast"
    devices = 30

    def ask(self) -> None:
        users = self.people(push_kind=Kind.ANNOUNCEMENT, pushed=self.devices)
        self.pushed = set(self.keys)
        self.keys = [user.email for user in users]
        announcement_publish(title="Maintenance on Sunday", body="From 2 to 3 am.", by=None)

    def effects(self) -> Counter:
        """A pushed person's pushes; anyone else's notices in the inbox."""
        pushes, inbox = self.pushes(Kind.ANNOUNCEMENT), self.inbox()
        return Counter({key: (pushes if key in self.pushed else inbox)[key] for key in self.keys})

    def states(self) -> dict[str, str]:
        inbox = self.inbox()
        return {
            key: self.push_state(key, Kind.ANNOUNCEMENT)
            if key in self.pushed
            else (DONE if inbox[key] else OPEN)
            for key in self.keys
        }

    def inbox(self) -> Counter:
        return Counter(
            Notification.objects.filter(kind=Kind.ANNOUNCEMENT).values_list(
                "user__email", flat=True
            )
        )


WORKLOADS = {kind.name: kind for kind in (Signups, Uploads, Reports, Erasures, Broadcast)}
# Sizes: enough that a fault lands while most of each is in flight, few enough that the suite
# stays within minutes per broker.
SIZES = {"signup": 30, "upload": 4, "report": 4, "erasure": 6, "broadcast": 300}
