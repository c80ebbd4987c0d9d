"""Fixtures the media tests share."""

from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    """A MEDIA_ROOT of this test's own, inside tmp_path (so a write outside it shows too)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@dataclass(frozen=True)
class Browser:
    client: Client
    csrf_token: str  # sent in the X-CSRFToken header, as static/js/uploads.js does


@pytest.fixture
def browser(db) -> Browser:
    """A signed-in browser, sending as static/js/uploads.js does: the session cookie, and the
    CSRF token in a header (CSRF checks on, unlike the test client's default)."""
    user = get_user_model().objects.create_user(
        "browser@example.com", "correct horse battery", email_verified_at="2026-01-01T00:00Z"
    )
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token = "a" * 32
    client.cookies[django_settings.CSRF_COOKIE_NAME] = token
    return Browser(client=client, csrf_token=token)
