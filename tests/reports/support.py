"""What the reports tests share: a person with an API client, the PDF's text, waiting."""

import io
from datetime import UTC, datetime

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from pypdf import PdfReader

from accounts.services import api_token_create
from reports import services
from reports.models import Report, ReportSchedule
from tests.services import eventually


def person(email: str, **fields) -> tuple:
    """A verified account, and an API client holding a token of it."""
    user = get_user_model().objects.create_user(
        email, "x" * 12, email_verified_at=timezone.now(), **fields
    )
    app = Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})
    return user, app


# Before every period the tests dispatch: a schedule sends the periods that end after it was set.
SUBSCRIBED_LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)


def subscribed(user, frequency: str, timezone_name: str) -> None:
    """The person chose this schedule at the start of 2026."""
    services.report_schedule_set(user=user, frequency=frequency, timezone_name=timezone_name)
    ReportSchedule.objects.filter(user=user).update(since=SUBSCRIBED_LONG_AGO)


def all_ready(expected: int, timeout: float = 60) -> list[Report]:
    """Wait until exactly `expected` reports are ready, and return them."""
    return eventually(
        lambda: (
            reports
            if len(reports := list(Report.objects.filter(status=Report.Status.READY))) == expected
            else None
        ),
        timeout=timeout,
        interval=0.2,
    )


def pdf_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
