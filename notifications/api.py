"""The notifications API: the inbox, the channels per kind, and the devices pushes go to."""

import re

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.pagination import PageNumberPagination
from config.schema import ErrorSerializer
from notifications import selectors, services
from notifications.endpoints import MAX_ENDPOINT_LENGTH
from notifications.models import Device, Kind, Notification

# A Web Push key is 65 bytes (p256dh) or 16 (auth), base64url: far under this.
MAX_KEY_CHARS = 200
MAX_TOKEN_CHARS = 4096


class NotificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = ["id", "kind", "title", "body", "data", "created_at", "read_at"]
        read_only_fields = fields


class InboxPagination(PageNumberPagination):
    """A page of the inbox, with how many of the person's notifications are unread. `page_size`
    (up to 100): the header's unread count asks for one."""

    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request) -> int:
        # As strict as the page number (config/pagination.py): one value of decimal digits.
        sizes = request.query_params.getlist(self.page_size_query_param)
        if not sizes:
            return self.page_size
        if len(sizes) > 1 or not re.fullmatch(r"[0-9]{1,3}", sizes[0]) or int(sizes[0]) < 1:
            raise exceptions.NotFound("Invalid page size.")
        return min(int(sizes[0]), self.max_page_size)

    def get_paginated_response(self, data) -> Response:
        response = super().get_paginated_response(data)
        response.data["unread"] = selectors.unread_count(user=self.request.user)
        return response

    def get_paginated_response_schema(self, schema: dict) -> dict:
        answer = super().get_paginated_response_schema(schema)
        answer["properties"]["unread"] = {"type": "integer", "minimum": 0}
        answer["required"] = [*answer.get("required", []), "unread"]
        return answer


class InboxView(ListAPIView):
    serializer_class = NotificationSerializer
    pagination_class = InboxPagination

    def get_queryset(self):
        return selectors.inbox(user=self.request.user)


class ReadView(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request, notification_id) -> Response:
        if not services.notification_read(user=request.user, notification_id=notification_id):
            raise exceptions.NotFound("No such notification.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReadAllView(APIView):
    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        services.notifications_read_all(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ChannelsSerializer(serializers.Serializer):
    push = serializers.BooleanField()
    email = serializers.BooleanField()


# One field per kind: {"upload_ready": {"push": true, "email": false}, ...}.
PreferencesSerializer = type(
    "NotificationPreferencesSerializer",
    (serializers.Serializer,),
    {kind: ChannelsSerializer(required=False) for kind in Kind.values},
)


class PreferencesView(APIView):
    @extend_schema(responses={200: PreferencesSerializer})
    def get(self, request: Request) -> Response:
        return Response(_preferences_body(services.channel_preferences_of(user=request.user)))

    @extend_schema(request=PreferencesSerializer, responses={200: PreferencesSerializer})
    def put(self, request: Request) -> Response:
        given = PreferencesSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        unknown = set(request.data) - set(Kind.values) if isinstance(request.data, dict) else {}
        if unknown:
            raise exceptions.ValidationError(
                {kind: ["Not a kind of notification."] for kind in sorted(unknown)}
            )
        try:
            chosen = services.channel_preferences_set(
                user=request.user,
                choices={
                    kind: services.Channels(**channels)
                    for kind, channels in given.validated_data.items()
                },
            )
        except services.NotificationRefused as refusal:
            raise exceptions.ValidationError({refusal.field: [str(refusal)]}) from None
        return Response(_preferences_body(chosen))


def _preferences_body(channels: dict) -> dict:
    return {kind: {"push": chosen.push, "email": chosen.email} for kind, chosen in channels.items()}


class WebPushKeyView(APIView):
    @extend_schema(
        responses={
            200: inline_serializer("WebPushKey", {"public_key": serializers.CharField()}),
            404: OpenApiResponse(ErrorSerializer, description="Web Push is not configured."),
        }
    )
    def get(self, request: Request) -> Response:
        if not settings.VAPID_PUBLIC_KEY:
            raise exceptions.NotFound("Web Push is not configured on this server.")
        return Response({"public_key": settings.VAPID_PUBLIC_KEY})


class SubscriptionKeysSerializer(serializers.Serializer):
    p256dh = serializers.RegexField(r"^[A-Za-z0-9_-]+=*$", max_length=MAX_KEY_CHARS)
    auth = serializers.RegexField(r"^[A-Za-z0-9_-]+=*$", max_length=MAX_KEY_CHARS)


class SubscriptionSerializer(serializers.Serializer):
    """A browser's PushSubscription, as its toJSON() gives it."""

    endpoint = serializers.CharField(max_length=MAX_ENDPOINT_LENGTH)
    keys = SubscriptionKeysSerializer()
    expirationTime = serializers.IntegerField(required=False, allow_null=True)


class DeviceSerializer(serializers.ModelSerializer):
    class Meta:
        model = Device
        fields = ["id", "platform", "created_at", "disabled_at"]
        read_only_fields = fields


class DeviceRegistrationSerializer(serializers.Serializer):
    platform = serializers.ChoiceField(choices=Device.Platform.choices)
    subscription = SubscriptionSerializer(required=False, help_text="For webpush.")
    token = serializers.CharField(
        required=False,
        max_length=MAX_TOKEN_CHARS,
        help_text="For fcm (the registration token) and apns (the device token, in hex).",
    )

    def validate(self, attrs: dict) -> dict:
        needed = "subscription" if attrs["platform"] == Device.Platform.WEBPUSH else "token"
        if needed not in attrs:
            raise serializers.ValidationError({needed: [f"Required for {attrs['platform']}."]})
        return attrs


class DevicesView(ListAPIView):
    serializer_class = DeviceSerializer

    def get_queryset(self):
        return selectors.devices_of(user=self.request.user)

    @extend_schema(
        request=DeviceRegistrationSerializer,
        # 201 for a new device, 200 for a subscription stored before (enabled again).
        responses={201: DeviceSerializer, 200: DeviceSerializer},
    )
    def post(self, request: Request) -> Response:
        given = DeviceRegistrationSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        platform = given.validated_data["platform"]
        subscription = given.validated_data.get("subscription")
        try:
            device, made = services.device_register(
                user=request.user,
                platform=platform,
                address=subscription["endpoint"] if subscription else given.validated_data["token"],
                keys=dict(subscription["keys"]) if subscription else None,
            )
        except services.NotificationRefused as refusal:
            field = "subscription" if subscription else "token"
            raise exceptions.ValidationError({field: [str(refusal)]}) from None
        return Response(
            DeviceSerializer(device).data,
            status=status.HTTP_201_CREATED if made else status.HTTP_200_OK,
        )


class DeviceView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, device_id) -> Response:
        if not services.device_delete(user=request.user, device_id=device_id):
            raise exceptions.NotFound("No such device.")
        return Response(status=status.HTTP_204_NO_CONTENT)
