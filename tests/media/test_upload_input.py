"""The upload endpoint with input it must refuse, and who may see, list and delete what.

Refusals happen on the request path: each answers 4xx with `{"detail", "errors"}` and leaves
nothing behind (no row, no file). Those tests point MEDIA_ROOT at a private folder, so "nothing
stored" means an empty folder; they use the `db` fixture, whose transaction never commits, so
an accepted upload's pipeline is never published. Tests that need the pipeline to run use the
real worker and the session's MEDIA_ROOT, which the worker shares.
"""

import io
import re
import uuid
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.services import api_token_create
from jobs.models import DeadLetter
from media.models import Upload, UploadVariant
from media.services import upload_folder
from tests.media.images_for_tests import (
    jpeg,
    multipart_body,
    png,
    png_claiming_size,
    slow_png,
    truncated_jpeg,
)
from tests.services import eventually

UPLOADS = "/api/v1/uploads"
VARIANT_NAMES = ["thumb", "small", "medium", "large"]
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def api_client(email: str) -> Client:
    """A client authenticated as the API's clients are: a bearer token from login."""
    user = get_user_model().objects.create_user(
        email, "correct horse battery", email_verified_at="2026-01-01T00:00Z"
    )
    return Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})


@pytest.fixture
def maker(db) -> Client:
    return api_client("maker@example.com")


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def post_file(client: Client, content: bytes, name: str = "photo.jpg", field: str = "file"):
    return client.post(UPLOADS, {field: SimpleUploadedFile(name, content)})


def assert_refused(response, status: int) -> dict:
    """The API's error shape (config/api.py): a status, one human sentence, per-field messages."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    detail = body["detail"]
    assert isinstance(detail, str) and len(detail) > 5, body
    assert "Traceback" not in detail and "Error(" not in detail, body
    assert isinstance(body["errors"], dict), body
    for messages in body["errors"].values():
        assert isinstance(messages, list) and all(isinstance(m, str) for m in messages), body
    return body


def assert_nothing_stored(media_root: Path) -> None:
    assert not Upload.objects.exists()
    assert files_under(media_root.parent) == []


# --- what the file is -----------------------------------------------------------------------

BOMB_REASON = (
    "media/images.py:65 maps Pillow's DecompressionBombWarning/Error (raised at open, since "
    "media/apps.py sets Image.MAX_IMAGE_PIXELS = UPLOAD_MAX_PIXELS) to 415 'Unsupported file "
    "type'; the 413 pixel-limit branch below it is unreachable"
)


@pytest.mark.parametrize(
    ("name", "content", "status", "says"),
    [
        pytest.param("notes.jpg", b"Just some text, not an image.\n" * 20, 415, "JPEG, PNG",
                     id="text-renamed-jpg"),
        pytest.param("logo.svg", SVG, 415, "JPEG, PNG", id="svg"),
        pytest.param("page.png", HTML, 415, "JPEG, PNG", id="html"),
        pytest.param("scan.pdf", PDF, 415, "JPEG, PNG", id="pdf"),
        pytest.param("empty.jpg", b"", 400, "empty", id="zero-bytes"),
        pytest.param("cut.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, 400,
                     "not a readable image", id="png-signature-then-garbage"),
        pytest.param("bomb.png", png_claiming_size(25000, 25000), 413, "50 MP",
                     id="png-header-claims-25000x25000"),
        pytest.param("big.png", png_claiming_size(8000, 6400), 413, "50 MP",
                     id="png-header-claims-51-megapixels"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_an_acceptable_image_is_refused_and_nothing_is_stored(
    maker, media_root, name, content, status, says
):
    # given a file that is not an image we accept (whatever its name says)
    # when it is uploaded
    response = post_file(maker, content, name)
    # then it is refused with a status and a message saying why, and nothing is kept
    body = assert_refused(response, status)
    assert says in body["detail"], body
    assert_nothing_stored(media_root)


def test_a_decompression_bomb_is_refused_from_its_header_alone(maker, media_root):
    # given a 70-byte PNG claiming 25000 x 25000 pixels (2.5 GB once decoded)
    bomb = png_claiming_size(25000, 25000)
    assert len(bomb) < 100
    # when it is uploaded
    response = post_file(maker, bomb, "bomb.png")
    # then it is refused as a 4xx (the exact status is the xfail case above), nothing decoded
    assert_refused(response, response.status_code)
    assert response.status_code in (413, 415)
    assert_nothing_stored(media_root)


# --- how big the request is -------------------------------------------------------------------


class CountingBody(io.RawIOBase):
    """A request body produced on demand that counts how much of it the server reads."""

    def __init__(self, head: bytes, filler_bytes: int, tail: bytes) -> None:
        self.parts = [head, filler_bytes, tail]
        self.length = len(head) + filler_bytes + len(tail)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.parts:
            part = self.parts[0]
            if isinstance(part, int):
                size = min(len(buffer), part)
                buffer[:size] = b"\0" * size
                self.parts[0] = part - size
            else:
                size = min(len(buffer), len(part))
                buffer[:size] = part[:size]
                self.parts[0] = part[size:]
            if not self.parts[0]:
                self.parts.pop(0)
            if size:
                self.bytes_read += size
                return size
        return 0


def sixty_megabyte_body(boundary: str) -> CountingBody:
    """A real multipart body with a 60 MB file (a JPEG header, then zeros)."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="huge.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + jpeg()
    return CountingBody(head, 60 * 1024 * 1024, f"\r\n--{boundary}--\r\n".encode())


