from datetime import timedelta

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from notifications.announcements import announcement_publish
from notifications.models import Announcement, Device, Notification, PushDelivery
from notifications.selectors import announcement_sent_lately

# An announcement identical to one sent this recently is a form submitted twice (a double click,
# the back button), not a second message; past it, staff mean to repeat it.
REPEAT_WINDOW = timedelta(minutes=30)


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


class AnnouncementForm(forms.ModelForm):
    class Meta:
        model = Announcement
        fields = ["title", "body"]

    def clean(self) -> dict:
        cleaned = super().clean()
        twin = announcement_sent_lately(
            title=cleaned.get("title", ""), body=cleaned.get("body", ""), within=REPEAT_WINDOW
        )
        if twin is not None:
            raise forms.ValidationError(
                f"This announcement went out at {twin.created_at:%H:%M} UTC; it is not sent "
                "twice. Change it to send another."
            )
        return cleaned


@admin.register(Announcement)
class AnnouncementAdmin(admin.ModelAdmin):
    """Staff write an announcement here; saving it sends it to every active account. Once
    written it is read-only: people have it in their inboxes as it was."""

    list_display = ["title", "created_by", "created_at", "status", "progress"]
    list_select_related = ["created_by", "batch"]
    form = AnnouncementForm
    fields = ["title", "body"]
    readonly_fields = ["created_by", "created_at", "status", "progress", "fan_out"]

    def get_fields(self, request: HttpRequest, obj=None) -> list[str]:
        return self.fields + (self.readonly_fields if obj else [])

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # sent is sent: deleting the row would not take it back from the inboxes

    def save_model(self, request: HttpRequest, obj: Announcement, form, change: bool) -> None:
        published = announcement_publish(title=obj.title, body=obj.body, by=request.user)
        obj.pk = published.pk
        obj.refresh_from_db()

    @admin.display(description="status")
    def status(self, announcement: Announcement) -> str:
        return announcement.batch.get_status_display() if announcement.batch else "-"

    @admin.display(description="people reached")
    def progress(self, announcement: Announcement) -> str:
        batch = announcement.batch
        if batch is None:
            return "-"
        failed = f", {batch.failed:,} failed" if batch.failed else ""
        return f"{batch.done:,} of {batch.total:,} ({batch.progress} %){failed}"

    @admin.display(description="fan-out")
    def fan_out(self, announcement: Announcement) -> str:
        if announcement.batch_id is None:
            return "-"
        url = reverse("admin:jobs_batch_change", args=[announcement.batch_id])
        return format_html('<a href="{}">its batch, chunk by chunk</a>', url)
