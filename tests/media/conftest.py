"""Fixtures the media tests share."""

from pathlib import Path

import pytest


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    """A MEDIA_ROOT of this test's own, inside tmp_path (so a write outside it shows too)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT
