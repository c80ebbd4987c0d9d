import contextlib
import re
import unicodedata

import idna
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

# Inside quotes, a backslash makes the next character literal: "d\ave" is the mailbox dave.
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 5322's dot-atom: a quoted local part made only of these needs no quotes, and means the
# same mailbox as the unquoted one.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def address_normalize(email: str) -> str:
    """The one form of an address that we store, look up and count limits by.

    Spellings that reach the same mailbox must be one account and one rate-limit bucket, or an
    attacker gets a fresh account (and fresh limits) per spelling: compatibility characters are
    folded (NFKC: a full-width e, U+FF45, is "e"), a needlessly quoted local part is unquoted
    ("dave"@ and "d\\ave"@ are dave@), the domain is IDNA-encoded as mail servers see it, by
    IDNA 2008 with UTS #46 mapping (exämple.com is xn--exmple-cua.com, and faß.de stays its own
    domain, xn--fa-hia.de: IDNA 2003 would send its mail to fass.de, someone else's), and the
    whole is lowercased: in practice no provider treats the local part as case-sensitive, and
    people type their address in whatever case they like.
    """
    address = unicodedata.normalize("NFKC", email).strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()  # not an address: the validators refuse it
    if len(local) > 2 and local[0] == local[-1] == '"':
        unescaped = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _DOT_ATOM.fullmatch(unescaped):
            local = unescaped
    with contextlib.suppress(idna.IDNAError):  # an invalid domain: the validators refuse it
        domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{local}@{domain}".lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, email: str) -> "User":
        # Every login path (the admin's form included) looks the address up in its stored form.
        return self.get(email=address_normalize(email))

    def create_user(self, email: str, password: str | None = None, **fields) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=address_normalize(email), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> "User":
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        fields.setdefault("email_verified_at", timezone.now())
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who logs in with an email address; there is no username."""

    # unique=True is what Django's auth requires of a login field; the constraint below adds the
    # case-insensitive guarantee that matters (save() lowercases too, but raw SQL could not).
    email = models.EmailField(max_length=254, unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="Can log into the admin site.")
    date_joined = models.DateTimeField(default=timezone.now)
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # Set by a deletion request, cleared by its cancel: from then on, the account's data is
    # erased (accounts/deletion.py).
    deletion_scheduled_for = models.DateTimeField(null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            # Case-insensitive uniqueness enforced by the database, so two concurrent signups
            # for Ada@ and ada@ cannot both win.
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]
        indexes = [
            # The periodic job's question: whose grace period has ended?
            models.Index(
                fields=["deletion_scheduled_for"],
                condition=models.Q(deletion_scheduled_for__isnull=False),
                name="accounts_user_deletion_due",
            ),
        ]

    def __str__(self) -> str:
        return self.email

    def save(self, *args, **kwargs) -> None:
        # Every path (admin form, shell, services) stores the same normal form.
        self.email = address_normalize(self.email)
        super().save(*args, **kwargs)

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class ApiToken(models.Model):
    """A bearer token from an API login. Only its SHA-256 is stored: a database leak yields
    no usable tokens. One row per login, so logout ends one device, a reset ends them all."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token of {self.user_id} from {self.created_at:%Y-%m-%d}"


class EmailDelivery(models.Model):
    """One email to send, written in the transaction of the request that wants it sent.

    Rendered when created, so every retry sends the same text under the same Message-ID. The
    status row is the idempotency guard: a redelivered task finds `sent` and does nothing.

    An email with a link that logs someone in (verification, password reset) stores no token:
    its body holds a placeholder, and `link_state` the state the token must match; the token is
    signed and put in at send time. Staff who can read deliveries cannot use them.
    """

    class Kind(models.TextChoices):
        VERIFICATION = "verification", "verify your email"
        WELCOME = "welcome", "welcome"
        PASSWORD_RESET = "password_reset", "password reset"
        PASSWORD_CHANGED = "password_changed", "password changed"
        SIGNUP_ATTEMPT = "signup_attempt", "signup attempt with a taken address"
        DELETION_SCHEDULED = "deletion_scheduled", "account deletion scheduled"
        DELETION_CANCELLED = "deletion_cancelled", "account deletion cancelled"
        ACCOUNT_ERASED = "account_erased", "account erased"
        REPORT_READY = "report_ready", "report ready"
        # Any other notification whose email channel is on (notifications/services.py).
        NOTIFICATION = "notification", "notification"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        SENDING = "sending", "sending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"
        # The server may have it: the reply to the message was lost, or a worker died between
        # handing it over and recording the answer. Never sent again by itself; a person decides.
        UNKNOWN = "unknown", "may have been delivered"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="email_deliveries"
    )
    recipient = models.EmailField(max_length=254)
    subject = models.CharField(max_length=200)
    body_text = models.TextField()
    body_html = models.TextField(blank=True)
    # A file sent with the email, relative to MEDIA_ROOT (a report's PDF); read when it is sent.
    attachment = models.CharField(max_length=255, blank=True)
    link_purpose = models.CharField(max_length=40, blank=True)
    link_state = models.CharField(max_length=64, blank=True)
    message_id = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    body_pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "email deliveries"
        indexes = [
            models.Index(fields=["status", "sent_at"], name="accounts_delivery_sent"),
            # An erasure finds the emails to an address that had no account yet (a signup
            # attempt, a verification) by it, a slice at a time.
            models.Index(fields=["recipient"], name="accounts_delivery_recipient"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.recipient} ({self.status})"


class AccountSession(AbstractBaseSession):
    """A web session that knows its account (`SESSION_ENGINE = "accounts.sessions"`), so that
    every session of an account can end at once, when it asks for its deletion, and be erased
    with it. Django's own session table keeps the account only inside the encoded data."""

    account_id = models.BigIntegerField(null=True, blank=True, db_index=True)

    @classmethod
    def get_session_store_class(cls):
        from accounts.sessions import SessionStore

        return SessionStore


class AccountErasure(models.Model):
    """One account's erasure, from the moment it is queued to its receipt.

    While it is queued or running it names its account; once done, the account row is gone
    (the link is nulled) and what remains is personal to no one: a keyed hash of the account's
    id (a person who gives their old id can be told their data was erased; nobody can list whose
    it was), what was erased and how much, and when.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued: waits for the account's earlier jobs"
        RUNNING = "running", "erasing"
        DONE = "done", "erased"

    account_hash = models.CharField(max_length=64, unique=True)
    user = models.OneToOneField(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="erasure"
    )
    batch = models.ForeignKey(
        "jobs.Batch", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.QUEUED)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the periodic job last sent its start or finish again (a message the broker lost).
    resent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"erasure {self.account_hash[:12]} ({self.status})"


class AccountErasureCount(models.Model):
    """How many rows of one area (accounts/erasure.py) an erasure removed or anonymized: moved in
    the transaction that erases them, so a slice that runs twice counts once."""

    erasure = models.ForeignKey(AccountErasure, on_delete=models.CASCADE, related_name="counts")
    area = models.CharField(max_length=100)
    rows = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["erasure", "area"], name="accounts_erasure_area_once")
        ]

    def __str__(self) -> str:
        return f"{self.area}: {self.rows}"
