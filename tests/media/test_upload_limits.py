"""What one account may upload: bytes stored, and uploads and megapixels an hour.

The hourly limits live in the suite's real Redis (emptied before each test), or, while it is
stopped, are counted from the database. Most tests use the `db` fixture, whose transaction
never commits, so no pipeline is published; the concurrency test commits for real, from
threads that each have their own database connection.
"""

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from PIL import Image

from jobs.outbox import publish_circuit
from media.checks import upload_limits_fit_an_upload
from media.models import Upload
from tests.media.images_for_tests import encoded, png
from tests.media.test_upload_input import (
    api_client,
    assert_refused,
    files_under,
    post_file,
)

ONE_HOUR = 3600


@functools.cache
def png_of_7000_x_7000() -> bytes:
    """A 49 MP image in a 156 KB file: one colour compresses to almost nothing."""
    return encoded(Image.new("RGB", (7000, 7000), (40, 200, 40)), "PNG")


@functools.cache
def camera_jpeg(width: int, height: int) -> bytes:
    return encoded(Image.new("RGB", (width, height), (90, 120, 200)), "JPEG", quality=90)


@pytest.fixture
def redis_down(redis_server):
    """Redis stopped for the test, and running again after it: the session's worker, if a later
    test is the first to need it, starts only with a broker to connect to."""
    redis_server.stop()
    yield
    redis_server.start()


def assert_limited(response, *, says: str) -> int:
    """A 429 in the API's error shape, with a Retry-After within the hour; returns it."""
    body = assert_refused(response, 429)
    assert says in body["detail"], body
    assert "Try again in" in body["detail"], body
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= ONE_HOUR
    return retry_after


def stored_uploads(root) -> list[str]:
    """The ids of the uploads that have files under `root`, the MEDIA_ROOT."""
    return sorted({path.split("/")[1] for path in files_under(root)})


# --- pixels count, not only bytes ------------------------------------------------------------


def test_a_160_kb_png_of_7000_x_7000_counts_49_megapixels_and_30_fit_an_hour(
    db,
    media_root,
):
    # given the default limits, and a PNG of 156 KB that decodes to 49 MP (147 MB of pixels)
    assert django_settings.UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT == "1500/h"
    bomb = png_of_7000_x_7000()
    assert len(bomb) < 160 * 1024
    maker = api_client("maker@example.com")
    # when it is uploaded again and again
    statuses = [post_file(maker, bomb, f"{n}.png").status_code for n in range(30)]
    refused = post_file(maker, bomb, "31.png")
    # then 30 are accepted (1470 MP), the 31st would pass 1500 MP and is refused for the hour
    assert statuses == [202] * 30
    assert_limited(
        refused,
        says="This 49 MP image would take your uploads past their limit of 1500 MP an hour.",
    )
    # and nothing of the refused one is kept
    assert Upload.objects.count() == 30
    assert stored_uploads(media_root) == sorted(
        map(str, Upload.objects.values_list("pk", flat=True))
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [(4000, 3000), (8256, 5504)],
    ids=["12-megapixel-phone", "45-megapixel-camera"],
)
def test_a_photographers_session_of_30_photos_fits_the_default_limits(db, width, height):
    # given the default limits, and a photographer with 30 photos from one shoot
    assert django_settings.UPLOAD_RATE_PER_ACCOUNT == "200/h"
    photographer = api_client("photographer@example.com")
    photo = camera_jpeg(width, height)
    # when they upload them all within the hour
    statuses = [post_file(photographer, photo, f"IMG_{n:04}.jpg").status_code for n in range(30)]
    # then every one is accepted
    assert statuses == [202] * 30


# --- the hourly limits ---------------------------------------------------------------------

LIMITS = {
    # setting, its value, an image that fits three times, what the refusal says
    "uploads": ("UPLOAD_RATE_PER_ACCOUNT", "3/h", (64, 48), "your limit of uploads: 3 an hour"),
    "megapixels": (
        "UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT",
        "1/h",
        (600, 500),
        "This 0.3 MP image would take your uploads past their limit of 1 MP an hour",
    ),
}


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis", "redis-down-database"])
@pytest.mark.parametrize("limit", list(LIMITS))
def test_an_upload_past_an_hourly_limit_is_answered_429_with_retry_after(
    db,
    media_root,
    settings,
    request,
    limit,
    redis_up,
):
    # given an hourly limit that holds three uploads, with Redis up or down
    setting, value, size, says = LIMITS[limit]
    setattr(settings, setting, value)
    if not redis_up:
        request.getfixturevalue("redis_down")
    maker = api_client("maker@example.com")
    image = png(*size)
    # when a fourth upload follows three accepted ones
    assert [post_file(maker, image, f"{n}.png").status_code for n in range(3)] == [202] * 3
    response = post_file(maker, image, "4.png")
    # then it is refused with 429, saying which limit and when to try again, and not stored
    retry_after = assert_limited(response, says=says)
    assert retry_after > ONE_HOUR - 60
    assert Upload.objects.count() == 3
    assert len(stored_uploads(media_root)) == 3
    # and the limit is the account's own: someone else uploads as usual
    assert post_file(api_client("other@example.com"), image).status_code == 202


