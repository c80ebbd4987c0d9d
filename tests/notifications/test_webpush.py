"""Web Push for real: a subscription registered through the API, a notification pushed by a real
worker to the session's HTTPS push service, which decrypts it with the subscription's secrets
and checks our VAPID signature; what the service answers decides the rest
(notifications/services.py, providers.py, endpoints.py)."""

import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from accounts.services import api_token_create
from jobs.deadletters import dead_letter_redrive
from jobs.models import DeadLetter
from jobs.retry import PermanentError
from notifications import providers, services
from notifications.endpoints import EndpointRefused, address_is_public
from notifications.models import Device, Kind, PushDelivery
from tests.media.images_for_tests import jpeg
from tests.notifications.push_service import b64url, vapid_claims_verified
from tests.services import eventually


def person(email: str = "phone@example.com") -> tuple:
    user = get_user_model().objects.create_user(email, "x" * 12, email_verified_at=timezone.now())
    return user, Client(headers={"Authorization": f"Bearer {api_token_create(user=user)}"})


def subscribe(app: Client, subscription: dict):
    return app.post(
        "/api/v1/devices",
        {"platform": "webpush", "subscription": subscription},
        content_type="application/json",
    )


def delivery_settled(status: str) -> PushDelivery:
    return eventually(
        lambda: PushDelivery.objects.filter(status=status).select_related("device").first(),
        timeout=30,
        interval=0.1,
    )


def test_a_notification_reaches_the_browser_encrypted_for_it_and_signed_by_us(
    celery_worker, push_service
):
    # given a person whose browser subscribed with the key the API gives
    user, app = person()
    key = app.get("/api/v1/devices/webpush-key")
    assert key.status_code == 200 and key.json()["public_key"] == settings.VAPID_PUBLIC_KEY
    browser = push_service.subscription()
    answer = subscribe(app, browser.as_json())
    assert answer.status_code == 201, answer.content
    # when one of their uploads is ready
    services.notification_send(
        user=user, kind=Kind.UPLOAD_READY, title="beach.jpg is ready", body="4 sizes made",
        data={"upload_id": "123"},
    )  # fmt: skip
    # then the push service got one message, which only the browser can read, signed by us
    (received,) = eventually(lambda: push_service.received, timeout=30)
    message = browser.decrypt(received.body)
    assert (message["title"], message["body"], message["data"]) == (
        "beach.jpg is ready",
        "4 sizes made",
        {"upload_id": "123"},
    )
    assert received.headers["content-encoding"] == "aes128gcm"
    assert int(received.headers["ttl"]) == providers.PUSH_TTL_SECONDS
    claims = vapid_claims_verified(
        received.headers["authorization"], public_key=settings.VAPID_PUBLIC_KEY
    )
    assert claims["aud"] == f"https://127.0.0.1:{push_service.port}"
    assert claims["sub"] == "mailto:ops@example.com"
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    # and the delivery says so, and the inbox holds the notification, unread
    delivery = delivery_settled(PushDelivery.Status.SENT)
    assert delivery.attempts == 1
    inbox = app.get("/api/v1/notifications").json()
    assert inbox["unread"] == 1
    assert [entry["title"] for entry in inbox["results"]] == ["beach.jpg is ready"]


def test_a_subscription_the_service_says_is_gone_is_disabled_and_never_tried_again(
    celery_worker, push_service
):
    user, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    # when the service answers 410 Gone
    push_service.answer_next(410)
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="first")
    # then the device is disabled, the delivery failed, and nothing is dead-lettered
    delivery = delivery_settled(PushDelivery.Status.FAILED)
    assert "gone" in delivery.last_error
    device = Device.objects.get()
    assert device.disabled_at is not None
    assert not DeadLetter.objects.exists()
    # and the next notification is not pushed to it at all
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="second")
    time.sleep(1)
    assert len(push_service.received) == 1
    assert PushDelivery.objects.count() == 1
    assert app.get("/api/v1/devices").json()["results"][0]["disabled_at"] is not None


