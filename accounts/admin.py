from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from accounts.deletion import account_erasure_order
from accounts.emails import email_delivery_resend
from accounts.forms import AdminLoginForm, AdminUserAddForm, AdminUserEditForm
from accounts.models import AccountErasure, EmailDelivery, User

# The admin's login counts failed passwords with the API's and the pages' (accounts/throttling.py).
admin.site.login_form = AdminLoginForm


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = AdminUserEditForm
    add_form = AdminUserAddForm
    ordering = ["-date_joined"]
    list_display = [
        "email", "email_verified_at", "is_active", "is_staff", "date_joined",
        "deletion_scheduled_for",
    ]  # fmt: skip
    list_filter = ["is_active", "is_staff"]
    search_fields = ["email"]
    readonly_fields = ["date_joined", "last_login"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        (
            "Status",
            {
                "fields": [
                    "is_active",
                    "email_verified_at",
                    "date_joined",
                    "last_login",
                    "deletion_scheduled_for",
                ]
            },
        ),
        ("Permissions", {"fields": ["is_staff", "is_superuser", "groups", "user_permissions"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]
    actions = ["erase_now"]

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> list[str]:
        # The schedule changes only through a request and its cancel, or the action below.
        return [*super().get_readonly_fields(request, obj), "deletion_scheduled_for"]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Deleting the row would leave the account's files, emails and jobs behind: an account
        # goes through its erasure (the action below).
        return False

    @admin.action(
        description="Erase the selected accounts now (no grace period)", permissions=["change"]
    )
    def erase_now(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        erased = sum(account_erasure_order(user=user) for user in queryset)
        self.message_user(
            request,
            f"{erased} erasure(s) queued; staff accounts and accounts already being erased were "
            "left as they are.",
            messages.SUCCESS,
        )


@admin.register(EmailDelivery)
class EmailDeliveryAdmin(admin.ModelAdmin):
    list_display = ["recipient", "kind", "status", "attempts", "created_at", "sent_at"]
    list_filter = ["status", "kind"]
    search_fields = ["recipient", "message_id"]
    date_hierarchy = "created_at"
    actions = ["send_again"]
    readonly_fields = [field.name for field in EmailDelivery._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # emails come from the flows that need them

    @admin.action(description="Send again", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[EmailDelivery]) -> None:
        count = 0
        for delivery_id in queryset.values_list("pk", flat=True):
            email_delivery_resend(delivery_id=delivery_id)
            count += 1
        self.message_user(request, f"{count} email(s) queued again.", messages.SUCCESS)


@admin.register(AccountErasure)
class AccountErasureAdmin(admin.ModelAdmin):
    """Erasures and their receipts. Progress, failed slices and their re-drive are the batch's
    (Job platform > Batches), linked from each erasure."""

    list_display = ["account_hash", "status", "queued_at", "started_at", "finished_at", "progress"]
    list_filter = ["status"]
    search_fields = ["account_hash"]
    readonly_fields = [field.name for field in AccountErasure._meta.fields] + ["erased"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # an erasure starts from its account's deletion request

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # a receipt is a record

    @admin.display(description="progress")
    def progress(self, erasure: AccountErasure) -> str:
        if erasure.batch_id is None:
            return "not started"
        url = reverse("admin:jobs_batch_change", args=[erasure.batch_id])
        return format_html('<a href="{}">{} %</a>', url, erasure.batch.progress)

    @admin.display(description="erased (rows per area)")
    def erased(self, erasure: AccountErasure) -> str:
        counts = [f"{count.area}: {count.rows}" for count in erasure.counts.all()]
        return ", ".join(counts) or "nothing yet"
