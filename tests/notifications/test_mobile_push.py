"""FCM and APNs for real: tokens registered through the API, notifications pushed by a real
worker to the session's stand-ins of FCM (with Google's token endpoint) and APNs, which check
every request as Google and Apple document them (tests/notifications/mobile_services.py); what
they answer decides the rest (notifications/fcm.py, apns.py, push_http.py)."""

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobs.models import DeadLetter
from jobs.retry import OutcomeUnknown, PermanentError, TransientError
from notifications import providers, services
from notifications.models import Device, Kind, PushDelivery
from tests.harness import PUSH_CERT, PUSH_KEY
from tests.notifications.mobile_services import APNS_TOPIC, FCM_PROJECT, fcm_error
from tests.notifications.push_service import certificate_make
from tests.notifications.test_webpush import delivery_settled, person
from tests.processes import free_port
from tests.services import eventually

FCM_TOKEN = "dQw4w9WgXcQ:APA91bH" + "x7-_" * 36
APNS_TOKEN = "a1b2c3d4" * 8

UNREGISTERED = fcm_error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")
SENDER_ID_MISMATCH = fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch")
TOKEN_INVALID = fcm_error(
    400,
    "INVALID_ARGUMENT",
    "INVALID_ARGUMENT",
    "The registration token is not a valid FCM registration token",
    field="message.token",
)
MESSAGE_INVALID = fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big")
QUOTA_EXCEEDED = fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded.")
UNAVAILABLE = fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "The service is unavailable.")
INTERNAL = fcm_error(500, "INTERNAL", "INTERNAL", "Internal error encountered.")
UNAUTHENTICATED = {"error": {"code": 401, "status": "UNAUTHENTICATED"}}


def register(app, platform: str, token: str):
    return app.post(
        "/api/v1/devices", {"platform": platform, "token": token}, content_type="application/json"
    )


@pytest.fixture
def service(request, fcm_service, apns_service):
    """The stand-in of the platform the test is parametrized with."""
    return {"fcm": fcm_service, "apns": apns_service}[request.param]


PLATFORMS = pytest.mark.parametrize(
    ("platform", "service", "token"),
    [("fcm", "fcm", FCM_TOKEN), ("apns", "apns", APNS_TOKEN)],
    indirect=["service"],
)


def test_a_notification_reaches_an_android_app_through_fcm(celery_worker, fcm_service):
    # given a person whose app registered its FCM token
    user, app = person()
    assert register(app, "fcm", FCM_TOKEN).status_code == 201
    # when one of their uploads is ready
    notification = services.notification_send(
        user=user, kind=Kind.UPLOAD_READY, title="beach.jpg is ready", body="4 sizes made",
        data={"upload_id": "123", "sizes": 4},
    )  # fmt: skip
    # then FCM got one message for the token, every data value a string, under an access token
    # Google's token endpoint issued for our service account's signed assertion
    (received,) = eventually(lambda: fcm_service.received, timeout=30)
    assert received.path == f"/v1/projects/{FCM_PROJECT}/messages:send"
    message = received.json()["message"]
    assert message["token"] == FCM_TOKEN
    assert message["notification"] == {"title": "beach.jpg is ready", "body": "4 sizes made"}
    assert message["data"] == {
        "upload_id": "123",
        "sizes": "4",
        "id": str(notification.pk),
        "kind": "upload_ready",
    }
    assert received.headers["authorization"].removeprefix("Bearer ") in fcm_service.issued
    delivery = delivery_settled(PushDelivery.Status.SENT)
    assert delivery.attempts == 1


