"""What an account's erasure erases of the reports app (the registry: accounts/erasure.py)."""

from accounts.erasure import ErasureArea, erasure_area_register
from reports.models import Report, ReportSchedule
from reports.services import report_files_delete

erasure_area_register(
    ErasureArea(
        name="reports.ReportSchedule",
        model=ReportSchedule,
        rows=lambda user: ReportSchedule.objects.filter(user=user),
    )
)


def _report_files_erase(report_ids: list) -> None:
    for report_id in report_ids:
        report_files_delete(report_id)


# A report's rendering names it by `report_id`; its PDF is its file.
erasure_area_register(
    ErasureArea(
        name="reports.Report",
        model=Report,
        rows=lambda user: Report.objects.filter(user=user),
        task_argument="report_id",
        files_erase=_report_files_erase,
    )
)
