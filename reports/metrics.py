"""Reports queued or rendering past their deadline (reports.sweep queues them again or fails
them): a figure of /metrics (jobs/metrics.py)."""

from jobs.metrics import stuck_jobs_register
from reports.services import reports_stalled

stuck_jobs_register("reports", lambda: reports_stalled().count())
