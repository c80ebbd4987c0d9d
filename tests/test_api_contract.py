"""The OpenAPI schema (/api/schema) is the API's contract, and a running server keeps it.

Schemathesis reads the schema and sends every operation requests made from it: at its
boundaries, at random, invalid on purpose, and in chains that follow one answer's ids into the
next request. Each answer is checked against the schema (status, content type, headers, body)
and against HTTP (a 405 says Allow, credentials are enforced, a deleted upload is gone). The
server is gunicorn on the test database and the session's Redis, with a worker processing
uploads, as in production; the requests carry a verified user's bearer token.
"""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework import serializers

from accounts.services import api_token_create
from config.schema import NOT_BLANK_TEXT_PATTERN, TEXT_PATTERN
from tests.harness import SESSION_DIR
from tests.media.images_for_tests import jpeg
from tests.services import BASE_DIR, database_url_for_subprocesses, eventually

# Fixed, so that a failure is found again by the next run. Bounded: 10 cases per operation and
# phase (some 500 requests in all, with the schema's boundary cases) take about half a minute on
# two busy cores; 20 found nothing more in six other seeds and took half as long again.
SEED = 20261202
MAX_EXAMPLES = 10

SCHEMATHESIS_CONFIG = """
color = false
headers = { Authorization = "Bearer ${CONTRACT_TOKEN}" }

[generation]
database = "none"  # no examples replayed from earlier runs: the seed alone decides

[cache]
enabled = false

# Logging out revokes the token it is sent with: this operation has a token of its own, so the
# others keep theirs. After its first success it answers 401, as it documents.
[[operations]]
include-path = "/api/v1/auth/logout"
headers = { Authorization = "Bearer ${CONTRACT_LOGOUT_TOKEN}" }

# A processed upload of the user's, so that its answer and its files are read, not only 404s.
[[operations]]
include-name = ["GET /api/v1/uploads/{upload_id}", "GET /files/{upload_id}/{name}"]
parameters = { "path.upload_id" = "${CONTRACT_UPLOAD_ID}" }

# Requests the schema calls valid that these refuse with a 400 by design: a token must be one
# the server issued, credentials an account's, a new password must pass AUTH_PASSWORD_VALIDATORS
# (whose list of common passwords no schema can carry), a deletion needs the account's password.
[[operations]]
include-path = [
    "/api/v1/account/deletion",
    "/api/v1/auth/signup",
    "/api/v1/auth/login",
    "/api/v1/auth/verify-email",
    "/api/v1/auth/password-reset/confirm",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 429]

# A report's period must have ended, and not before the account began: dates a schema can
# bound only by today's date, which it does not know. A push endpoint must be on an allowed
# push service's host; a deletion's email cannot be switched off.
[[operations]]
include-name = [
    "POST /api/v1/reports",
    "POST /api/v1/devices",
    "PUT /api/v1/notifications/preferences",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 429]

# An upload must be a non-empty image in an accepted format (400, 415); the schema says binary.
[[operations]]
include-name = "POST /api/v1/uploads"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 415, 429]
"""


