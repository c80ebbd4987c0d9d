"""Workers keep their database connections between tasks, as Django keeps a web process's
between requests.

Celery's Django fixup closes every database connection before and after each task unless
CELERY_DB_REUSE_MAX is set: each task that touches the database opens a new connection, which on
PostgreSQL is a new server process (several milliseconds, and a fork on the server, per task).
Instead, around each task, the worker applies Django's own policy, `close_old_connections`: a
connection older than CONN_MAX_AGE, or one that saw an error and no longer answers, is closed;
with CONN_HEALTH_CHECKS, the next query first checks that the server still answers (a database
restarted between two tasks costs a reconnect, not a failed task). Celery still closes them
every CELERY_DB_REUSE_MAX tasks.
"""

from celery import signals
from django.db import close_old_connections


@signals.task_prerun.connect
@signals.task_postrun.connect
def _old_connections_closed(**_) -> None:
    close_old_connections()
