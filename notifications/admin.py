from django.contrib import admin
from django.http import HttpRequest

from notifications.models import Device, Notification, PushDelivery


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the product writes: the admin shows what happened, and changes none of it."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ["title", "kind", "user", "created_at", "read_at"]
    list_filter = ["kind"]
    search_fields = ["user__email", "title"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"


@admin.register(PushDelivery)
class PushDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "notification", "device", "status", "attempts", "updated_at"]
    list_filter = ["status", "device__platform"]
    search_fields = ["notification__user__email"]
    list_select_related = ["notification", "device"]


@admin.register(Device)
class DeviceAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "platform", "created_at", "disabled_at", "disabled_reason"]
    list_filter = ["platform"]
    search_fields = ["user__email"]
    list_select_related = ["user"]
