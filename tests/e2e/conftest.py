"""What the browser tests share: Debian's Chromium driven by Playwright, the project's static files
collected as the image's build does, and the web server started by the Procfile's command."""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.browsers import CHROMIUM, Browser, sync_playwright
from tests.harness import PUSH_PORT, SESSION_DIR
from tests.services import BASE_DIR, WebProcess


@pytest.fixture(scope="session", autouse=True)
def browser_available() -> None:
    """The browser and Playwright are there, or the test says why not before starting servers."""
    if sync_playwright is not None and CHROMIUM.exists():
        return
    why = "the browser test needs Playwright and Debian's chromium: run `make setup`"
    if os.environ.get("CI"):
        pytest.fail(why)  # setup.sh ran there: a missing browser is a broken setup, not a skip
    pytest.skip(why)


@pytest.fixture(scope="session")
def collected_static() -> Path:
    """The project's static files collected as the Dockerfile's build does (hashed names and a
    manifest, which the web server needs with DEBUG off), the admin's among them. Not the API
    docs': they take 24 of collectstatic's 26 seconds, and no page here loads them."""
    folder = SESSION_DIR / "e2e-static"
    ignored = ["rest_framework", "drf_spectacular_sidecar"]
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"]
        + [f"--ignore={name}" for name in ignored],
        cwd=BASE_DIR,
        env={**os.environ, "STATIC_ROOT": str(folder)},
        check=True,
        timeout=120,
    )
    return folder


@pytest.fixture
def web(start_web: Callable[..., WebProcess], collected_static: Path) -> WebProcess:
    # Google's push service allowed besides the session's: where the browser reaches FCM, the
    # subscription it makes is stored for real.
    return start_web(
        extra_env={
            "STATIC_ROOT": str(collected_static),
            "WEBPUSH_ALLOWED_HOSTS": f"127.0.0.1:{PUSH_PORT},fcm.googleapis.com",
        }
    )


@pytest.fixture
def browser(web: WebProcess, tmp_path: Path, monkeypatch, request) -> Iterator[Browser]:
    """A headless Chromium with a profile of its own, notifications allowed for the site. A
    test that fails leaves a screenshot of the page it was on in the session folder."""
    # Playwright's sync API keeps an event loop marked running in this thread, so Django refuses
    # its ORM here; the test's queries never run inside that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with sync_playwright() as playwright:
        # A profile on disk, as a person's browser has: in an incognito context (what
        # browser.new_context() makes) Chromium refuses push altogether.
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, base_url=web.url
        )
        context.grant_permissions(["notifications"], origin=web.url)
        opened = Browser(context=context, page=context.pages[0])
        context.on("console", opened.console)
        context.on("weberror", lambda error: opened.problems.append(f"uncaught: {error.error}"))
        try:
            yield opened
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                opened.page.screenshot(
                    path=SESSION_DIR / f"{request.node.name}.png", full_page=True
                )
        finally:
            context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
