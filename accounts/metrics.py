"""Erasures and emails waiting for a message the broker lost (their periodic jobs send it
again): figures of /metrics (jobs/metrics.py)."""

from accounts.deletion import erasures_stalled
from accounts.emails import email_deliveries_lost
from jobs.metrics import stuck_jobs_register


def _erasures_stalled_count() -> int:
    return sum(erasures.count() for erasures in erasures_stalled())


stuck_jobs_register("erasures", _erasures_stalled_count)
stuck_jobs_register("email_deliveries", lambda: email_deliveries_lost().count())