def post_body(client: Client, body: CountingBody, boundary: str, **extra):
    return client.generic(
        "POST",
        UPLOADS,
        CONTENT_TYPE=f"multipart/form-data; boundary={boundary}",
        CONTENT_LENGTH=str(body.length),
        **{"wsgi.input": body},
        **extra,
    )


def test_a_60_mb_body_is_refused_from_its_content_length_before_any_of_it_is_read(
    maker, media_root
):
    # given a real 60 MB multipart body, honestly declared in Content-Length (the limit is
    # 20 MB), which the server could read if it wanted to
    boundary = uuid.uuid4().hex
    body = sixty_megabyte_body(boundary)
    # when an API client sends it
    response = post_body(maker, body, boundary)
    # then it is refused as too large, having read not one byte of the body
    refusal = assert_refused(response, 413)
    assert "20 MB" in refusal["detail"]
    assert body.bytes_read == 0
    assert_nothing_stored(media_root)


def test_a_60_mb_body_from_the_web_page_is_refused_before_any_of_it_is_read(browser, media_root):
    # given a signed-in browser (as static/js/uploads.js sends) and a 60 MB body
    boundary = uuid.uuid4().hex
    body = sixty_megabyte_body(boundary)
    # when it is posted
    response = post_body(browser.client, body, boundary, HTTP_X_CSRFTOKEN=browser.csrf_token)
    # then it is refused as too large without the body being read
    assert_refused(response, 413)
    assert body.bytes_read == 0
    assert_nothing_stored(media_root)


def test_a_file_over_the_limit_but_inside_the_multipart_allowance_is_refused_by_its_size(
    maker, media_root, settings
):
    # given a limit of 10 kB, so a 40 kB file passes the Content-Length check (which allows
    # 64 kB of multipart framing) and is caught by the file's own size
    settings.UPLOAD_MAX_BYTES = 10_000
    content = png(2000, 2000, mode="L")
    content += b"\0" * (40_000 - len(content))  # trailing bytes: still a valid PNG header
    # when it is uploaded
    response = post_file(maker, content, "big.png")
    # then it is refused as too large
    assert_refused(response, 413)
    assert_nothing_stored(media_root)


def test_a_malformed_content_length_is_a_client_error(maker, media_root):
    # given a request whose Content-Length is not a number (a broken client or proxy)
    maker.raise_request_exception = False
    body = multipart_body("b0undary", [("file", "photo.png", png())])
    # when it is posted
    response = maker.generic(
        "POST",
        UPLOADS,
        body,
        content_type="multipart/form-data; boundary=b0undary",
        CONTENT_LENGTH="twelve",
    )
    # then the answer is a 4xx, not a server error
    assert 400 <= response.status_code < 500, response.status_code
    assert_nothing_stored(media_root)


# --- how the request is put together -----------------------------------------------------------


def test_a_path_in_the_file_name_is_ignored_and_the_file_stored_under_a_generated_name(
    maker, media_root
):
    # given a valid image whose file name tries to climb out of the upload folder (sent raw:
    # Django's test client would strip the path from a SimpleUploadedFile's name itself)
    boundary = uuid.uuid4().hex
    for name in ("../../../escape.png", "..%2F..%2Fescape.png", "/tmp/escape.png"):
        body = multipart_body(boundary, [("file", name, png())])
        # when it is uploaded
        response = maker.generic(
            "POST", UPLOADS, body, content_type=f"multipart/form-data; boundary={boundary}"
        )
        # then it is accepted as the image it is
        assert response.status_code == 202, response.content
    # and each upload lives only at uploads/<its random id>/, under a name the server chose
    ids = sorted(str(pk) for pk in Upload.objects.values_list("pk", flat=True))
    assert len(ids) == 3
    assert files_under(media_root.parent) == [f"media/uploads/{pk}/source.upload" for pk in ids]
    assert not list(Path("/tmp").glob("escape.png*"))


