"""An upload travels the canvas (normalize -> variants -> finalize -> notify) on a real worker."""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from media.models import Upload
from tests.services import eventually

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def photo(*, width: int, height: int, orientation: int = 1, gps: bool = True) -> bytes:
    """A JPEG like a phone's: EXIF orientation and a GPS position in its metadata."""
    image = Image.new("RGB", (width, height))
    # Left half red, right half blue: after rotation, a test can tell which way is up.
    image.paste((220, 30, 30), (0, 0, width // 2, height))
    image.paste((30, 30, 220), (width // 2, 0, width, height))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    if gps:
        exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


@pytest.fixture
def owner_client(client, transactional_db):
    user = get_user_model().objects.create_user(
        "maker@example.com", "correct horse battery", email_verified_at="2026-01-01T00:00Z"
    )
    client.force_login(user)
    return client


def upload(client, content: bytes, name: str = "photo.jpg"):
    return client.post("/api/v1/uploads", {"file": SimpleUploadedFile(name, content)})


def test_an_exif_rotated_12mp_photo_comes_out_upright_without_gps_in_every_size(
    owner_client, celery_worker
):
    # given a 4000x3000 photo taken with the phone turned (orientation 6: rotate 90° clockwise)
    response = upload(owner_client, photo(width=4000, height=3000, orientation=6))
    assert response.status_code == 202, response.content
    upload_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    # when the pipeline has run, watching progress only ever go up
    seen = []

    def ready():
        body = owner_client.get(f"/api/v1/uploads/{upload_id}").json()
        seen.append(body["progress"])
        return body if body["status"] in ("ready", "failed") else None

    body = eventually(ready, timeout=60, interval=0.1)
    assert body["status"] == "ready", body
    assert seen == sorted(seen) and seen[-1] == 100
    # then the original is upright (3000 wide, 4000 tall) and every variant has the right size
    assert (body["original"]["width"], body["original"]["height"]) == (3000, 4000)
    sizes = {name: (v["width"], v["height"]) for name, v in body["variants"].items()}
    assert sizes == {
        "thumb": (160, 160), "small": (360, 480), "medium": (810, 1080), "large": (1536, 2048),
    }  # fmt: skip
    # and no file served carries EXIF (so no GPS), and the top of the image is red (upright)
    for name in ["original", *sizes]:
        url = body["original"]["url"] if name == "original" else body["variants"][name]["url"]
        served = owner_client.get(url)
        assert served.status_code == 200
        image = Image.open(io.BytesIO(b"".join(served.streaming_content)))
        assert not image.getexif(), name
        assert "exif" not in image.info and "xmp" not in image.info, name
        top = image.convert("RGB").getpixel((image.width // 2, 2))
        assert top[0] > 150 and top[2] < 100, (name, top)
    assert Upload.objects.get(pk=upload_id).status == Upload.Status.READY


@pytest.mark.parametrize(
    ("width", "height", "steps"),
    [
        # Up to 6 MP, normalize makes every variant and finalizes: no canvas at all.
        (1600, 1200, ["media.normalize", "media.notify"]),
        # A 12 MP photo: normalize makes large; the other three are tasks of their own, in a chord.
        (
            4000,
            3000,
            ["media.start_pipeline", "media.normalize", *["media.make_variant"] * 3,
             "media.finalize", "media.notify"],
        ),
    ],
)  # fmt: skip
def test_an_upload_runs_only_the_tasks_its_size_needs(
    owner_client, no_worker_running, start_worker, width, height, steps
):
    # given a worker of its own, whose log holds this upload's tasks only
    worker = start_worker(queues=["media"])
    # when a photo is uploaded and processed
    response = upload(owner_client, photo(width=width, height=height))
    assert response.status_code == 202, response.content
    upload_id = response.json()["id"]

    def ready() -> dict | None:
        body = owner_client.get(f"/api/v1/uploads/{upload_id}").json()
        return body if body["status"] == "ready" else None

    body = eventually(ready, timeout=60)
    assert sorted(body["variants"]) == ["large", "medium", "small", "thumb"]

    # then these tasks ran, each once, and no other
    def ran() -> list[str] | None:
        log = worker.logfile.read_text(errors="replace")
        names = re.findall(r"task=(\S+) id=\S+ attempt=1 \S+ outcome=success", log)
        return names if "media.notify" in names else None

    assert sorted(eventually(ran, timeout=30)) == sorted(steps)


def test_an_upload_accepted_while_the_broker_is_down_is_processed_once_it_is_back(
    owner_client, celery_worker, broker_server
):
    from jobs.models import OutboxMessage
    from jobs.outbox import outbox_relay, publish_circuit

    # given a broker that is down
    broker_server.stop()
    # when a photo is uploaded
    response = upload(owner_client, photo(width=800, height=600))
    # then it is accepted, its processing waiting in the outbox rather than lost (a photo this
    # small is normalize alone, which makes every variant)
    assert response.status_code == 202, response.content
    assert OutboxMessage.objects.filter(task_name="media.normalize").get().status == "pending"
    # when the broker comes back (empty) and the relay runs, as beat makes it every few seconds
    broker_server.start()
    publish_circuit.record_success()
    eventually(lambda: outbox_relay() or None, timeout=15)
    # then the upload ends ready
    upload_id = response.json()["id"]
    eventually(lambda: Upload.objects.get(pk=upload_id).status == Upload.Status.READY, timeout=60)
