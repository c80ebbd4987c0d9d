"""What the reports tests share: a person with an API client, the PDF's text, waiting."""

import io

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from pypdf import PdfReader

from accounts.services import api_token_create
from reports.models import Report
from tests.services import eventually


def person(email: str, **fields) -> tuple:
    """A verified account, and an API client holding a token of it."""
    user = get_user_model().objects.create_user(
        email, "x" * 12, email_verified_at=timezone.now(), **fields
    )
    app = Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})
    return user, app


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
