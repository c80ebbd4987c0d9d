from django.apps import AppConfig


class MediaConfig(AppConfig):
    name = "media"
    verbose_name = "Media"

    def ready(self) -> None:
        from django.conf import settings
        from PIL import Image

        from media import checks  # noqa: F401 - registers the system checks

        # Pillow's own guard against decompression bombs, at our limit. Below twice its limit it
        # only warns; image_header_read turns the warning into a refusal.
        Image.MAX_IMAGE_PIXELS = settings.UPLOAD_MAX_PIXELS
