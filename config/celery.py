"""The Celery application. Workers, beat and Flower start from here: `celery -A config ...`."""

import os

from celery import Celery
from django.conf import settings
from kombu import Queue

# Connects what a worker does as it starts: its pool processes keep freed memory for their next
# task (only a worker sends the signal).
import jobs.memory  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Every task inherits the job platform's guarantees (jobs/base.py).
app = Celery("config", task_cls="jobs.base:PlatformTask")
# Every CELERY_* setting in config/settings.py configures the app, so the environment drives it.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name, routing_key=name) for name in settings.JOB_QUEUES]
# Workers publish their liveness and queues to Redis for /readyz (jobs/heartbeats.py); named, not
# imported, so only a worker loads it.
app.steps["consumer"].add("jobs.heartbeats:WorkerHeartbeat")
app.autodiscover_tasks()
