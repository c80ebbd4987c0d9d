"""The registry of what an account's erasure erases: every model and storage area that holds a
person's data, each with its policy.

Each app declares its own areas in its `erasure.py` (`media/erasure.py`, and this module for the
accounts app and the job platform), imported when the app registry is ready. The erasure
(accounts/deletion.py) walks the areas in their order, in id-ordered slices. A test
(tests/accounts/test_erasure_registry.py) fails when a model with a foreign key to the user, or
a field holding an email address, is in no area: a model added later cannot be forgotten.

An area is one of:
- **delete**: the rows go, and with them their files (before the rows, and once more after, so
  that neither a crash nor a pipeline step writing at that moment leaves a file nobody can
  reach), and the job platform's records that name them (outbox rows and dead letters by task
  argument, idempotency keys by key);
- **anonymize**: the rows stay because another person's data, or the service's own record,
  needs them; the fields that tie them to the account are overwritten. Each says why;
- **unlinked**: the rows stay, and the database nulls their link when the account row goes
  (a SET_NULL foreign key); nothing else in them is the person's. Each says why.
"""

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.admin.models import LogEntry
from django.db import models
from django.db.models import Q

from accounts.models import AccountErasure, AccountSession, ApiToken, EmailDelivery, User
from jobs.models import Batch, DeadLetter, OutboxMessage


class Policy(enum.Enum):
    DELETE = "delete"
    ANONYMIZE = "anonymize"
    # The row stays, and the database nulls its link when the account row goes (its foreign
    # key is SET_NULL): nothing else in it is the person's.
    UNLINKED = "unlinked"


@dataclass(frozen=True)
class ErasureArea:
    """One kind of a person's data.

    `rows(user)`: every row of the area that is the account's. `task_argument`: the keyword
    under which tasks name these rows (`upload_id`): outbox rows and dead letters carrying one
    of the erased ids go with them. `idempotency_keys(ids)`: the keys that name them.
    `files_erase(ids)`: removes the rows' files; idempotent."""

    name: str
    model: type[models.Model]
    rows: Callable[[User], models.QuerySet]
    policy: Policy = Policy.DELETE
    anonymized: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    task_argument: str = ""
    idempotency_keys: Callable[[list], list[str]] | None = None
    files_erase: Callable[[list], None] | None = None

    def __post_init__(self) -> None:
        if (self.policy is Policy.ANONYMIZE) != bool(self.anonymized):
            raise ValueError(f"{self.name}: anonymize, and only anonymize, says what it overwrites")
        if (self.policy is Policy.DELETE) == bool(self.reason):
            raise ValueError(f"{self.name}: a row that stays says why, and only such a row")


_areas: dict[str, ErasureArea] = {}


def erasure_area_register(area: ErasureArea) -> None:
    """Declare an area; the order of declaration is the order of erasure."""
    if area.name in _areas:
        raise ValueError(f"erasure area {area.name!r} is declared twice")
    _areas[area.name] = area


def erasure_areas() -> Iterator[ErasureArea]:
    return iter(_areas.values())


def erasure_area(name: str) -> ErasureArea:
    return _areas[name]


# --- the accounts app's areas and the job platform's --------------------------------------------

erasure_area_register(
    ErasureArea(
        name="accounts.AccountSession",
        model=AccountSession,
        rows=lambda user: AccountSession.objects.filter(account_id=user.pk),
    )
)
erasure_area_register(
    ErasureArea(
        name="accounts.ApiToken",
        model=ApiToken,
        rows=lambda user: ApiToken.objects.filter(user=user),
    )
)
erasure_area_register(
    ErasureArea(
        name="accounts.EmailDelivery",
        model=EmailDelivery,
        # Emails for the account, and to its address without an account: a signup attempt with
        # the taken address, a verification sent before the account existed. Not the last email
        # of an erasure, which goes to the address once the account is gone.
        rows=lambda user: EmailDelivery.objects.filter(
            Q(user=user) | Q(recipient=user.email)
        ).exclude(kind=EmailDelivery.Kind.ACCOUNT_ERASED),
        task_argument="delivery_id",
    )
)
erasure_area_register(
    ErasureArea(
        name="jobs.OutboxMessage",
        model=OutboxMessage,
        # Tasks that name the account itself (by address or id) or wait in its ordering key. Those
        # that name the account's rows (an upload, an email) go with those rows.
        rows=lambda user: OutboxMessage.objects.filter(
            Q(kwargs__email=user.email)
            | Q(kwargs__user_id=user.pk)
            | Q(ordering_key=f"account:{user.pk}")
        ),
    )
)
erasure_area_register(
    ErasureArea(
        name="jobs.DeadLetter",
        model=DeadLetter,
        rows=lambda user: DeadLetter.objects.filter(
            Q(kwargs__email=user.email) | Q(kwargs__user_id=user.pk)
        ),
    )
)
erasure_area_register(
    ErasureArea(
        name="jobs.Batch",
        model=Batch,
        rows=lambda user: Batch.objects.filter(owner=user),
        policy=Policy.UNLINKED,
        reason="a batch's counts and failures are the service's record for staff; only its "
        "link to the account goes (the erasure's own batch among them)",
    )
)
erasure_area_register(
    ErasureArea(
        name="admin.LogEntry",
        model=LogEntry,
        # Staff accounts cannot be deleted this way (accounts/deletion.py); a person's own
        # account has no admin history. Declared so that none is ever left behind.
        rows=lambda user: LogEntry.objects.filter(user=user),
    )
)
erasure_area_register(
    ErasureArea(
        name="admin.LogEntry.about",
        model=LogEntry,
        # Staff's changes to the account's rows name them by their text: the user row by its
        # address, an email by "welcome to <address>".
        rows=lambda user: LogEntry.objects.filter(
            Q(object_repr__icontains=user.email) | Q(change_message__icontains=user.email)
        ),
        policy=Policy.ANONYMIZE,
        anonymized={"object_repr": "(an erased account's)", "change_message": ""},
        reason="what staff did stays on record, without the account's address in it",
    )
)
erasure_area_register(
    ErasureArea(
        name="accounts.AccountErasure",
        model=AccountErasure,
        rows=lambda user: AccountErasure.objects.filter(user=user),
        policy=Policy.UNLINKED,
        reason="the receipt that the account was erased: a keyed hash of its id, what was "
        "erased, and when; its link to the account goes with the account",
    )
)
