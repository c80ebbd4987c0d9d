"""Push deliveries whose message was lost (notifications.sweep queues them again): a figure of
/metrics (jobs/metrics.py)."""

from jobs.metrics import stuck_jobs_register
from notifications.services import push_deliveries_lost

stuck_jobs_register("push_deliveries", lambda: push_deliveries_lost().count())
