"""The reports API: a person's schedule, their reports, and each report's PDF."""

from django.http import Http404, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.files import private_file_response
from reports import selectors, services
from reports.models import REPORT_FREQUENCIES, Frequency, Report
from reports.periods import timezone_names


class ScheduleSerializer(serializers.Serializer):
    frequency = serializers.ChoiceField(choices=Frequency.values)
    timezone = serializers.ChoiceField(
        choices=timezone_names(), help_text="An IANA name: Europe/Paris."
    )


class ReportSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "status",
            "progress",
            "frequency",
            "timezone",
            "period_start",
            "period_end",
            "on_demand",
            "download_url",
            "error",
            "created_at",
        ]
        read_only_fields = fields
        extra_kwargs = {"progress": {"min_value": 0, "max_value": 100}}

    @extend_schema_field(serializers.URLField(allow_null=True, help_text="Set once ready."))
    def get_download_url(self, report: Report) -> str | None:
        if report.status != Report.Status.READY:
            return None
        path = reverse("reports-api:api-report-download", kwargs={"report_id": report.pk})
        return self.context["request"].build_absolute_uri(path)


class ReportRequestSerializer(serializers.Serializer):
    frequency = serializers.ChoiceField(
        choices=REPORT_FREQUENCIES,
        default=Frequency.MONTHLY,
        help_text="The length of the period the report covers.",
    )
    period = serializers.DateField(
        required=False,
        help_text="A day in the period, in your schedule's timezone; by default the last such "
        "period that ended. It must have ended, and not before you signed up.",
    )


class ScheduleView(APIView):
    @extend_schema(responses={200: ScheduleSerializer})
    def get(self, request: Request) -> Response:
        schedule = services.report_schedule_of(user=request.user)
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(request=ScheduleSerializer, responses={200: ScheduleSerializer})
    def put(self, request: Request) -> Response:
        given = ScheduleSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        schedule = services.report_schedule_set(
            user=request.user,
            frequency=given.validated_data["frequency"],
            timezone_name=given.validated_data["timezone"],
        )
        return Response(ScheduleSerializer(schedule).data)


class ReportListCreateView(ListAPIView):
    serializer_class = ReportSerializer
    rate_limited_methods = ("POST",)  # new reports per account and day

    def get_queryset(self):
        return selectors.reports_owned(user=self.request.user)

    @extend_schema(request=ReportRequestSerializer, responses={202: ReportSerializer})
    def post(self, request: Request) -> Response:
        given = ReportRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            report, _ = services.report_request(
                user=request.user,
                frequency=given.validated_data["frequency"],
                day=given.validated_data.get("period"),
            )
        except services.TooManyReportRequests as refusal:
            raise exceptions.Throttled(wait=refusal.wait_seconds, detail=str(refusal)) from None
        except services.ReportRefused as refusal:
            raise exceptions.ValidationError({"period": [str(refusal)]}) from None
        body = ReportSerializer(report, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class ReportDetailView(APIView):
    @extend_schema(responses={200: ReportSerializer})
    def get(self, request: Request, report_id) -> Response:
        report = selectors.report_owned(user=request.user, report_id=report_id)
        if report is None:
            raise exceptions.NotFound("No such report.")
        return Response(ReportSerializer(report, context={"request": request}).data)


class ReportDownloadView(APIView):
    """A ready report's PDF, for its owner only (session or bearer token): someone else's report
    and a missing one look the same."""

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    def get(self, request: Request, report_id) -> HttpResponse:
        return report_pdf_response(user=request.user, report_id=report_id)


def report_pdf_response(*, user, report_id) -> HttpResponse:
    """The report's PDF if it is `user`'s and ready; Http404 otherwise, the same for a report
    of someone else's as for none."""
    report = selectors.report_owned(user=user, report_id=report_id)
    if report is None or report.status != Report.Status.READY:
        raise Http404
    path = services.report_file(report.pk)
    if not path.is_file():
        raise Http404
    # The period's first day where the person lives, as the page and the email name it.
    name = f"report-{report.frequency}-{report.period.first_day:%Y-%m-%d}.pdf"
    return private_file_response(path, content_type="application/pdf", filename=name)
