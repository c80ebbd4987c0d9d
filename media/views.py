"""Serving upload files to their owner only."""

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from media import services
from media.images import VARIANTS_BY_NAME
from media.models import Upload

SERVABLE = {"original", *VARIANTS_BY_NAME}


class UploadFileView(APIView):
    """An upload's file, for its owner (session or bearer token) and nobody else.

    URLs carry the upload's random id, but an unguessable URL is not access control: a link
    leaks through history, logs and referrers, so every request is checked. In production set
    MEDIA_ACCEL_REDIRECT_PREFIX and let nginx send the bytes from an `internal` location
    (X-Accel-Redirect): Django only decides, nginx streams. With object storage, answer with a
    short-lived signed URL instead.
    """

    @extend_schema(responses={(200, "image/*"): OpenApiTypes.BINARY})
    def get(self, request: Request, upload_id, name: str) -> HttpResponse:
        if name not in SERVABLE:
            raise Http404
        if not Upload.objects.filter(pk=upload_id, owner=request.user).exists():
            raise Http404  # someone else's and missing look the same
        path = services.upload_file_path(upload_id, name)
        if path is None:
            raise Http404
        content_type = "image/png" if path.suffix == ".png" else "image/jpeg"
        if settings.MEDIA_ACCEL_REDIRECT_PREFIX:
            relative = path.relative_to(settings.MEDIA_ROOT).as_posix()
            response = HttpResponse(content_type=content_type)
            response["X-Accel-Redirect"] = (
                settings.MEDIA_ACCEL_REDIRECT_PREFIX.rstrip("/") + "/" + relative
            )
        else:
            response = FileResponse(path.open("rb"), content_type=content_type)
        # Private to this user: shared caches must not keep it.
        response["Cache-Control"] = "private, max-age=3600"
        return response