def test_a_busy_service_is_asked_again_no_sooner_than_its_retry_after(celery_worker, push_service):
    user, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    # when the service answers 429 with Retry-After: 2, then accepts
    push_service.answer_next(429, {"Retry-After": "2"})
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="busy")
    # then the second attempt came no sooner than 2 s after the first, and went through
    delivery = delivery_settled(PushDelivery.Status.SENT)
    first, second = push_service.received
    assert second.at - first.at >= 2.0
    assert delivery.attempts == 2


def test_a_message_the_service_refuses_fails_at_once_as_a_dead_letter(celery_worker, push_service):
    user, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    push_service.answer_next(400)
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="refused")
    delivery = delivery_settled(PushDelivery.Status.FAILED)
    assert "refused" in delivery.last_error
    assert len(push_service.received) == 1
    letter = eventually(
        lambda: DeadLetter.objects.filter(task_name="notifications.send_push").first()
    )
    assert letter.kwargs["push_delivery_id"] == delivery.pk
    assert Device.objects.get().disabled_at is None  # the device is fine; the message was not


def endpoint(url: str):
    return lambda subscription, port: {**subscription, "endpoint": url.format(port=port)}


# A valid P-256 public key in the compressed form, which the encryption cannot use.
COMPRESSED_POINT = b64url(
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
)


def keys(**changed):
    return lambda subscription, port: {
        **subscription,
        "keys": {**subscription["keys"], **changed},
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "says"),
    [
        (endpoint("http://127.0.0.1:{port}/push/x"), "https"),
        (endpoint("https://evil.example.com/push/x"), "push service"),
        (endpoint("https://169.254.169.254/latest/meta-data"), "push service"),
        (endpoint("https://10.0.0.1/push/x"), "push service"),
        (endpoint("https://127.0.0.1:1/push/x"), "push service"),
        (endpoint("https://user:pw@127.0.0.1:{port}/x"), "password"),
        (endpoint("https://127.0.0.1:{port}/" + "x" * 2100), "2048"),
        (endpoint("not a url"), "https"),
        (endpoint("https://evil.example\\.127.0.0.1:{port}/x"), "plain ASCII"),
        (endpoint("https://127.0.0.1:{port}/pushé"), "plain ASCII"),
        (endpoint("https://127.0.0.1:{port}/" + "推" * 2000), "plain ASCII"),
        (keys(p256dh="AAAA"), "P-256"),
        (keys(auth="AAAA"), "16 bytes"),
        (keys(p256dh="<script>"), "pattern"),
        (keys(p256dh=COMPRESSED_POINT), "uncompressed"),
        (lambda subscription, port: {"endpoint": subscription["endpoint"]}, "keys: This field"),
        (lambda subscription, port: "a string", "dictionary"),
    ],
    ids=["http", "other-host", "metadata", "private", "other-port", "credentials", "too-long",
         "not-a-url", "backslash", "non-ascii", "long-non-ascii", "bad-point", "bad-auth",
         "not-base64url", "compressed-point", "no-keys", "not-an-object"],
)  # fmt: skip
def test_a_subscription_we_would_not_send_to_is_refused_with_400(push_service, change, says):
    _, app = person()
    subscription = change(push_service.subscription().as_json(), push_service.port)
    answer = subscribe(app, subscription)
    assert answer.status_code == 400, answer.content
    assert says in answer.content.decode()
    assert not Device.objects.exists()


@pytest.mark.django_db
def test_a_request_too_large_or_without_what_its_platform_needs_is_refused(push_service):
    _, app = person()
    missing = app.post("/api/v1/devices", {"platform": "webpush"}, content_type="application/json")
    assert missing.status_code == 400 and "subscription" in missing.json()["errors"]
    unknown = app.post("/api/v1/devices", {"platform": "pager", "token": "x"},
                       content_type="application/json")  # fmt: skip
    assert unknown.status_code == 400
    huge = subscribe(app, {**push_service.subscription().as_json(), "padding": "x" * 3_000_000})
    assert huge.status_code in (400, 413)
    assert not Device.objects.exists()


