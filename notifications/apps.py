from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from media.services import upload_failed, upload_ready
        from notifications import checks, receivers  # noqa: F401 - checks registers them

        # Connected here, not in media: media announces, and knows nothing of who listens.
        upload_ready.connect(receivers.upload_ready_notify, dispatch_uid="notify-ready")
        upload_failed.connect(receivers.upload_failed_notify, dispatch_uid="notify-failed")
