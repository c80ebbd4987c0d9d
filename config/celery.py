"""The Celery application. Workers, beat and Flower start from here: `celery -A config ...`."""

import os

# Connects what a worker does as it starts: its pool processes keep freed memory for their next
# task (only a worker sends the signal).
import jobs.memory  # noqa: F401
from jobs.brokers import PlatformCelery, work_queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Every task inherits the job platform's guarantees (jobs/base.py); delays work alike on every
# broker (jobs/brokers.py).
app = PlatformCelery("config", task_cls="jobs.base:PlatformTask")
# Every CELERY_* setting in config/settings.py configures the app, so the environment drives it.
app.config_from_object("django.conf:settings", namespace="CELERY")
# Per broker: quorum queues on RabbitMQ (jobs/brokers.py).
app.conf.task_queues = work_queues()
# Workers publish their liveness and queues to Redis for /readyz (jobs/heartbeats.py); named, not
# imported, so only a worker loads it.
app.steps["consumer"].add("jobs.heartbeats:WorkerHeartbeat")
app.autodiscover_tasks()
