"""The uploads page, and serving upload files to their owner only."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from config.files import private_file_response
from media import selectors, services
from media.images import VARIANTS_BY_NAME

SERVABLE = {"original", *VARIANTS_BY_NAME}
# Whole rows whether the grid shows two cards a row (phones) or three (wider screens).
UPLOADS_PER_PAGE = 24


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def uploads_page(request: HttpRequest) -> HttpResponse:
    """The user's uploads, rendered in full so the list needs no JavaScript; the page's script
    (static/js/uploads.js) uploads and deletes through the API and polls each upload's status."""
    uploads = selectors.uploads_owned(user=request.user)
    page = Paginator(uploads, UPLOADS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "max_bytes": settings.UPLOAD_MAX_BYTES,
        "max_megabytes": settings.UPLOAD_MAX_BYTES // (1024 * 1024),
        "too_large": services.upload_too_large_message(),
    }
    return render(request, "media/uploads.html", context)


class UploadFileView(APIView):
    """An upload's file, for its owner (session or bearer token) and the admin's staff only.

    URLs carry the upload's random id, but an unguessable URL is not access control: a link
    leaks through history, logs and referrers, so every request is checked.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("name", location=OpenApiParameter.PATH, enum=sorted(SERVABLE))
        ],
        responses={(200, "image/*"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, upload_id, name: str) -> HttpResponse:
        if name not in SERVABLE:
            raise Http404
        if not selectors.upload_files_visible(user=request.user, upload_id=upload_id):
            raise Http404  # someone else's and missing look the same
        path = services.upload_file_path(upload_id, name)
        if path is None:
            raise Http404
        content_type = "image/png" if path.suffix == ".png" else "image/jpeg"
        return private_file_response(path, content_type=content_type)
