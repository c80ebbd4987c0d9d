"""The uploads page, its static files, and uploads in the admin (preview, "process again")."""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone
from PIL import Image

from media import services
from media.models import Upload
from tests.media.test_pipeline import photo, upload
from tests.services import eventually

User = get_user_model()
PASSWORD = "correct horse battery staple"


def verified_user(email: str, **fields):
    return User.objects.create_user(email, PASSWORD, email_verified_at=timezone.now(), **fields)


def ready_upload(owner) -> Upload:
    """A ready upload with its thumb on disk, as the pipeline leaves it."""
    row = Upload.objects.create(
        owner=owner,
        status=Upload.Status.READY,
        progress=100,
        source_format="JPEG",
        source_bytes=1000,
        width=160,
        height=120,
    )
    thumb = services.upload_folder(row.pk) / "thumb.jpg"
    thumb.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (160, 160), (30, 30, 220)).save(thumb, "JPEG")
    return row


def wait_for_settled(client, upload_id: str) -> dict:
    def settled():
        body = client.get(f"/api/v1/uploads/{upload_id}").json()
        return body if body["status"] in ("ready", "failed") else None

    return eventually(settled, timeout=60, interval=0.1)


# --- The uploads page ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_uploads_page_requires_login(client):
    # when someone who is not logged in opens the page
    response = client.get("/uploads")
    # then they are sent to log in, and back here afterwards
    assert response.status_code == 302
    assert response["Location"] == "/login?next=/uploads"


@pytest.mark.django_db
def test_the_uploads_page_lists_the_users_uploads_and_never_another_users(client):
    # given a user with one upload of each status, and someone else with a ready one
    user = verified_user("ada@example.com")
    ready = ready_upload(user)
    queued = Upload.objects.create(owner=user, source_format="PNG", source_bytes=10)
    processing = Upload.objects.create(
        owner=user, status="processing", progress=45, source_format="PNG", source_bytes=10
    )
    failed = Upload.objects.create(
        owner=user, status="failed", error="The image could not be decoded: truncated",
        source_format="JPEG", source_bytes=10,
    )  # fmt: skip
    theirs = ready_upload(verified_user("grace@example.com"))
    client.force_login(user)
    # when the user opens the page
    response = client.get("/uploads")
    # then it lists every upload of theirs, each with its API address for the script to poll
    assert response.status_code == 200
    page = response.content.decode()
    for mine in (ready, queued, processing, failed):
        assert f'data-url="/api/v1/uploads/{mine.pk}"' in page
    # with the thumb of the ready one, the progress of the running one, the failed one's reason
    assert f'src="/files/{ready.pk}/thumb"' in page
    assert "160 \N{MULTIPLICATION SIGN} 120" in page
    assert "Processing… 45%" in page
    assert "The image could not be decoded: truncated" in page
    # and nothing of the other user's
    assert str(theirs.pk) not in page
    # and the upload form carries the CSRF token the script sends to the API
    assert 'name="csrfmiddlewaretoken"' in page
    assert 'action="/api/v1/uploads"' in page


@pytest.mark.django_db
def test_the_page_without_uploads_says_so(client):
    # given a user with no uploads
    client.force_login(verified_user("ada@example.com"))
    # when they open the page
    page = client.get("/uploads").content.decode()
    # then it says there are none, and shows no page links
    assert re.search(r'<p class="aside" id="upload-none"\s*>No uploads yet.</p>', page)
    assert 'class="pages"' not in page


@pytest.mark.django_db
def test_the_dashboard_and_the_header_link_to_the_uploads_page(client):
    client.force_login(verified_user("ada@example.com"))
    page = client.get("/dashboard").content.decode()
    assert page.count('href="/uploads"') == 2


