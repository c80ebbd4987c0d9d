from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from media import services
from media.models import Upload, UploadVariant


class UploadVariantInline(admin.TabularInline):
    model = UploadVariant
    fields = ["name", "width", "height", "bytes", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Upload | None = None) -> bool:
        return False  # variants come from the pipeline, never from a form


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = [
        "preview", "id", "owner_email", "status", "progress", "created_at", "error_short",
    ]  # fmt: skip
    list_display_links = ["id"]
    list_filter = ["status"]
    search_fields = ["owner__email", "id"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    actions = ["process_again"]
    inlines = [UploadVariantInline]
    readonly_fields = ["preview", *[field.name for field in Upload._meta.fields]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads come from their owners, through the API

    @admin.display(description="preview")
    def preview(self, upload: Upload) -> str | None:
        if upload.status != Upload.Status.READY:
            return None
        url = reverse("media:file", kwargs={"upload_id": upload.pk, "name": "thumb"})
        return format_html('<img src="{}" width="64" height="64" alt="" loading="lazy">', url)

    @admin.display(description="owner", ordering="owner__email")
    def owner_email(self, upload: Upload) -> str:
        return upload.owner.email

    @admin.display(description="error")
    def error_short(self, upload: Upload) -> str:
        return Truncator(upload.error).chars(60)

    @admin.action(description="Process again", permissions=["change"])
    def process_again(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        count = 0
        for upload in queryset:
            services.upload_reprocess(upload=upload)  # its own transaction, durable enqueue
            count += 1
        self.message_user(request, f"{count} upload(s) queued to process again.", messages.SUCCESS)
