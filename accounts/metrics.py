"""Erasures waiting for a message the broker lost (the periodic job sends it again): a figure of
/metrics (jobs/metrics.py)."""

from accounts.deletion import erasures_stalled
from jobs.metrics import stuck_jobs_register


def _erasures_stalled_count() -> int:
    return sum(erasures.count() for erasures in erasures_stalled())


stuck_jobs_register("erasures", _erasures_stalled_count)
