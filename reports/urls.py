from django.urls import path

from reports import api, views

app_name = "reports"

api_urlpatterns = [
    path("reports/schedule", api.ScheduleView.as_view(), name="api-schedule"),
    path("reports", api.ReportListCreateView.as_view(), name="api-reports"),
    path("reports/<uuid:report_id>", api.ReportDetailView.as_view(), name="api-report"),
    path(
        "reports/<uuid:report_id>/download",
        api.ReportDownloadView.as_view(),
        name="api-report-download",
    ),
]

urlpatterns = [
    path("reports", views.reports_page, name="page"),
    # The email's link, for a browser: its session, or the login page first.
    path("reports/<uuid:report_id>/download", views.report_download, name="download"),
]