def test_a_notification_reaches_an_iphone_through_apns(celery_worker, apns_service):
    # given a person whose app registered its APNs token, spelled in upper case
    user, app = person()
    assert register(app, "apns", APNS_TOKEN.upper()).status_code == 201
    # when one of their reports is ready
    notification = services.notification_send(
        user=user, kind=Kind.REPORT_READY, title="Your report is ready", body="March",
        data={"report_id": "7"},
    )  # fmt: skip
    # then APNs got one HTTP/2 request for the token, signed by our key, with the alert
    (received,) = eventually(lambda: apns_service.received, timeout=30)
    assert received.http_version == "2"
    assert received.path == f"/3/device/{APNS_TOKEN}"
    assert received.headers["apns-topic"] == APNS_TOPIC
    assert received.headers["apns-push-type"] == "alert"
    assert received.headers["apns-priority"] == "10"
    assert time.time() < int(received.headers["apns-expiration"]) <= time.time() + 24 * 3600
    assert received.json() == {
        "aps": {"alert": {"title": "Your report is ready", "body": "March"}},
        "report_id": "7",
        "id": str(notification.pk),
        "kind": "report_ready",
    }
    delivery = delivery_settled(PushDelivery.Status.SENT)
    assert delivery.attempts == 1


@pytest.mark.parametrize(
    ("platform", "service", "token", "status", "body"),
    [
        ("fcm", "fcm", FCM_TOKEN, 404, UNREGISTERED),
        ("apns", "apns", APNS_TOKEN, 410, {"reason": "Unregistered", "timestamp": 1700000000000}),
    ],
    indirect=["service"],
)
def test_an_app_the_service_says_is_gone_is_disabled_and_never_tried_again(
    celery_worker, platform, service, token, status, body
):
    user, app = person()
    assert register(app, platform, token).status_code == 201
    service.answer_next(status, body)
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="first")
    delivery = delivery_settled(PushDelivery.Status.FAILED)
    assert "gone" in delivery.last_error
    assert Device.objects.get().disabled_at is not None
    assert not DeadLetter.objects.exists()
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="second")
    time.sleep(1)
    assert len(service.received) == 1


@pytest.mark.parametrize(
    ("platform", "service", "token", "body"),
    [
        ("fcm", "fcm", FCM_TOKEN, QUOTA_EXCEEDED),
        ("apns", "apns", APNS_TOKEN, {"reason": "TooManyRequests"}),
    ],
    indirect=["service"],
)
def test_a_busy_service_is_asked_again_no_sooner_than_its_retry_after(
    celery_worker, platform, service, token, body
):
    user, app = person()
    assert register(app, platform, token).status_code == 201
    service.answer_next(429, body, {"Retry-After": "2"})
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="busy")
    delivery = delivery_settled(PushDelivery.Status.SENT)
    first, second = service.received
    assert second.at - first.at >= 2.0
    assert delivery.attempts == 2


@pytest.mark.parametrize(
    ("platform", "service", "token", "status", "body"),
    [
        ("fcm", "fcm", FCM_TOKEN, 400, MESSAGE_INVALID),
        ("apns", "apns", APNS_TOKEN, 400, {"reason": "BadCollapseId"}),
    ],
    indirect=["service"],
)
def test_a_message_the_service_refuses_fails_at_once_as_a_dead_letter(
    celery_worker, platform, service, token, status, body
):
    user, app = person()
    assert register(app, platform, token).status_code == 201
    service.answer_next(status, body)
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="refused")
    delivery = delivery_settled(PushDelivery.Status.FAILED)
    assert "refused" in delivery.last_error
    letter = eventually(
        lambda: DeadLetter.objects.filter(task_name="notifications.send_push").first()
    )
    assert letter.kwargs["push_delivery_id"] == delivery.pk
    assert len(service.received) == 1
    assert Device.objects.get().disabled_at is None  # the device is fine; the message was not