@pytest.mark.django_db
def test_the_same_subscription_twice_is_one_device_and_an_account_keeps_ten(push_service):
    _, app = person()
    browser = push_service.subscription().as_json()
    assert subscribe(app, browser).status_code == 201
    assert subscribe(app, browser).status_code == 200
    assert Device.objects.count() == 1
    for n in range(12):
        assert subscribe(app, push_service.subscription(f"b{n}").as_json()).status_code == 201
    assert Device.objects.count() == services.DEVICES_PER_ACCOUNT
    assert not Device.objects.filter(address=browser["endpoint"]).exists()  # the oldest went


@pytest.mark.django_db
def test_a_push_is_refused_when_its_connection_reaches_a_private_address(push_service, settings):
    # given a device stored while 127.0.0.1 was allowed, which the rule now refuses
    _, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    device = Device.objects.get()
    settings.WEBPUSH_ALLOW_PRIVATE_ADDRESSES = False
    # when a push is sent to it, then it is refused before a byte reaches the address
    with pytest.raises(EndpointRefused, match="non-public address"):
        providers.push_send(device, payload=b"{}")
    # and an endpoint no longer on the allowed hosts is refused before any connection
    settings.WEBPUSH_ALLOWED_HOSTS = ["fcm.googleapis.com"]
    with pytest.raises(EndpointRefused, match="push service"):
        providers.push_send(device, payload=b"{}")
    assert push_service.received == []


@pytest.mark.django_db
def test_the_send_itself_turns_a_refused_endpoint_into_a_failed_delivery(push_service, settings):
    user, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    notification = services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="t")
    settings.WEBPUSH_ALLOW_PRIVATE_ADDRESSES = False
    delivery = PushDelivery.objects.get(notification=notification)
    with pytest.raises(PermanentError):
        services.push_delivery_send(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == PushDelivery.Status.FAILED
    assert "non-public" in delivery.last_error
    assert push_service.received == []


def test_an_upload_the_pipeline_makes_ready_is_pushed_once(celery_worker, push_service):
    # given a person with a subscribed browser
    _, app = person()
    browser = push_service.subscription()
    assert subscribe(app, browser.as_json()).status_code == 201
    # when they upload a photo and the pipeline makes it ready
    answer = app.post("/api/v1/uploads", {"file": SimpleUploadedFile("dunes.jpg", jpeg(64, 48))})
    assert answer.status_code == 202, answer.content
    upload_id = answer.json()["id"]
    eventually(lambda: app.get(f"/api/v1/uploads/{upload_id}").json()["status"] == "ready")
    # then the browser is told, once
    (received,) = eventually(lambda: push_service.received, timeout=30)
    message = browser.decrypt(received.body)
    assert (message["title"], message["data"]) == ("dunes.jpg is ready", {"upload_id": upload_id})
    time.sleep(1)
    assert len(push_service.received) == 1
    assert app.get("/api/v1/notifications").json()["unread"] == 1


@pytest.mark.django_db
def test_a_delivery_whose_worker_died_mid_send_is_not_sent_again(push_service):
    # given a delivery left "sending" (its worker was killed after the request may have gone)
    user, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    notification = services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="t")
    PushDelivery.objects.filter(notification=notification).update(
        status=PushDelivery.Status.SENDING
    )
    # when its message is delivered again, then it is marked unknown, and nothing is sent
    delivery = PushDelivery.objects.get(notification=notification)
    services.push_delivery_send(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == PushDelivery.Status.UNKNOWN
    assert push_service.received == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("10.1.2.3", False),
        ("100.64.0.1", False),  # shared address space (carrier NAT)
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:169.254.169.254", False),  # IPv4-mapped
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the metadata address
        ("2002:a9fe:a9fe::1", False),  # 6to4 of it
        ("224.0.0.1", False),
    ],
)
def test_only_addresses_that_reach_the_internet_count_as_public(address, public):
    assert address_is_public(address) is public


