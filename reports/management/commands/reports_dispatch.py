"""Run the report dispatch beat runs, now or for a given moment (to back-fill a period).

    python manage.py reports_dispatch [--at 2026-03-02T00:05:00+01:00]

Periods that ended within REPORT_CATCH_UP_HOURS before that moment, and have not been
dispatched, are; so are those of them that beat's dispatch skipped for having seen them too
late. Running it again, or while beat runs it, dispatches nothing twice.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from reports.services import reports_dispatch


class Command(BaseCommand):
    help = "Dispatch the reports of the periods that ended before a moment (default: now)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--at", help="ISO 8601 moment, with its UTC offset")

    def handle(self, *args, at: str | None = None, **options) -> None:
        moment = None
        if at is not None:
            try:
                moment = datetime.fromisoformat(at)
            except ValueError as error:
                raise CommandError(f"--at: not an ISO 8601 moment: {at!r}") from error
            if moment.tzinfo is None:
                raise CommandError("--at: give the UTC offset (2026-03-02T00:05:00+01:00, or Z)")
            if moment > timezone.now():
                # It would dispatch periods that have not ended, with part of their data, and
                # the period's real end would then find it dispatched.
                raise CommandError("--at: a moment in the future dispatches unfinished periods")
            if moment < timezone.now() - timedelta(days=settings.REPORT_RETENTION_DAYS):
                # Its reports, and the records that they were sent, have been pruned: they
                # would be made and emailed again.
                raise CommandError(
                    f"--at: reports older than REPORT_RETENTION_DAYS "
                    f"({settings.REPORT_RETENTION_DAYS}) are pruned; they would be sent again"
                )
        started = reports_dispatch(at=moment, back_fill=moment is not None)
        self.stdout.write(f"{started} period(s) dispatched")
