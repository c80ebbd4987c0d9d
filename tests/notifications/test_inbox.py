"""The inbox and the channels per kind: the API, the pages, and what other apps announce
(notifications/services.py, api.py, views.py, receivers.py)."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from accounts.models import EmailDelivery
from accounts.services import api_token_create
from media.models import Upload
from media.services import upload_fail
from notifications import services
from notifications.models import ChannelPreference, Kind, Notification, PushDelivery

pytestmark = pytest.mark.django_db


def person(email: str = "reader@example.com") -> tuple:
    user = get_user_model().objects.create_user(email, "x" * 12, email_verified_at=timezone.now())
    return user, Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})


def test_the_inbox_lists_newest_first_with_the_unread_count_and_marks_read():
    user, app = person()
    for title in ("first", "second", "third"):
        services.notification_send(user=user, kind=Kind.ANNOUNCEMENT, title=title)
    inbox = app.get("/api/v1/notifications").json()
    assert [entry["title"] for entry in inbox["results"]] == ["third", "second", "first"]
    assert inbox["unread"] == 3 and inbox["count"] == 3
    newest = inbox["results"][0]["id"]
    assert app.post(f"/api/v1/notifications/{newest}/read").status_code == 204
    assert app.post(f"/api/v1/notifications/{newest}/read").status_code == 204  # again: fine
    assert app.get("/api/v1/notifications").json()["unread"] == 2
    assert app.post("/api/v1/notifications/read-all").status_code == 204
    assert app.get("/api/v1/notifications").json()["unread"] == 0


def test_someone_elses_notification_is_not_found_and_stays_unread():
    owner, _ = person("owner@example.com")
    notification = services.notification_send(user=owner, kind=Kind.ANNOUNCEMENT, title="mine")
    _, stranger = person("stranger@example.com")
    assert stranger.post(f"/api/v1/notifications/{notification.pk}/read").status_code == 404
    assert stranger.post("/api/v1/notifications/not-a-uuid/read").status_code == 404
    assert stranger.post("/api/v1/notifications/read-all").status_code == 204
    assert Notification.objects.get().read_at is None
    assert stranger.get("/api/v1/notifications").json()["results"] == []


def test_channels_default_per_kind_and_a_person_chooses_them():
    user, app = person()
    defaults = app.get("/api/v1/notifications/preferences").json()
    assert defaults["upload_ready"] == {"push": True, "email": False}
    assert defaults["report_ready"] == {"push": True, "email": True}
    assert defaults["deletion_scheduled"] == {"push": False, "email": True}
    changed = app.put(
        "/api/v1/notifications/preferences",
        {"upload_ready": {"push": False, "email": True}},
        content_type="application/json",
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["upload_ready"] == {"push": False, "email": True}
    assert changed.json()["report_ready"] == {"push": True, "email": True}  # untouched
    # and a notification of that kind now goes by email, and pushes nowhere
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="a.jpg is ready")
    assert EmailDelivery.objects.get(kind=EmailDelivery.Kind.NOTIFICATION).subject == (
        "a.jpg is ready"
    )
    assert not PushDelivery.objects.exists()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"deletion_scheduled": {"push": True, "email": False}}, "always goes"),
        ({"birthday": {"push": True, "email": True}}, "Not a kind"),
        ({"upload_ready": {"push": "maybe", "email": True}}, "valid boolean"),
        ({"upload_ready": {"push": True}}, "required"),
        (["upload_ready"], "JSON object"),
    ],
)
def test_a_choice_that_cannot_be_kept_is_refused_and_changes_nothing(body, says):
    _, app = person()
    answer = app.put("/api/v1/notifications/preferences", body, content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert says in answer.content.decode()
    assert not ChannelPreference.objects.exists()


def test_the_pages_show_the_inbox_and_the_unread_count_and_save_the_channels():
    user, _ = person()
    services.notification_send(user=user, kind=Kind.ANNOUNCEMENT, title="Maintenance <b>x</b>")
    browser = Client()
    browser.force_login(user)
    page = browser.get("/notifications").content.decode()
    assert "Maintenance &lt;b&gt;x&lt;/b&gt;" in page
    assert 'data-unread-count aria-label="unread">1<' in page
    assert browser.post("/notifications", {"action": "read-all"}).status_code == 302
    assert (
        'data-unread-count hidden aria-label="unread">0<'
        in browser.get("/reports").content.decode()
    )
    saved = browser.post("/notifications/settings", {"report_ready:email": "on"})
    assert saved.status_code == 302
    chosen = services.channel_preferences_of(user=user)
    assert chosen[Kind.REPORT_READY] == services.Channels(push=False, email=True)
    assert chosen[Kind.DELETION_SCHEDULED].email  # a box the page shows disabled stays on
    assert (
        "Get push notifications in this browser"
        in browser.get("/notifications/settings").content.decode()
    )
    assert Client().get("/notifications").status_code == 302  # a login first


def test_an_upload_that_fails_is_announced_once_and_a_deletion_by_email_whatever_was_chosen():
    user, _ = person()
    upload = Upload.objects.create(
        owner=user, original_name="broken.png", source_format="PNG", source_bytes=1
    )
    upload_fail(upload_id=upload.pk, reason="The file is not an image.")
    upload_fail(upload_id=upload.pk, reason="Another step failed too.")
    (failed,) = Notification.objects.filter(kind=Kind.UPLOAD_FAILED)
    assert (failed.title, failed.body) == ("broken.png could not be processed",
                                           "The file is not an image.")  # fmt: skip
    from accounts.deletion import account_deletion_request

    ChannelPreference.objects.create(
        user=user, kind=Kind.DELETION_SCHEDULED, push=False, email=False
    )  # fmt: skip (written past the API's refusal)
    account_deletion_request(user=user, password="x" * 12, ip="127.0.0.1")
    assert Notification.objects.filter(kind=Kind.DELETION_SCHEDULED).count() == 1
    assert EmailDelivery.objects.filter(kind=EmailDelivery.Kind.DELETION_SCHEDULED).count() == 1
