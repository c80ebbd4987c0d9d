from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    @staticmethod
    def normalize_address(email: str) -> str:
        # The whole address is lowercased: in practice no mail provider treats the local part as
        # case-sensitive, and people type their address in whatever case they like.
        return email.strip().lower()

    def create_user(self, email: str, password: str | None = None, **fields) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_address(email), **fields)
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

    def __str__(self) -> str:
        return self.email

    def save(self, *args, **kwargs) -> None:
        # Every path (admin form, shell, services) stores the same normal form.
        self.email = UserManager.normalize_address(self.email)
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

    Rendered when created, so every retry sends the same bytes under the same Message-ID. The
    status row is the idempotency guard: a redelivered task finds `sent` and does nothing.
    """

    class Kind(models.TextChoices):
        VERIFICATION = "verification", "verify your email"
        WELCOME = "welcome", "welcome"
        PASSWORD_RESET = "password_reset", "password reset"
        PASSWORD_CHANGED = "password_changed", "password changed"
        SIGNUP_ATTEMPT = "signup_attempt", "signup attempt with a taken address"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        SENDING = "sending", "sending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="email_deliveries"
    )
    recipient = models.EmailField(max_length=254)
    subject = models.CharField(max_length=200)
    body_text = models.TextField()
    body_html = models.TextField(blank=True)
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
        indexes = [models.Index(fields=["status", "sent_at"], name="accounts_delivery_sent")]

    def __str__(self) -> str:
        return f"{self.kind} to {self.recipient} ({self.status})"
