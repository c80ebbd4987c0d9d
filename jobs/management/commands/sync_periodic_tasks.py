"""Write the periodic jobs declared in code into django-celery-beat's schedule.

Run after every `migrate` (scripts/run.sh, the compose file's `migrate` service), before beat
starts, so a deploy's schedule is the deployed code's. Safe to run any number of times.
"""

from django.core.management.base import BaseCommand

from jobs.periodic import periodic_jobs_sync


class Command(BaseCommand):
    help = "Sync the periodic jobs registered in code into django-celery-beat's tables."

    def handle(self, *args, **options) -> None:
        report = periodic_jobs_sync()
        self.stdout.write(
            f"periodic tasks: {report.created} created, {report.updated} updated, "
            f"{report.unchanged} unchanged, {report.disabled} disabled"
        )
