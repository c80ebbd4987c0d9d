"""The reports page: the schedule, a report on demand, and the reports with live progress."""

from datetime import date

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from reports import selectors, services
from reports.api import report_pdf_response
from reports.models import Frequency

REPORTS_PER_PAGE = 20


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def reports_page(request: HttpRequest) -> HttpResponse:
    """Rendered in full, so that it works without JavaScript; the page's script
    (static/js/reports.js) only polls the reports still being made and shows their progress."""
    if request.method == "POST":
        try:
            if request.POST.get("action") == "request":
                services.report_request(
                    user=request.user,
                    frequency=request.POST.get("frequency", ""),
                    day=_day_given(request.POST.get("period", "")),
                )
            else:
                services.report_schedule_set(
                    user=request.user,
                    frequency=request.POST.get("frequency", ""),
                    timezone_name=request.POST.get("timezone", ""),
                )
        except services.TooManyReportRequests as refusal:
            response = _page(request, problem=str(refusal), status=429)
            response["Retry-After"] = str(refusal.wait_seconds)
            return response
        except services.ReportRefused as refusal:
            return _page(request, problem=str(refusal), status=400)
        return redirect("reports:page")
    return _page(request)


def _day_given(value: str) -> date | None:
    """The form's optional day (a date input sends YYYY-MM-DD, or nothing)."""
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise services.ReportRefused("Give the day as YYYY-MM-DD.") from None


def _page(request: HttpRequest, *, problem: str = "", status: int = 200) -> HttpResponse:
    reports = selectors.reports_owned(user=request.user)
    context = {
        "schedule": services.report_schedule_of(user=request.user),
        "frequencies": Frequency.choices,
        "page": Paginator(reports, REPORTS_PER_PAGE).get_page(request.GET.get("page")),
        "problem": problem,
    }
    return render(request, "reports/reports.html", context, status=status)


@login_required
@require_http_methods(["GET", "HEAD"])
def report_download(request: HttpRequest, report_id) -> HttpResponse:
    """The email's link to a report's PDF: after a login if need be, for its owner only."""
    return report_pdf_response(user=request.user, report_id=report_id)