@pytest.fixture
def api_server(transactional_db) -> Iterator[str]:
    """gunicorn as the Procfile runs it, on a port of its choosing; yields its base URL."""
    log = SESSION_DIR / "processes" / f"contract-gunicorn-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": database_url_for_subprocesses()}
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--bind", "127.0.0.1:0", "--workers", "2", "--timeout", "30",
    ]  # fmt: skip
    with log.open("wb") as output:
        server = subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        url = eventually(lambda: _listening_url(server, log), timeout=30)
        eventually(lambda: _answers(f"{url}/healthz"), timeout=60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _listening_url(server: subprocess.Popen, log: Path) -> str | None:
    if server.poll() is not None:
        raise RuntimeError(f"gunicorn exited at start-up:\n{log.read_text(errors='replace')}")
    found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
    return found and found.group(1)


def _answers(url: str) -> bool:
    try:
        with urlopen(url, timeout=5) as response:  # noqa: S310 (our own http:// URL)
            return response.status == 200
    except OSError:  # refused, or timed out while its workers boot
        return False


def test_every_operation_answers_as_the_schema_says(api_server, celery_worker, tmp_path):
    # given a verified user with two tokens (one for logout to revoke) and a processed upload
    user = get_user_model().objects.create_user(
        "contract@example.com", "correct horse battery", email_verified_at="2026-01-01T00:00Z"
    )
    token, logout_token = api_token_create(user=user), api_token_create(user=user)
    owner = Client(headers={"Authorization": f"Bearer {token}"})
    upload = owner.post("/api/v1/uploads", {"file": SimpleUploadedFile("a.jpg", jpeg(320, 240))})
    assert upload.status_code == 202, upload.content
    upload_id = upload.json()["id"]
    eventually(lambda: owner.get(f"/api/v1/uploads/{upload_id}").json()["status"] == "ready")
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    reports = tmp_path / "reports"
    # when Schemathesis runs every phase and every check against the server
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{api_server}/api/schema", "--checks", "all",
        "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
        "--report", "junit,har", "--report-dir", str(reports),
    ]  # fmt: skip
    run = subprocess.run(
        command,
        cwd=tmp_path,  # where Hypothesis and Schemathesis would keep state between runs
        env={
            **os.environ,
            "CONTRACT_TOKEN": token,
            "CONTRACT_LOGOUT_TOKEN": logout_token,
            "CONTRACT_UPLOAD_ID": upload_id,
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    # then it finds nothing, having tested every operation in the schema
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    (junit,) = reports.glob("junit-*.xml")
    tested = {case.get("name") for case in ET.parse(junit).iter("testcase")}  # noqa: S314 (ours)
    assert set(_operations(owner)) <= tested
    (har,) = reports.glob("har-*.json")
    exchanges = json.loads(har.read_text())["log"]["entries"]
    # and no answer, error or not, gave away a stack trace
    for exchange in exchanges:
        body = exchange["response"]["content"].get("text", "")
        assert "Traceback (most recent call last)" not in body, exchange["request"]["url"]
        assert exchange["response"]["status"] < 500, exchange["request"]["url"]
    # and the processed upload's files were served, not only 404s for drawn ids
    served = {
        (exchange["response"]["status"], exchange["response"]["content"]["mimeType"])
        for exchange in exchanges
        if exchange["request"]["url"].startswith(f"{api_server}/files/{upload_id}/")
    }
    assert (200, "image/jpeg") in served, served


def _operations(client: Client) -> dict[str, dict]:
    schema = client.get("/api/schema?format=json").json()
    return {
        f"{method.upper()} {path}": operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def test_the_schema_lists_every_error_answer_each_operation_can_give(client):
    # when the schema is read
    operations = _operations(client)
    answers = {name: sorted(operation["responses"]) for name, operation in operations.items()}
    # then each operation lists what it can answer: its success, and the errors that its body
    # (400, 413, 415), credentials (401), session cookie (403, CSRF), path or page (404) and
    # abuse limits (429) can bring
    body, session, limited = ["400", "413", "415"], ["401", "403"], ["429"]
    assert answers == {
        "POST /api/v1/auth/signup": sorted(["202", *body, *limited]),
        "POST /api/v1/auth/verify-email": sorted(["200", *body]),
        "POST /api/v1/auth/resend-verification": sorted(["202", *body, *limited]),
        "POST /api/v1/auth/login": sorted(["200", *body, "403", *limited]),
        "POST /api/v1/auth/logout": sorted(["204", *session]),
        "POST /api/v1/auth/password-reset": sorted(["202", *body, *limited]),
        "POST /api/v1/auth/password-reset/confirm": sorted(["200", *body]),
        "GET /api/v1/me": ["200", "401"],
        "POST /api/v1/account/deletion": sorted(["202", *body, *session, "409", *limited]),
        "DELETE /api/v1/account/deletion": sorted(["200", *session, "409"]),
        "GET /api/v1/uploads": ["200", "401", "404"],
        "POST /api/v1/uploads": sorted(["202", *body, *session, *limited]),
        "GET /api/v1/uploads/{upload_id}": ["200", "401", "404"],
        "DELETE /api/v1/uploads/{upload_id}": sorted(["204", *session, "404"]),
        "GET /files/{upload_id}/{name}": ["200", "401", "404"],
        "GET /api/v1/reports/schedule": ["200", "401"],
        "PUT /api/v1/reports/schedule": sorted(["200", *body, *session]),
        "GET /api/v1/reports": ["200", "401", "404"],
        "POST /api/v1/reports": sorted(["202", *body, *session, *limited]),
        "GET /api/v1/reports/{report_id}": ["200", "401", "404"],
        "GET /api/v1/reports/{report_id}/download": ["200", "401", "404"],
        "GET /api/v1/notifications": ["200", "401", "404"],
        "POST /api/v1/notifications/read-all": sorted(["204", *session]),
        "POST /api/v1/notifications/{notification_id}/read": sorted(["204", *session, "404"]),
        "GET /api/v1/notifications/preferences": ["200", "401"],
        "PUT /api/v1/notifications/preferences": sorted(["200", *body, *session]),
        "GET /api/v1/devices/webpush-key": ["200", "401", "404"],
        "GET /api/v1/devices": ["200", "401", "404"],
        "POST /api/v1/devices": sorted(["200", "201", *body, *session]),
        "DELETE /api/v1/devices/{device_id}": sorted(["204", *session, "404"]),
    }
    # and every error answer has the one error body, a 429 its Retry-After header
    for name, operation in operations.items():
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (name, code)
            if code == "429":
                assert response["headers"]["Retry-After"]["required"] is True, name


def test_request_string_patterns_refuse_exactly_what_drf_refuses():
    # given DRF's CharField as the API's serializers use it (trimmed, not blank; or neither)
    trimmed, untrimmed = serializers.CharField(), serializers.CharField(trim_whitespace=False)

    def accepts(field: serializers.CharField, value: str) -> bool:
        try:
            field.run_validation(value)
        except serializers.ValidationError:
            return False
        return True

    # when every character of the Basic Multilingual Plane is tried, alone and padded (but
    # surrogates, which no UTF-8 JSON carries: config/api.py refuses their escapes as it parses)
    characters = (chr(code) for code in range(0x10000) if not 0xD800 <= code <= 0xDFFF)
    for value in characters:
        for candidate in (value, f"a{value}", f"{value} "):
            # then the schema's patterns accept exactly what the fields accept
            assert accepts(trimmed, candidate) == bool(
                re.search(NOT_BLANK_TEXT_PATTERN, candidate)
            ), repr(candidate)
            assert accepts(untrimmed, candidate) == bool(re.search(TEXT_PATTERN, candidate))


def test_the_docs_page_loads_only_our_own_static_files(client, settings):
    # when the API docs page is opened
    response = client.get("/api/docs")
    assert response.status_code == 200
    page = response.content.decode()
    # then every script, stylesheet and icon it loads is one of our static files
    loaded = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(loaded) == 4, loaded  # the Swagger UI bundle, its preset, stylesheet and icon
    for url in loaded:
        assert not urlsplit(url).netloc and url.startswith(settings.STATIC_URL), url
        assert finders.find(url.removeprefix(settings.STATIC_URL)), url
    # and nothing else in it names another host: not even Swagger UI's online validator
    assert "://" not in page
    assert '"validatorUrl": null' in page


def test_api_paths_answer_in_the_error_shape_even_where_no_view_runs(client):
    # a path no pattern matches, a converter that refuses the path, a wrong method on the docs
    for method, path, status in [
        ("get", "/api/v1/no-such-thing", 404),
        ("get", "/api/schema/", 404),
        ("delete", "/files/not-a-uuid/original", 404),
        ("post", "/api/docs", 405),
        ("put", "/api/schema", 405),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == status, path
        assert response["Content-Type"] == "application/json", path
        assert set(response.json()) == {"detail", "errors"}, path
    # while a page outside the API keeps Django's HTML 404
    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")
