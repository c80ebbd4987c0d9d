"""Reads for reports: what a person did in a period, and which reports they may see."""

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from django.db.models import QuerySet, Sum

from accounts.models import EmailDelivery
from media.models import Upload
from reports.models import Report
from reports.periods import Period

# Uploads listed one by one in a report; past this many, the table says how many more there
# were. A month of a busy account would otherwise be a hundred pages nobody reads, and a render
# whose time and memory the account, not the service, decides.
UPLOADS_LISTED = 300


@dataclass(frozen=True)
class UploadLine:
    name: str
    bytes: int
    status: str
    day: date


@dataclass(frozen=True)
class Activity:
    uploads: list[UploadLine]
    uploads_count: int
    uploads_bytes: int
    uploads_per_day: dict[date, int]
    emails_count: int
    days: list[date]

    @property
    def uploads_unlisted(self) -> int:
        return self.uploads_count - len(self.uploads)


def reports_owned(*, user) -> QuerySet[Report]:
    return Report.objects.filter(user=user)


def report_owned(*, user, report_id: UUID | str) -> Report | None:
    """`user`'s report with this id; None for someone else's as for none at all, so that an
    answer reveals nothing about other people's reports."""
    return reports_owned(user=user).filter(pk=report_id).first()


def activity_in(*, user_id: int, period: Period) -> Activity:
    """The person's activity from the period's start to its end: their uploads, and the emails
    sent to them."""
    zone = ZoneInfo(period.timezone)
    uploads = Upload.objects.filter(
        owner_id=user_id, created_at__gte=period.start, created_at__lt=period.end
    )
    totals = uploads.aggregate(total=Sum("source_bytes"))
    per_day = Counter(
        created.astimezone(zone).date()
        for created in uploads.values_list("created_at", flat=True).iterator()
    )
    listed = [
        UploadLine(
            name=upload.original_name or "(no name)",
            bytes=upload.source_bytes,
            status=upload.status,
            day=upload.created_at.astimezone(zone).date(),
        )
        for upload in uploads.order_by("created_at").only(
            "original_name", "source_bytes", "status", "created_at"
        )[:UPLOADS_LISTED]
    ]
    emails = EmailDelivery.objects.filter(
        user_id=user_id,
        status=EmailDelivery.Status.SENT,
        sent_at__gte=period.start,
        sent_at__lt=period.end,
    ).count()
    days = []
    day = period.first_day
    while day <= period.last_day:
        days.append(day)
        day += timedelta(days=1)
    return Activity(
        uploads=listed,
        uploads_count=sum(per_day.values()),
        uploads_bytes=totals["total"] or 0,
        uploads_per_day=dict(per_day),
        emails_count=emails,
        days=days,
    )
