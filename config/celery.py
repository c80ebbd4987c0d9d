"""The Celery application. Workers, beat and Flower start from here: `celery -A config ...`."""

import logging.config
import os

from celery import signals

# Connect what a worker does as it starts and around each task (only a worker sends those
# signals): its pool processes keep freed memory for their next task, and their database
# connections under Django's CONN_MAX_AGE; a task runs holding its message's request id, which
# every process carries into the messages it publishes.
import jobs.connections
import jobs.memory
import jobs.request_ids  # noqa: F401
from jobs.brokers import PlatformCelery, broker_is_rabbitmq, work_queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Every task inherits the job platform's guarantees (jobs/base.py); delays work alike on every
# broker (jobs/brokers.py).
app = PlatformCelery("config", task_cls="jobs.base:PlatformTask")
# Every CELERY_* setting in config/settings.py configures the app, so the environment drives it.
app.config_from_object("django.conf:settings", namespace="CELERY")
# Per broker: quorum queues on RabbitMQ (jobs/brokers.py).
app.conf.task_queues = work_queues()
# RabbitMQ hands a live worker's unacknowledged messages to other workers as soon as its
# connection drops (a network blip, a broker restart, missed heartbeats) while its pool keeps
# running them: the same task would run twice at once. The worker cancels those runs instead;
# being late-acked, they run again from their redelivery. Not on Redis: a live worker keeps its
# deliveries there (jobs/recovery.py), and a cancelled run would wait for the visibility timeout.
app.conf.worker_cancel_long_running_tasks_on_connection_loss = broker_is_rabbitmq()
# Workers publish their liveness and queues to Redis for /readyz (jobs/heartbeats.py); named, not
# imported, so only a worker loads it.
app.steps["consumer"].add("jobs.heartbeats:WorkerHeartbeat")
app.autodiscover_tasks()


@signals.setup_logging.connect
def _logging_as_django_does(**options) -> None:
    # Workers and beat log through settings.LOGGING, like the web: the same format (LOG_FORMAT),
    # level (LOG_LEVEL, not --loglevel) and request ids, where Celery would install its own.
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    # As Celery does when it sets logging up itself: a print() in a task is a log line too.
    if app.conf.worker_redirect_stdouts:
        app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)
