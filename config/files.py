"""Sending a private file (an upload's image, a report's PDF) to the one person allowed it."""

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse


def private_file_response(path: Path, *, content_type: str, filename: str = "") -> HttpResponse:
    """The file under MEDIA_ROOT, after the caller decided who may have it. With
    MEDIA_ACCEL_REDIRECT_PREFIX set, nginx sends the bytes from an `internal` location
    (X-Accel-Redirect): Django only decides, nginx streams. With object storage, answer with a
    short-lived signed URL instead. `filename`: offered as a download under that name."""
    if settings.MEDIA_ACCEL_REDIRECT_PREFIX:
        relative = path.relative_to(settings.MEDIA_ROOT).as_posix()
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = (
            settings.MEDIA_ACCEL_REDIRECT_PREFIX.rstrip("/") + "/" + relative
        )
        if filename:
            response["Content-Disposition"] = f'attachment; filename="{filename}"'
    else:
        try:
            opened = path.open("rb")
        except FileNotFoundError:
            raise Http404 from None  # deleted since the caller looked (pruned, erased)
        response = FileResponse(
            opened, content_type=content_type, as_attachment=bool(filename), filename=filename
        )
    # Private to this person: shared caches must not keep it.
    response["Cache-Control"] = "private, max-age=3600"
    return response