@pytest.mark.django_db
def test_the_pages_script_and_stylesheet_are_served(client):
    # given the static files collected as a deployment does (WhiteNoise serves STATIC_ROOT)
    call_command("collectstatic", interactive=False, verbosity=0)
    client.force_login(verified_user("ada@example.com"))
    # when the page is opened
    page = client.get("/uploads").content.decode()
    # then the script and stylesheet it links to are served
    script = re.search(r'<script type="module" src="([^"]+)"', page).group(1)
    stylesheet = re.search(r'<link rel="stylesheet" href="([^"]+)"', page).group(1)
    assert script == "/static/js/uploads.js"
    served_script = client.get(script)
    assert served_script.status_code == 200
    assert "javascript" in served_script["Content-Type"]
    assert b"X-CSRFToken" in b"".join(served_script.streaming_content)
    served_css = client.get(stylesheet)
    assert served_css.status_code == 200
    assert b".upload-grid" in b"".join(served_css.streaming_content)


# --- Who may fetch a file --------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_who_may_view_uploads_fetch_files_and_other_users_get_404(client):
    # given someone's ready upload
    row = ready_upload(verified_user("ada@example.com"))
    url = f"/files/{row.pk}/thumb"
    # when a superuser fetches its thumb, then they get the image
    client.force_login(User.objects.create_superuser("admin@example.com", PASSWORD))
    assert client.get(url).status_code == 200
    # and so does staff given the permission to view uploads
    staff = verified_user("staff@example.com", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_upload"))
    client.force_login(staff)
    assert client.get(url).status_code == 200
    # but staff without access to uploads, and another user, get the same 404 as for nothing
    client.force_login(verified_user("clerk@example.com", is_staff=True))
    assert client.get(url).status_code == 404
    client.force_login(verified_user("grace@example.com"))
    assert client.get(url).status_code == 404


# --- The admin -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_lists_uploads_with_a_preview_and_finds_them_by_email_and_id(client):
    # given two users' uploads
    ready = ready_upload(verified_user("ada@example.com"))
    other = Upload.objects.create(
        owner=verified_user("grace@example.com"), source_format="PNG", source_bytes=10
    )
    client.force_login(User.objects.create_superuser("admin@example.com", PASSWORD))
    # when staff open the uploads list
    page = client.get("/admin/media/upload/").content.decode()
    # then each upload shows with its owner, and the ready one with its thumb
    assert f'<img src="/files/{ready.pk}/thumb"' in page
    assert "ada@example.com" in page and "grace@example.com" in page
    # and a search by owner email or by id finds only the one meant
    by_email = client.get("/admin/media/upload/", {"q": "grace@"}).content.decode()
    assert str(other.pk) in by_email and str(ready.pk) not in by_email
    by_id = client.get("/admin/media/upload/", {"q": str(ready.pk)}).content.decode()
    assert str(ready.pk) in by_id and str(other.pk) not in by_id
    # and an upload's page shows its variants
    assert client.get(f"/admin/media/upload/{ready.pk}/change/").status_code == 200


def test_process_again_in_the_admin_runs_the_pipeline_to_ready_again(client, celery_worker):
    # given an upload that went through the pipeline
    owner = verified_user("ada@example.com")
    client.force_login(owner)
    response = upload(client, photo(width=800, height=600))
    assert response.status_code == 202, response.content
    upload_id = response.json()["id"]
    assert wait_for_settled(client, upload_id)["status"] == "ready"
    first_ready_at = Upload.objects.get(pk=upload_id).ready_at
    # when staff choose "process again" for it
    client.force_login(User.objects.create_superuser("admin@example.com", PASSWORD))
    response = client.post(
        "/admin/media/upload/", {"action": "process_again", "_selected_action": [upload_id]}
    )
    assert response.status_code == 302
    # then the pipeline runs again and the upload is ready with every variant
    client.force_login(owner)
    body = wait_for_settled(client, upload_id)
    assert body["status"] == "ready", body
    assert set(body["variants"]) == {"thumb", "small", "medium", "large"}
    assert Upload.objects.get(pk=upload_id).ready_at > first_ready_at
    # and its thumb is what the admin previews
    served = client.get(body["variants"]["thumb"]["url"])
    assert Image.open(io.BytesIO(b"".join(served.streaming_content))).size == (160, 160)
