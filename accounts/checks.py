"""System checks: deletion settings that would fail every erasure fail loudly at start-up
instead, before an account's grace period ends."""

from django.conf import settings
from django.core.checks import Error, register

# A slice's ids go into `IN (...)` lists (its idempotency keys; SQLite allows 32,766 parameters
# a statement), its upload folders are removed twice within the chunk's time limit, and its
# transaction holds its rows' locks: ten thousand rows keeps all three far inside their bounds.
MAX_SLICE_ROWS = 10_000


@register()
def deletion_settings_work(app_configs, **kwargs) -> list[Error]:
    errors = []
    if not 1 <= settings.ACCOUNT_ERASURE_SLICE_ROWS <= MAX_SLICE_ROWS:
        errors.append(
            Error(
                f"ACCOUNT_ERASURE_SLICE_ROWS must be from 1 to {MAX_SLICE_ROWS}, not "
                f"{settings.ACCOUNT_ERASURE_SLICE_ROWS}.",
                id="accounts.E001",
            )
        )
    if settings.ACCOUNT_DELETION_GRACE_DAYS < 0:
        errors.append(
            Error("ACCOUNT_DELETION_GRACE_DAYS must be 0 or more days.", id="accounts.E002")
        )
    return errors
