"""Uploads unfinished past their deadline (the uploads sweep resumes or fails them): a figure of
/metrics (jobs/metrics.py)."""

from jobs.metrics import stuck_jobs_register
from media.services import uploads_stalled

stuck_jobs_register("uploads", lambda: uploads_stalled().count())