@pytest.mark.django_db
@PLATFORMS
def test_an_expired_credential_is_renewed_and_the_message_sent_once(platform, service, token):
    # given a process that has sent before, whose credential has since expired
    user, app = person()
    assert register(app, platform, token).status_code == 201
    providers.push_send(Device.objects.get(), payload=services.push_payload(
        services.Notification(user=user, kind=Kind.UPLOAD_READY, title="warm-up")
    ))  # fmt: skip
    service.tokens_expire()
    # when a delivery is sent
    notification = services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="t")
    delivery = PushDelivery.objects.get(notification=notification)
    services.push_delivery_send(delivery_id=delivery.pk)
    # then the service refused the old credential, and took the message once with a new one
    *_, refused, accepted = service.received
    assert (refused.answered, accepted.answered) == (
        (401, 200) if platform == "fcm" else (403, 200)
    )
    assert refused.headers["authorization"] != accepted.headers["authorization"]
    assert [request.answered for request in service.received].count(200) == 2  # warm-up, t
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (PushDelivery.Status.SENT, 1)


PAYLOAD = json.dumps(
    {"id": "1", "kind": "upload_ready", "title": "t", "body": "", "data": {}}
).encode()


# What each answer means, for each service (notifications/fcm.py, apns.py).
ANSWERS = [
    ("fcm", 404, UNREGISTERED, providers.DeviceGone),
    # a setting's mistake (another project's account, a wrong topic), not the device's: every
    # device would answer it, and none is disabled
    ("fcm", 403, SENDER_ID_MISMATCH, PermanentError),
    ("fcm", 400, TOKEN_INVALID, providers.DeviceGone),
    ("fcm", 400, MESSAGE_INVALID, PermanentError),
    ("fcm", 404, {"error": {"code": 404, "status": "NOT_FOUND"}}, PermanentError),
    ("fcm", 429, QUOTA_EXCEEDED, TransientError),
    ("fcm", 500, INTERNAL, TransientError),
    ("fcm", 503, UNAVAILABLE, TransientError),
    ("apns", 410, {"reason": "Unregistered"}, providers.DeviceGone),
    ("apns", 400, {"reason": "BadDeviceToken"}, providers.DeviceGone),
    ("apns", 400, {"reason": "DeviceTokenNotForTopic"}, PermanentError),
    ("apns", 400, {"reason": "BadTopic"}, PermanentError),
    ("apns", 403, {"reason": "InvalidProviderToken"}, PermanentError),
    ("apns", 413, {"reason": "PayloadTooLarge"}, PermanentError),
    ("apns", 429, {"reason": "TooManyProviderTokenUpdates"}, TransientError),
    ("apns", 500, {"reason": "InternalServerError"}, TransientError),
    ("apns", 503, {"reason": "ServiceUnavailable"}, TransientError),
]


@pytest.mark.parametrize(
    ("platform", "service", "status", "body", "raised"),
    [(platform, platform, status, body, raised) for platform, status, body, raised in ANSWERS],
    ids=[f"{platform}-{status}-{json.dumps(body)[:60]}" for platform, status, body, _ in ANSWERS],
    indirect=["service"],
)
def test_each_answer_means_what_the_service_documents(platform, service, status, body, raised):
    service.answer_next(status, body, {"Retry-After": "7"})
    device = Device(platform=platform, address=FCM_TOKEN if platform == "fcm" else APNS_TOKEN)
    with pytest.raises(raised) as error:
        providers.push_send(device, payload=PAYLOAD)
    if raised is TransientError:
        assert error.value.retry_after == 7.0


@PLATFORMS
def test_a_credential_refused_again_once_renewed_fails_for_good(platform, service, token):
    status, body = (401, UNAUTHENTICATED) if platform == "fcm" else (
        403, {"reason": "ExpiredProviderToken"}
    )  # fmt: skip
    service.answer_next(status, body)
    service.answer_next(status, body)
    with pytest.raises(PermanentError):
        providers.push_send(Device(platform=platform, address=token), payload=PAYLOAD)
    assert len(service.received) == 2  # once renewed, never more