@pytest.mark.django_db
def test_a_browser_belongs_to_the_last_account_that_subscribed_it_and_a_reset_forgets_them(
    push_service,
):
    # given a shared computer's browser, subscribed by one person, then by another
    _, first_app = person("first@example.com")
    second, second_app = person("second@example.com")
    browser = push_service.subscription().as_json()
    assert subscribe(first_app, browser).status_code == 201
    assert subscribe(second_app, browser).status_code == 201
    # then it gets only the second person's pushes
    assert list(Device.objects.values_list("user", flat=True)) == [second.pk]
    # and when the second person resets their password, their devices go
    from accounts import tokens
    from accounts.services import password_reset_confirm

    second.refresh_from_db()  # the token is bound to the account's state as it is now
    token = tokens.token_make(purpose=tokens.PURPOSE_RESET, user=second)
    password_reset_confirm(token=token, password="a new passphrase 7")
    assert not Device.objects.exists()


@pytest.mark.django_db
def test_a_payload_stays_under_what_a_push_service_takes_whatever_the_text():
    # given a notification whose title and body are as long as the inbox keeps, in emoji
    user = get_user_model().objects.create_user("emoji@example.com", "x" * 12)
    notification = services.Notification(
        user=user, kind=Kind.ANNOUNCEMENT, title="🎉" * 200, body="🦄" * 2000, data={"id": "1"}
    )
    # then its push payload stays under RFC 8291's 3,993 bytes, cut between characters
    payload = services.push_payload(notification)
    assert len(payload) < 3993
    message = json.loads(payload)
    assert set(message["title"]) == {"🎉"} and set(message["body"]) == {"🦄"}


def test_a_failed_push_whose_dead_letter_is_re_driven_goes_out(celery_worker, push_service):
    # given a push the service refused, dead-lettered
    user, app = person()
    browser = push_service.subscription()
    assert subscribe(app, browser.as_json()).status_code == 201
    push_service.answer_next(400)
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="again")
    delivery_settled(PushDelivery.Status.FAILED)
    letter = eventually(
        lambda: DeadLetter.objects.filter(task_name="notifications.send_push").first()
    )
    # when a person re-drives it, and the service accepts it this time
    dead_letter_redrive(dead_letter_id=letter.pk, by="ops@example.com")
    # then it is sent
    delivery = delivery_settled(PushDelivery.Status.SENT)
    assert delivery.attempts == 2
    assert browser.decrypt(push_service.received[-1].body)["title"] == "again"


@pytest.mark.django_db
def test_one_subscription_spelled_two_ways_is_one_device(push_service):
    _, app = person()
    browser = push_service.subscription().as_json()
    respelled = {**browser, "endpoint": browser["endpoint"].replace("127.0.0.1", "127.0.0.1.")}
    assert subscribe(app, browser).status_code == 201
    assert subscribe(app, respelled).status_code == 200
    assert list(Device.objects.values_list("address", flat=True)) == [browser["endpoint"]]


@pytest.mark.parametrize("fault", ["hangs", "drops"])
def test_a_push_whose_answer_never_comes_is_never_sent_again_by_itself(
    celery_worker, push_service, fault
):
    # given a service that takes the message, then never answers, or drops the connection
    user, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    if fault == "hangs":
        push_service.hang_next(providers.PUSH_TIMEOUTS[1] + 5)
    else:
        push_service.drop_next()
    services.notification_send(user=user, kind=Kind.UPLOAD_READY, title="maybe")
    # then the delivery may have gone: marked so, kept for a person as a dead letter, not retried
    delivery = eventually(
        lambda: PushDelivery.objects.filter(status=PushDelivery.Status.UNKNOWN).first(),
        timeout=providers.PUSH_TIMEOUTS[1] + 20,
        interval=0.2,
    )
    assert delivery.attempts == 1
    letter = eventually(
        lambda: DeadLetter.objects.filter(task_name="notifications.send_push").first()
    )
    assert letter.exception_class.endswith("OutcomeUnknown")
    time.sleep(2)
    assert len(push_service.received) == 1
    assert Device.objects.get().disabled_at is None


@pytest.mark.django_db
def test_a_vapid_key_that_cannot_sign_fails_the_send_before_anything_goes(push_service, settings):
    _, app = person()
    assert subscribe(app, push_service.subscription().as_json()).status_code == 201
    settings.VAPID_PRIVATE_KEY = "not-a-key"
    with pytest.raises(PermanentError, match="cannot sign"):
        providers.push_send(Device.objects.get(), payload=b"{}")
    assert push_service.received == []