def test_the_uploads_page_is_answered_429_with_retry_after_and_a_sentence_to_show(
    browser, settings
):
    # given a signed-in browser, sending as static/js/uploads.js does, and an account with one
    # upload left this hour
    settings.UPLOAD_RATE_PER_ACCOUNT = "1/h"

    def send():
        file = SimpleUploadedFile("photo.png", png())
        headers = {"X-CSRFToken": browser.csrf_token}
        return browser.client.post("/api/v1/uploads", {"file": file}, headers=headers)

    assert send().status_code == 202
    # when the page sends the next file
    response = send()
    # then it gets a 429 with Retry-After, and a detail the page shows as it is
    assert_limited(response, says="You have reached your limit of uploads: 1 an hour.")
    assert response.json()["detail"].endswith("Try again in 1\N{NO-BREAK SPACE}hour.")


def test_deleting_uploads_frees_storage_but_not_the_hours_budget(db, settings):
    # given storage for two images and three uploads an hour
    image = png()
    settings.UPLOAD_QUOTA_BYTES = 2 * len(image)
    settings.UPLOAD_RATE_PER_ACCOUNT = "3/h"
    maker = api_client("maker@example.com")
    first, _ = (post_file(maker, image).json()["id"] for _ in range(2))
    # when storage is full, then the upload is refused for storage, using no upload of the hour
    assert "storage is full" in assert_refused(post_file(maker, image), 400)["detail"]
    # when one upload is deleted, then its storage is free again: the third upload fits
    assert maker.delete(f"/api/v1/uploads/{first}").status_code == 204
    third = post_file(maker, image)
    assert third.status_code == 202, third.content
    # when another is deleted, then its storage is free, but the hour's three uploads are spent
    assert maker.delete(f"/api/v1/uploads/{third.json()['id']}").status_code == 204
    assert_limited(post_file(maker, image), says="your limit of uploads: 3 an hour")


# --- concurrent uploads -----------------------------------------------------------------------

CONCURRENT_UPLOADS = 8
FITTING = 3


@pytest.mark.parametrize(
    ("limit", "redis_up"),
    [("storage", True), ("uploads-an-hour", True), ("uploads-an-hour", False)],
    ids=["storage-quota", "uploads-an-hour-redis", "uploads-an-hour-redis-down-database"],
)
def test_concurrent_uploads_over_a_limit_accept_exactly_those_that_fit(
    transactional_db,
    no_worker_running,
    media_root,
    settings,
    request,
    limit,
    redis_up,
):
    # given an account with room for 3 images, by storage or by uploads an hour (counted in
    # Redis, or, with Redis down, in the database)
    image = png()
    if limit == "storage":
        settings.UPLOAD_QUOTA_BYTES = FITTING * len(image)
    else:
        settings.UPLOAD_RATE_PER_ACCOUNT = f"{FITTING}/h"
    if not redis_up:
        request.getfixturevalue("redis_down")
    maker = api_client("maker@example.com")
    start = threading.Barrier(CONCURRENT_UPLOADS)

    def send(n: int) -> int:
        try:
            start.wait()
            return post_file(maker, image, f"{n}.png").status_code
        finally:
            connection.close()  # this thread's own connection

    # when 8 requests upload one image each at the same moment, committing for real
    with ThreadPoolExecutor(CONCURRENT_UPLOADS) as pool:
        statuses = sorted(pool.map(send, range(CONCURRENT_UPLOADS)))
    publish_circuit.record_success()  # publishing failed while Redis was down
    # then exactly the 3 that fit are accepted, and the others refused and not stored
    refusal = 400 if limit == "storage" else 429
    assert statuses == [202] * FITTING + [refusal] * (CONCURRENT_UPLOADS - FITTING)
    assert Upload.objects.count() == FITTING
    assert len(stored_uploads(media_root)) == FITTING


# --- configuration --------------------------------------------------------------------------


def test_limits_that_no_upload_could_fit_fail_the_system_check(settings):
    # given hourly limits below one upload, or below one image of the largest size accepted
    settings.UPLOAD_RATE_PER_ACCOUNT = "0.5/h"
    settings.UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT = "40/h"
    # then the system check names both
    errors = upload_limits_fit_an_upload(None)
    assert [error.id for error in errors] == ["media.E002", "media.E002"]
    assert "UPLOAD_MAX_PIXELS (50 MP)" in errors[1].msg
    # and a limit that is not a rate is named too
    settings.UPLOAD_RATE_PER_ACCOUNT = "lots"
    assert [error.id for error in upload_limits_fit_an_upload(None)] == ["media.E001"]