@PLATFORMS
def test_no_connection_is_transient_a_lost_answer_unknown_a_bad_certificate_permanent(
    platform, service, token, settings, tmp_path
):
    setting = "FCM_API_URL" if platform == "fcm" else "APNS_HOST"
    device, stand_in = Device(platform=platform, address=token), getattr(settings, setting)
    # nobody listening: nothing was sent, so it may be tried again
    setattr(settings, setting, f"https://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match="no connection"):
        providers.push_send(device, payload=PAYLOAD)
    # a server that reads the whole request and hangs up: the device may have it
    with _hanging_up_server() as port:
        setattr(settings, setting, f"https://127.0.0.1:{port}")
        with pytest.raises(OutcomeUnknown, match="after the request was sent"):
            providers.push_send(device, payload=PAYLOAD)
    # a certificate the CA bundle does not vouch for: not better next time
    setattr(settings, setting, stand_in)
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    settings.PUSH_CA_BUNDLE = str(certificate_make(other_ca)[0])
    with pytest.raises(PermanentError, match="certificate"):
        providers.push_send(device, payload=PAYLOAD)


@contextmanager
def _hanging_up_server() -> Iterator[int]:
    """A server with the stand-ins' certificate that reads a request, then hangs up."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(PUSH_CERT, PUSH_KEY)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with context.wrap_socket(listener.accept()[0], server_side=True) as connection:
            connection.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("platform", "token", "says"),
    [
        ("fcm", "too-short", "32 to 1024"),
        ("fcm", FCM_TOKEN[:100] + " " + FCM_TOKEN[100:], "32 to 1024"),
        ("fcm", FCM_TOKEN[:100] + "/" + FCM_TOKEN[100:], "32 to 1024"),
        ("fcm", FCM_TOKEN[:100] + "é" + FCM_TOKEN[100:], "32 to 1024"),
        ("fcm", "a" * 1025, "32 to 1024"),
        ("apns", "a1b2" * 15, "64 to 200"),
        ("apns", APNS_TOKEN + "a", "64 to 200"),
        ("apns", APNS_TOKEN[:-1] + "g", "64 to 200"),
        ("apns", "ab" * 101, "64 to 200"),
        ("apns", "../../3/device/" + APNS_TOKEN, "64 to 200"),
        ("apns", "", "blank"),
    ],
    ids=["fcm-short", "fcm-space", "fcm-slash", "fcm-non-ascii", "fcm-long", "apns-short",
         "apns-odd", "apns-not-hex", "apns-long", "apns-path", "apns-empty"],
)  # fmt: skip
def test_a_token_not_of_its_platforms_form_is_refused_with_400(platform, token, says):
    _, app = person()
    answer = register(app, platform, token)
    assert answer.status_code == 400, answer.content
    assert says in " ".join(answer.json()["errors"]["token"])
    assert not Device.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("platform", "token", "setting", "label"),
    [
        ("fcm", FCM_TOKEN, "FCM_SERVICE_ACCOUNT_FILE", "Firebase Cloud Messaging"),
        ("apns", APNS_TOKEN, "APNS_TOPIC", "Apple Push Notification service"),
    ],
)
def test_a_platform_not_configured_refuses_its_tokens(settings, platform, token, setting, label):
    setattr(settings, setting, "")
    _, app = person()
    answer = register(app, platform, token)
    assert answer.status_code == 400
    assert answer.json()["errors"]["token"] == [f"{label} is not configured on this server."]
    missing = app.post("/api/v1/devices", {"platform": platform}, content_type="application/json")
    assert missing.status_code == 400 and "token" in missing.json()["errors"]


@pytest.mark.django_db
def test_the_same_token_twice_is_one_device_however_it_is_spelled():
    _, app = person()
    assert register(app, "apns", APNS_TOKEN).status_code == 201
    assert register(app, "apns", APNS_TOKEN.upper()).status_code == 200
    assert register(app, "fcm", FCM_TOKEN).status_code == 201
    assert register(app, "fcm", FCM_TOKEN).status_code == 200
    assert sorted(Device.objects.values_list("platform", "address")) == [
        ("apns", APNS_TOKEN),
        ("fcm", FCM_TOKEN),
    ]