def test_a_request_without_the_file_field_is_refused(maker, media_root):
    # given a multipart form with a text field and no file
    response = maker.post(UPLOADS, {"title": "holiday"})
    # then it is a 400 naming the field to use
    body = assert_refused(response, 400)
    assert body["errors"]["file"] == ["Attach exactly one image as the form field 'file'."]
    assert_nothing_stored(media_root)


def test_a_file_under_another_field_name_is_refused(maker, media_root):
    response = post_file(maker, png(), "photo.png", field="image")
    body = assert_refused(response, 400)
    assert list(body["errors"]) == ["file"]
    assert_nothing_stored(media_root)


def test_a_json_body_is_refused_as_an_unsupported_media_type(maker, media_root):
    # given a client that sends JSON (a base64 image, say) instead of multipart
    response = maker.post(UPLOADS, {"file": "iVBORw0KGgo="}, content_type="application/json")
    # then it is told the request's media type is not accepted
    body = assert_refused(response, 415)
    assert "application/json" in body["detail"]
    assert_nothing_stored(media_root)


def test_two_files_in_the_file_field_are_refused(maker, media_root):
    # given two images sent under the one field "file"
    boundary = uuid.uuid4().hex
    body = multipart_body(boundary, [("file", "a.png", png()), ("file", "b.png", png())])
    # when they are posted
    response = maker.generic(
        "POST", UPLOADS, body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    # then the request is refused rather than one of them kept silently
    assert_refused(response, 400)
    assert_nothing_stored(media_root)


def test_a_second_file_field_beside_file_is_not_stored(maker, media_root):
    # given the image under "file" and another file under a second field
    boundary = uuid.uuid4().hex
    body = multipart_body(boundary, [("file", "a.png", png()), ("extra", "b.svg", SVG)])
    # when they are posted
    response = maker.generic(
        "POST", UPLOADS, body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    # then only the "file" image is taken; the other part is never written anywhere
    assert response.status_code == 202, response.content
    (upload,) = Upload.objects.all()
    assert upload.source_format == "PNG"
    assert files_under(media_root.parent) == [f"media/uploads/{upload.pk}/source.upload"]


def test_an_upload_past_the_users_quota_is_refused_and_nothing_is_stored(
    maker, media_root, settings
):
    # given a quota of 1.5 times one image, and one such image already uploaded
    image = png(64, 48)
    settings.UPLOAD_QUOTA_BYTES = len(image) * 3 // 2
    assert post_file(maker, image, "first.png").status_code == 202
    (first,) = Upload.objects.all()
    # when a second one is uploaded
    response = post_file(maker, image, "second.png")
    # then it is refused, saying what to do, and only the first upload exists
    body = assert_refused(response, 400)
    assert "storage is full" in body["detail"]
    assert list(Upload.objects.all()) == [first]
    assert files_under(media_root.parent) == [f"media/uploads/{first.pk}/source.upload"]
    # and the quota is per user: someone else may still upload
    assert post_file(api_client("other@example.com"), image, "theirs.png").status_code == 202


def test_an_unauthenticated_upload_is_refused_with_401_and_nothing_is_stored(db, media_root):
    for client in (Client(), Client(headers={"Authorization": "Bearer not-a-real-token"})):
        response = post_file(client, png(), "photo.png")
        assert_refused(response, 401)
        assert response["WWW-Authenticate"] == "Bearer"
    assert_nothing_stored(media_root)


# --- a file that passes the header check but cannot be decoded --------------------------------


def test_a_truncated_jpeg_is_accepted_then_fails_once_with_a_reason_and_no_retry(
    celery_worker,
):
    # given a JPEG whose header is intact but whose image data stops halfway
    maker = api_client("maker@example.com")
    content = truncated_jpeg()
    # when it is uploaded: the request path only reads the header, so it is accepted
    response = post_file(maker, content, "cut.jpg")
    assert response.status_code == 202, response.content
    upload_id = response.json()["id"]
    # then processing fails with a reason a person can read
    body = eventually(
        lambda: (b := maker.get(f"{UPLOADS}/{upload_id}").json())["status"] == "failed" and b,
        timeout=30,
    )
    assert "could not be decoded" in body["error"] and "truncated" in body["error"], body
    assert body["original"] is None and body["variants"] == {}
    # and normalize ran exactly once: dead-lettered on its first attempt, never retried
    (letter,) = [
        letter
        for letter in DeadLetter.objects.filter(task_name="media.normalize")
        if letter.kwargs == {"upload_id": upload_id}
    ]
    assert letter.attempts == 1
    assert letter.exception_class == "media.images.ImageBroken"

    def outcomes():
        log = celery_worker.logfile.read_text(errors="replace")
        pattern = rf"task=media\.normalize id={letter.task_id} attempt=(\d+) \S+ outcome=(\w+)"
        return re.findall(pattern, log)

    assert eventually(outcomes) == [("1", "failure")]
    # and no later step ran for it
    letters = [
        letter.task_name
        for letter in DeadLetter.objects.all()
        if letter.kwargs.get("upload_id") == upload_id
    ]
    assert letters == ["media.normalize"]
    assert not UploadVariant.objects.filter(upload_id=upload_id).exists()


# --- whose uploads are whose ----------------------------------------------------------------


def processed_upload(client: Client, content: bytes | None = None) -> dict:
    response = post_file(client, content or jpeg(320, 240), "photo.jpg")
    assert response.status_code == 202, response.content
    upload_id = response.json()["id"]
    body = eventually(
        lambda: (
            (b := client.get(f"{UPLOADS}/{upload_id}").json())["status"] != "queued"
            and b["status"] != "processing"
            and b
        ),
        timeout=60,
    )
    assert body["status"] == "ready", body
    return body


def test_someone_elses_upload_and_its_files_are_404_like_a_missing_one(celery_worker):
    # given Ada's processed upload, and Bob
    ada, bob = api_client("ada@example.com"), api_client("bob@example.com")
    upload = processed_upload(ada)
    paths = [
        f"{UPLOADS}/{{id}}",
        *(f"/files/{{id}}/{name}" for name in ["original", *VARIANT_NAMES]),
    ]
    assert all(ada.get(path.format(id=upload["id"])).status_code == 200 for path in paths)
    # when Bob asks for it or its files, or deletes it
    # then each answer is the very 404 he gets for an upload that does not exist
    for path in paths:
        missing = bob.get(path.format(id=uuid.uuid4()))
        assert_refused(missing, 404)
        response = bob.get(path.format(id=upload["id"]))
        assert (response.status_code, response.json()) == (404, missing.json()), path
    deleting = bob.delete(paths[0].format(id=upload["id"]))
    missing = bob.delete(paths[0].format(id=uuid.uuid4()))
    assert (deleting.status_code, deleting.json()) == (404, missing.json())
    # and Ada's upload is untouched
    assert ada.get(paths[0].format(id=upload["id"])).json()["status"] == "ready"
    assert Upload.objects.filter(pk=upload["id"]).exists()


def test_only_servable_names_are_served_even_to_the_owner(celery_worker):
    # given Ada's processed upload (whose folder once held the raw upload, GPS and all)
    ada = api_client("ada@example.com")
    upload = processed_upload(ada)
    # when she asks for a name that is not the original or a variant
    for name in ["huge", "source", "source.upload", "original.jpg", "thumb.jpg", "..", "%2e%2e"]:
        # then it is a 404, whatever lies in the folder
        assert ada.get(f"/files/{upload['id']}/{name}").status_code == 404, name


def test_the_list_shows_only_the_callers_uploads_newest_first_paginated(db, media_root):
    # given Ada with 21 uploads (one more than a page) and Bob with one
    ada, bob = api_client("ada@example.com"), api_client("bob@example.com")
    ada_ids = [post_file(ada, png(), f"{n}.png").json()["id"] for n in range(21)]
    bob_id = post_file(bob, png(), "bob.png").json()["id"]
    # when Ada lists her uploads
    first = ada.get(UPLOADS).json()
    second = ada.get(first["next"]).json()
    # then she sees her 21, newest first, on two pages, and never Bob's
    assert first["count"] == 21 and len(first["results"]) == 20 and first["previous"] is None
    assert len(second["results"]) == 1 and second["next"] is None
    listed = [item["id"] for item in first["results"] + second["results"]]
    assert listed == ada_ids[::-1]
    assert bob_id not in listed
    assert [item["id"] for item in bob.get(UPLOADS).json()["results"]] == [bob_id]


@pytest.mark.parametrize(
    "query",
    ["page=", "page=abc", "page=1&page=1", "page=abc&page=", "page=last", "page=%201",
     "page=1_0", "page=%D9%A1", "page=0", "page=2"],
)  # fmt: skip
def test_a_page_that_is_not_one_page_number_of_the_list_is_a_404(maker, query):
    # given a list that fits on its first page
    assert maker.get(f"{UPLOADS}?page=1").status_code == 200
    # when a page is asked for by anything but one decimal number of an existing page
    # then the answer is the 404 of a page past the end (not page 1, as DRF would answer
    # an empty or repeated page, nor whatever int() makes of " 1", "1_0" or an Arabic-Indic 1)
    assert assert_refused(maker.get(f"{UPLOADS}?{query}"), 404)["detail"] == "Invalid page."


@pytest.mark.parametrize(
    "path",
    [f"{UPLOADS}/not-a-uuid", f"{UPLOADS}/{uuid.uuid4()}0", f"{UPLOADS}/{uuid.uuid4()}/",
     "/files/not-a-uuid/original"],
)  # fmt: skip
def test_a_malformed_upload_id_is_a_404_in_the_error_shape(maker, path):
    # when an id the URL's uuid converter refuses is asked for or deleted (no view runs)
    for response in (maker.get(path), maker.delete(path)):
        # then the answer is the API's JSON 404, not Django's HTML page
        assert response["Content-Type"] == "application/json"
        assert_refused(response, 404)


# --- deleting --------------------------------------------------------------------------------


def test_delete_removes_the_row_at_once_and_the_files_soon_after(celery_worker):
    # given Ada's processed upload, its files on disk
    ada = api_client("ada@example.com")
    upload = processed_upload(ada)
    folder = upload_folder(upload["id"])
    assert sorted(path.stem for path in folder.iterdir()) == sorted(["original", *VARIANT_NAMES])
    detail = f"{UPLOADS}/{upload['id']}"
    # when she deletes it
    response = ada.delete(detail)
    # then the answer is 204, and the upload is gone at once, variants and all
    assert response.status_code == 204
    assert ada.get(detail).status_code == 404
    assert ada.get(f"/files/{upload['id']}/original").status_code == 404
    assert not Upload.objects.filter(pk=upload["id"]).exists()
    assert not UploadVariant.objects.filter(upload_id=upload["id"]).exists()
    # and its files disappear in the background
    eventually(lambda: not folder.exists(), timeout=20)
    # and deleting it again is a 404
    assert_refused(ada.delete(detail), 404)


def log_after(worker, offset: int) -> str:
    return worker.logfile.read_bytes()[offset:].decode(errors="replace")


@pytest.mark.parametrize(
    "size",
    [
        (8000, 6000),
        # Small enough that normalize also makes `large` (and records it) from its pixels.
        (4000, 3000),
    ],
    ids=["normalize-alone", "normalize-with-large"],
)
def test_deleting_an_upload_while_it_is_being_processed_leaves_no_files(celery_worker, size):
    # given an upload whose normalize step takes a second or more, and is running
    ada = api_client("ada@example.com")
    offset = celery_worker.logfile.stat().st_size
    response = post_file(ada, slow_png(*size), "big.png")
    assert response.status_code == 202, response.content
    upload_id = response.json()["id"]
    eventually(
        lambda: ada.get(f"{UPLOADS}/{upload_id}").json()["status"] == "processing", timeout=30
    )
    # when the owner deletes it mid-processing
    assert ada.delete(f"{UPLOADS}/{upload_id}").status_code == 204
    # then once both the file cleanup and the normalize step have finished
    eventually(
        lambda: re.search(r"task=media\.delete_files \S+ \S+ \S+ outcome=success",
                          log_after(celery_worker, offset))
        and re.search(r"task=media\.normalize \S+ \S+ \S+ outcome=",
                      log_after(celery_worker, offset)),
        timeout=60,
    )  # fmt: skip
    # no file of it remains, and normalize ended well: it found the upload gone and recorded
    # nothing for it (a variant row of a deleted upload would fail its commit)
    folder = upload_folder(upload_id)
    assert not folder.exists(), files_under(folder)
    assert re.search(r"task=media\.normalize \S+ \S+ \S+ outcome=success",
                     log_after(celery_worker, offset))  # fmt: skip
    assert not DeadLetter.objects.filter(task_name="media.normalize").exists()
