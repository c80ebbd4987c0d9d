"""The uploads API: validate, call a service, answer from the status row."""

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import RequestTooLarge
from media import selectors, services
from media.images import VARIANTS_BY_NAME
from media.models import Upload

# Multipart framing (boundaries, part headers) around the file; generous on purpose.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class ImageFileSerializer(serializers.Serializer):
    """One image of an upload: its URL (fetched with the same credentials) and its size."""

    url = serializers.URLField()
    width = serializers.IntegerField(min_value=1)
    height = serializers.IntegerField(min_value=1)


class UploadSerializer(serializers.ModelSerializer):
    original = serializers.SerializerMethodField()
    variants = serializers.SerializerMethodField()

    class Meta:
        model = Upload
        fields = ["id", "status", "progress", "original", "variants", "error", "created_at"]
        # An answer, never read from a request: every field is always there.
        read_only_fields = fields
        extra_kwargs = {"progress": {"min_value": 0, "max_value": 100}}

    @extend_schema_field(ImageFileSerializer(allow_null=True, help_text="Set once ready."))
    def get_original(self, upload: Upload) -> dict | None:
        if upload.status != Upload.Status.READY:
            return None
        return {
            "url": self._url(upload, "original"),
            "width": upload.width,
            "height": upload.height,
        }

    @extend_schema_field(
        serializers.DictField(
            child=ImageFileSerializer(),
            help_text=f"The variants made so far, by name: {', '.join(VARIANTS_BY_NAME)}.",
        )
    )
    def get_variants(self, upload: Upload) -> dict:
        return {
            variant.name: {
                "url": self._url(upload, variant.name),
                "width": variant.width,
                "height": variant.height,
            }
            for variant in upload.variants.all()
        }

    def _url(self, upload: Upload, name: str) -> str:
        path = reverse("media:file", kwargs={"upload_id": upload.pk, "name": name})
        return self.context["request"].build_absolute_uri(path)


UploadRequest = inline_serializer("UploadFile", {"file": serializers.FileField()})


class UploadListCreateView(ListAPIView):
    serializer_class = UploadSerializer
    parser_classes = [MultiPartParser]
    rate_limited_methods = ("POST",)  # uploads per account and hour

    def get_queryset(self):
        return selectors.uploads_owned(user=self.request.user).prefetch_related("variants")

    def initial(self, request: Request, *args, **kwargs) -> None:
        # Refuse an oversized body from its declared length before anything reads it: the
        # session's CSRF check (in super().initial) would otherwise parse the whole body first.
        if request.method == "POST":
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0  # as Django reads a malformed length; the body is bounded anyway
            if declared > settings.UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD_BYTES:
                raise RequestTooLarge(services.upload_too_large_message())
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request={"multipart/form-data": UploadRequest}, responses={202: UploadSerializer}
    )
    def post(self, request: Request) -> Response:
        files = request.FILES.getlist("file")
        if len(files) != 1:
            message = "Attach exactly one image as the form field 'file'."
            raise exceptions.ValidationError({"file": [message]})
        file = files[0]
        try:
            upload = services.upload_create(owner=request.user, file=file)
        except services.UploadRejected as rejection:
            raise UploadRefused(
                str(rejection), status_code=rejection.status, retry_after=rejection.retry_after
            ) from rejection
        body = UploadSerializer(upload, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class UploadDetailView(APIView):
    @extend_schema(responses={200: UploadSerializer})
    def get(self, request: Request, upload_id) -> Response:
        upload = _owned(request, upload_id)
        return Response(UploadSerializer(upload, context={"request": request}).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, upload_id) -> Response:
        services.upload_delete(upload=_owned(request, upload_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _owned(request: Request, upload_id) -> Upload:
    upload = selectors.upload_owned(user=request.user, upload_id=upload_id)
    if upload is None:
        raise exceptions.NotFound("No such upload.")
    return upload


class UploadRefused(exceptions.APIException):
    default_code = "upload_refused"

    def __init__(self, detail: str, *, status_code: int, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        # DRF's exception handler sends `wait` as the Retry-After header, as for its Throttled.
        self.wait = retry_after
