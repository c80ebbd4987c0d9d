"""The one settings module. Every value comes from the environment (see .env.example).

Defaults are the embedded ones a newcomer gets from `make run`: SQLite under var/, a local
Redis, emails written to files. Production sets DEBUG=0 and real URLs; `check --deploy` passes.
"""

import ipaddress
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state of a development checkout; git-ignored

env = environ.Env()
# A .env file is a convenience for development; real deployments pass real environment variables,
# which win over the file.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

# Development may run without a secret; production must never fall back to a known one.
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
SITE_URL = env.str("SITE_URL", default="http://localhost:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[SITE_URL])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files, served from our static files: the docs page loads nothing from a CDN.
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "jobs",
    "accounts",
    "media",
    "reports",
    "notifications",
]

MIDDLEWARE = [
    # First, so that every line a request logs, and every response, carries its id.
    "jobs.request_ids.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "notifications.context_processors.unread_notifications",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite cannot create the folder its file lives in; var/ is git-ignored, so a fresh clone
    # lacks it.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        # Web and workers write at once. WAL lets readers run beside the one writer; the busy
        # timeout makes a writer wait for the lock instead of failing with "database is locked";
        # IMMEDIATE takes the write lock at BEGIN, so a read-then-write transaction cannot
        # deadlock against another one upgrading its lock at the same time.
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Workers run in other processes and must see the test database, so it is a file, not
    # SQLite's default in-memory test database.
    DATABASES["default"]["TEST"] = {
        "NAME": env.str("SQLITE_TEST_DATABASE", default=str(VAR_DIR / "test-db.sqlite3"))
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A worker whose host drops off the network mid-transaction leaves its session open on the
    # server, holding its row locks, until TCP gives up on the connection (hours): another
    # worker that runs the same job again waits on them all that time. The server ends a session
    # left idle inside a transaction this long, which frees the locks; no task of ours leaves a
    # transaction idle for more than moments. 0 sends nothing: behind a pooler that refuses
    # startup options (PgBouncer), set it on the role instead (docs/jobs.md).
    idle_seconds = env.int("DATABASE_IDLE_IN_TRANSACTION_SECONDS", default=60)
    if not 0 <= idle_seconds <= 86_400:
        raise ImproperlyConfigured("DATABASE_IDLE_IN_TRANSACTION_SECONDS: 0 (off) to 86400")
    if idle_seconds:
        database_options = DATABASES["default"].setdefault("OPTIONS", {})
        # First, so that an `options` the URL carries has the last word.
        timeout = f"-c idle_in_transaction_session_timeout={idle_seconds * 1000}"
        database_options["options"] = f"{timeout} {database_options.get('options', '')}".strip()
# Reuse connections across requests and, in workers, across tasks (jobs/connections.py); the
# health check drops ones the server closed.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Files ------------------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(VAR_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
# In development, serve static files straight from the apps without collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
MEDIA_URL = "media/"
# User files live outside the code: never inside the `media` package.
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(VAR_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Email --------------------------------------------------------------------------------

# The default writes each email to a file under var/emails so a newcomer can read it.
EMAIL_URL = env.str("EMAIL_URL", default=f"filemail://{VAR_DIR / 'emails'}")
if EMAIL_URL.startswith("filemail://"):
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = EMAIL_URL.removeprefix("filemail://")
else:
    _email_config = env.email_url_config(EMAIL_URL)
    if _email_config["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend":
        # Django's SMTP backend, which also tells a failure that may have delivered the message
        # (the reply lost after the server had it) from one that did not: only the second is
        # retried.
        _email_config["EMAIL_BACKEND"] = "accounts.smtp.EmailBackend"
    globals().update(_email_config)
# Bounded so a hung SMTP server fails the task (and it retries) instead of holding a worker.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Celery SaaS <no-reply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Redis and Celery -----------------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)

# Redis redelivers a message that was not acknowledged within this many seconds. With late
# acknowledgement that is how a task lost with a killed worker comes back; it must be longer
# than the longest task and than any countdown/ETA the code schedules, or messages run twice.
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
# The same value for the broker and for the result backend: Celery reads the two option sets
# separately, and equal values mean no part of the system assumes another redelivery window.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # Bounded connects: a request that publishes never hangs on a dead broker (Redis).
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    # RabbitMQ: publisher confirms, so a publish returns only once the broker stored the message
    # (in its quorum queue, on disk); without them a publish "succeeds" into a dying broker.
    "confirm_publish": True,
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
# On Redis, each worker holds a lease and records the messages it takes, so the tasks of a worker
# killed whole run again within seconds; the visibility timeout remains for messages no worker
# recorded (jobs/recovery.py). On other brokers this is Celery's own consumer.
CELERY_WORKER_CONSUMER = "jobs.recovery:LeasedConsumer"

# RabbitMQ: AMQP heartbeats every 10 s, so a worker whose host vanished without closing its
# connection (a cut cable, a frozen VM) is dropped by the broker within about 20 s and its
# unacknowledged messages go to other workers; a process that dies closes its connection, and
# its messages come back at once. (Redis has no heartbeats: jobs/recovery.py does this there.)
CELERY_BROKER_HEARTBEAT = env.int("CELERY_BROKER_HEARTBEAT", default=10)
# RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged longer than the
# server's `consumer_timeout` (30 min by default), and the message runs again elsewhere. With late
# acks a delivery is held while its task runs and while it waits, prefetched, for a pool process
# running another task: up to two hard time limits. A system check compares this value, which
# must be the server's (rabbitmq.conf, set in the compose file), with the time limits.
RABBITMQ_CONSUMER_TIMEOUT_SECONDS = env.int("RABBITMQ_CONSUMER_TIMEOUT_SECONDS", default=1800)

# JSON only: pickle would let anyone who can write to the broker run code in the workers.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_ENABLE_UTC = True

# One queue per kind of work, so each can get its own workers (see Procfile and compose file).
JOB_QUEUES = ["default", "emails", "media", "reports", "notifications", "maintenance"]
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_CREATE_MISSING_QUEUES = False  # a typo in a queue name fails loudly, not silently
# Routing by task name (names are stable: `<app>.<verb_noun>`), so moving work to another queue
# is a settings change, not a code change. Order matters: the first matching glob wins. A batch's
# chunks go to the queue its kind's handler names (jobs/batches.py).
CELERY_TASK_ROUTES = [
    "jobs.batches.batch_chunk_route",
    {
        "*.maintenance_*": {"queue": "maintenance"},
        "*.send_*email*": {"queue": "emails"},
        "media.*": {"queue": "media"},
        "reports.*": {"queue": "reports"},
        "notifications.*": {"queue": "notifications"},
    },
]

# Prefetch one at a time: our tasks are long compared with a network round trip, and a worker
# that hoards messages starves its idle siblings (and, with late acks, holds them hostage).
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
# Recycle pool processes: Pillow and WeasyPrint fragment memory over time.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_WORKER_MAX_TASKS_PER_CHILD", default=500)
# Celery closes a worker's database connections around every task unless this is set; the worker
# keeps them as a web process does, under CONN_MAX_AGE (jobs/connections.py), and Celery closes
# them every this many tasks besides.
CELERY_DB_REUSE_MAX = 1000
# ...and replace a child as soon as it grows past this many KiB (checked after each task).
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=512_000)
# No task may hold a worker slot forever: the soft limit raises inside the task so it can clean
# up; the hard limit kills the child if the soft one was ignored. Tasks set tighter ones.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=360)
# Events feed Flower's live view and the task metrics.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# A warm shutdown (SIGTERM) first lets running tasks finish for this many seconds, then
# cancels them; with late acks the cancelled ones go back to the queue instead of being lost.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", default=20)
# No results by default: user-visible progress lives in status rows, never in the result
# backend. This also keeps publishing independent of the result store: with results on, the
# Redis backend subscribes to every published task's result channel, so a web process whose
# Redis is down blocks ~20 s on each publish before giving up. Tasks whose results a canvas
# needs (a chord's header) set ignore_result=False themselves.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 24 * 3600
# Keep retrying the broker at start-up instead of crashing a worker that came up first.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "jobs.beat:HeartbeatDatabaseScheduler"
# Beat wakes at least this often, so its heartbeat stays fresh even with nothing to send.
CELERY_BEAT_MAX_LOOP_INTERVAL = 5
# /readyz calls beat stale when its heartbeat is older than this many seconds.
BEAT_HEARTBEAT_MAX_AGE = env.int("BEAT_HEARTBEAT_MAX_AGE", default=60)
# Beat sends a canary task to every queue this often (jobs/canary.py), and /readyz fails when a
# queue's last one came back longer ago than the max age: work sent to that queue is not being
# done, whether no worker takes from it or a backlog holds it up. Five minutes: ten canaries
# missed, and longer than a user should wait for an email or a thumbnail.
JOBS_CANARY_INTERVAL_SECONDS = env.float("JOBS_CANARY_INTERVAL_SECONDS", default=30.0)
JOBS_CANARY_MAX_AGE_SECONDS = env.float("JOBS_CANARY_MAX_AGE_SECONDS", default=300.0)
# Each /readyz check gives up after this many seconds, so the endpoint itself never hangs.
READINESS_CHECK_TIMEOUT = env.float("READINESS_CHECK_TIMEOUT", default=2.0)
# A web process reuses each /readyz check's result for this many seconds, so any number of pollers
# cost one check per period; 2 s is below any probe interval, so the next probe sees a change.
READINESS_CACHE_SECONDS = env.float("READINESS_CACHE_SECONDS", default=2.0)
# Where operators reach Flower (the task-level view, behind FLOWER_BASIC_AUTH); the operator's
# page links to it. The default is where `make run` and the compose file publish it.
FLOWER_URL = env.str("FLOWER_URL", default="http://localhost:5555/")
# /metrics (jobs/metrics.py) answers only `Authorization: Bearer <this>` when it is set. Its
# figures name queues, tasks and worker hosts: not for the public.
METRICS_BEARER_TOKEN = env.str("METRICS_BEARER_TOKEN", default="")
# A scrape waits this long at most for the broker's figures (queue lengths and ages); a broker
# that hangs shows as jobs_broker_up 0, and the rest of the figures still come. Below
# Prometheus's default scrape timeout (10 s) by far.
METRICS_BROKER_TIMEOUT = env.float("METRICS_BROKER_TIMEOUT", default=1.0)

# --- Job platform (jobs/) -------------------------------------------------------------------

# Retry defaults for tasks that declare a retry policy without their own numbers: waits grow as
# base * 2^attempt with equal jitter, never beyond the cap. The cap stays far below the
# visibility timeout (a system check enforces it) so a retry countdown never outlives it.
JOBS_RETRY_BASE_SECONDS = env.float("JOBS_RETRY_BASE_SECONDS", default=2.0)
JOBS_RETRY_MAX_SECONDS = env.float("JOBS_RETRY_MAX_SECONDS", default=600.0)
JOBS_MAX_RETRIES = env.int("JOBS_MAX_RETRIES", default=5)
# A message whose task killed its worker this many times is dead-lettered instead of redelivered.
JOBS_MAX_DELIVERIES = env.int("JOBS_MAX_DELIVERIES", default=3)
# Seconds a request may spend publishing after commit before it gives up and leaves the message
# to the outbox relay. Small: the user is waiting; the relay is not.
JOBS_PUBLISH_TIMEOUT_SECONDS = env.float("JOBS_PUBLISH_TIMEOUT_SECONDS", default=0.5)
# After a failed publish, requests skip publishing for this long (the relay catches up), so a
# dead broker costs one timeout, not one per request.
JOBS_PUBLISH_BACKOFF_SECONDS = env.float("JOBS_PUBLISH_BACKOFF_SECONDS", default=5.0)
# How often the relay re-publishes outbox rows, and how long published rows are kept.
JOBS_OUTBOX_RELAY_SECONDS = env.float("JOBS_OUTBOX_RELAY_SECONDS", default=10.0)
JOBS_OUTBOX_RETENTION_DAYS = env.int("JOBS_OUTBOX_RETENTION_DAYS", default=7)
# Delays up to this many seconds become broker countdowns; longer ones wait in the database
# and are released by the relay, because Redis would redeliver an ETA message older than the
# visibility timeout again and again (celery/celery#4400).
JOBS_MAX_BROKER_COUNTDOWN_SECONDS = env.float(
    "JOBS_MAX_BROKER_COUNTDOWN_SECONDS", default=CELERY_VISIBILITY_TIMEOUT / 2
)
# A row whose publish fails for a reason of its own (its queue is gone, its arguments do not
# serialize) is retried with the retry backoff, so it never holds up the rows behind it, and
# after this many attempts becomes a dead letter. 8 attempts span ~8 minutes with the defaults:
# long enough to ride out a deploy that renames a queue, short enough that a person hears of it.
JOBS_OUTBOX_MAX_PUBLISH_ATTEMPTS = env.int("JOBS_OUTBOX_MAX_PUBLISH_ATTEMPTS", default=8)
# Idempotency keys are kept this long, and dead letters older than this are no longer re-driven
# (their effects' keys are gone): a month to notice and act on a failure, well beyond the
# outbox's retention and any redelivery.
JOBS_IDEMPOTENCY_KEY_RETENTION_DAYS = env.int("JOBS_IDEMPOTENCY_KEY_RETENTION_DAYS", default=30)
# Items per chunk of a batch (jobs/batches.py), one message each. A chunk's fixed cost (its
# message, its run, the transactions that count it) was 10-25 ms in bench/batches.py: at 500 items
# that is ~30 us an item, a few percent of any item that does a millisecond of work, while a chunk
# of items taking up to 20 ms each still ends within 10 s, far inside its 60 s soft limit. Smaller
# chunks pay the cost every few items (no-ops: 8,000 items/s at 100, 35,000 at 500); larger ones
# gain only on no-ops, spread less across workers and run more items again when one fails. A kind
# whose items take longer passes its own chunk_size to batch_start.
JOBS_BATCH_CHUNK_SIZE = env.int("JOBS_BATCH_CHUNK_SIZE", default=500)
# Global limits for calls to outside providers, shared by every worker: "20/s", "600/m".
JOBS_RATE_LIMITS = env.dict(
    "JOBS_RATE_LIMITS",
    default={"smtp": "20/s", "webpush": "50/s", "fcm": "50/s", "apns": "50/s"},
)
# Only one beat sends periodic tasks: every beat competes for this Redis lock, and only its holder
# schedules (jobs/beat.py). The holder renews it on every tick, at least every 5 s
# (CELERY_BEAT_MAX_LOOP_INTERVAL); a holder killed without releasing it is replaced once it
# expires. 30 s: a beat that is slow but alive misses six renewals before it loses the lock, and
# periodic work pauses for at most half a minute after a crash.
JOBS_BEAT_LOCK_TTL_SECONDS = env.float("JOBS_BEAT_LOCK_TTL_SECONDS", default=30.0)
# One key per Redis database: every beat whose REDIS_URL points there competes for it.
JOBS_BEAT_LOCK_KEY = "jobs:beat:lock"
# Beat writes an entry's last run time to the database right after sending it, not every three
# minutes: a beat taking over the lock reads the schedule from there, and would otherwise send
# again what the previous holder sent since its last write.
CELERY_BEAT_SYNC_EVERY = 1

# --- Accounts -------------------------------------------------------------------------------

# Links in emails expire: a verification link after a day (people read mail late), a reset
# link after an hour (it grants the account).
EMAIL_VERIFICATION_MAX_AGE = env.int("EMAIL_VERIFICATION_MAX_AGE", default=24 * 3600)
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT", default=3600)
# Accounts never verified after this many days are deleted (someone else's address, a typo).
UNVERIFIED_ACCOUNT_DAYS = env.int("UNVERIFIED_ACCOUNT_DAYS", default=7)
# Bodies of sent emails (they hold links with tokens) are erased after this many days.
EMAIL_BODY_RETENTION_DAYS = env.int("EMAIL_BODY_RETENTION_DAYS", default=30)
# Abuse limits for the endpoints that send email to an address someone typed: per address (so
# nobody can flood one inbox) and per client IP (so nobody can flood many), as "N/s|m|h".
ACCOUNT_EMAIL_RATE_PER_ADDRESS = env.str("ACCOUNT_EMAIL_RATE_PER_ADDRESS", default="5/h")
ACCOUNT_EMAIL_RATE_PER_IP = env.str("ACCOUNT_EMAIL_RATE_PER_IP", default="30/h")
# Password guessing (accounts/throttling.py: LoginGuard): failed passwords are free up to this
# many per address (and per client IP, where people share addresses behind NAT); each one after
# locks the address (or IP) for twice as long as the last, from 1 s up to the cap. A browser
# the owner logged in from before is counted apart, so nobody can lock the owner out of it.
ACCOUNT_LOGIN_FREE_FAILURES = env.int("ACCOUNT_LOGIN_FREE_FAILURES", default=5)
ACCOUNT_LOGIN_FREE_FAILURES_PER_IP = env.int("ACCOUNT_LOGIN_FREE_FAILURES_PER_IP", default=50)
ACCOUNT_LOGIN_MAX_LOCK_SECONDS = env.int("ACCOUNT_LOGIN_MAX_LOCK_SECONDS", default=900)
# A deletion request erases the account's data after this many days, during which the person
# can log in and cancel (a stolen session cannot erase an account at once; a regret can be
# undone). 0 erases at once.
ACCOUNT_DELETION_GRACE_DAYS = env.int("ACCOUNT_DELETION_GRACE_DAYS", default=7)
# An erasure deletes each kind of the account's data in slices of at most this many rows, one
# chunk of its batch per slice: a slice's transaction stays short (tens of milliseconds, not a
# lock on the table for the whole account), and a crash repeats one slice, not the account.
# 5,000: each slice also pays a task's round trip, the batch's bookkeeping and a commit, which
# at 1,000 rows cost as much as the rows themselves (docs/accounts.md, "What an erasure costs").
ACCOUNT_ERASURE_SLICE_ROWS = env.int("ACCOUNT_ERASURE_SLICE_ROWS", default=5000)
# Reports (reports/): a period that ended longer than this before any dispatch saw it (beat was
# down) is skipped and logged rather than sent late: a day's report a week late is noise. 24 h
# covers a night's outage and a day's timezones.
REPORT_CATCH_UP_HOURS = env.int("REPORT_CATCH_UP_HOURS", default=24)
# Reports and their PDFs are deleted this many days after they were made.
REPORT_RETENTION_DAYS = env.int("REPORT_RETENTION_DAYS", default=90)
# A larger PDF goes as a link, not attached: many mail servers refuse messages over 10 MB, and
# base64 makes an attachment a third larger.
REPORT_ATTACH_MAX_BYTES = env.int("REPORT_ATTACH_MAX_BYTES", default=5 * 1024 * 1024)
# A report neither ready nor failed this long after it was queued, or after its render started,
# has lost its message, and the sweep queues it again. An hour: the reports of a dispatch to
# many subscribers wait their turn in the reports queue, and a report queued again while its
# first message still waits costs one query when that message comes.
REPORT_PROGRESS_DEADLINE_SECONDS = env.int("REPORT_PROGRESS_DEADLINE_SECONDS", default=3600)
# Times the sweep queues a report again; the next time it finds it stalled, it fails it (the
# person can ask again). Three lost messages in a row mean a cause no retry fixes.
REPORT_MAX_RESUMES = env.int("REPORT_MAX_RESUMES", default=3)
# Reports a person may ask for on demand (new ones; asking again for the same period is free)
# in 24 hours: each costs a render, and a loop of requests for past periods would otherwise keep
# the reports queue busy for everyone.
REPORT_REQUESTS_PER_DAY = env.int("REPORT_REQUESTS_PER_DAY", default=20)
# Notifications are deleted this many days after they were made, with their push deliveries: an
# inbox is news, and half a year of it is more than anyone scrolls back to.
NOTIFICATION_RETENTION_DAYS = env.int("NOTIFICATION_RETENTION_DAYS", default=180)
# Web Push (notifications/): the VAPID key pair (base64url; `python manage.py vapid_keys`
# makes one), and whom a push service should contact about our messages (a mailto: or https:
# URL). Without the keys, Web Push is off: devices cannot subscribe.
VAPID_PUBLIC_KEY = env.str("VAPID_PUBLIC_KEY", default="")
VAPID_PRIVATE_KEY = env.str("VAPID_PRIVATE_KEY", default="")
VAPID_SUBJECT = env.str("VAPID_SUBJECT", default="mailto:admin@example.com")
# The hosts our workers may POST a Web Push message to (a subscription's endpoint is a URL any
# client sends us): the push services of Chrome, Firefox, Edge and Safari. `*.name` allows any
# name under it; `host:port` another port than 443 (notifications/endpoints.py).
WEBPUSH_ALLOWED_HOSTS = env.list(
    "WEBPUSH_ALLOWED_HOSTS",
    default=[
        "fcm.googleapis.com",
        "updates.push.services.mozilla.com",
        "*.notify.windows.com",
        "web.push.apple.com",
    ],
)
# Only for a push service of one's own on a private network (and the tests, on 127.0.0.1): by
# default a connection that reaches a non-public address is refused before the request is sent.
WEBPUSH_ALLOW_PRIVATE_ADDRESSES = env.bool("WEBPUSH_ALLOW_PRIVATE_ADDRESSES", default=False)
# A CA bundle for the push services' certificates; empty, certifi's (the Mozilla bundle requests
# and httpx ship with; SSL_CERT_FILE and the system's store are not read).
WEBPUSH_CA_BUNDLE = env.str("WEBPUSH_CA_BUNDLE", default="")
# FCM, HTTP v1 API (notifications/fcm.py): a service account's JSON key file (Firebase console,
# Project settings, Service accounts); without it, FCM is off: apps cannot register FCM tokens.
# The project is the account's unless FCM_PROJECT_ID says otherwise. FCM_API_URL, and the
# token_uri in the file, are where workers POST: set by the operator, never by a client.
FCM_SERVICE_ACCOUNT_FILE = env.str("FCM_SERVICE_ACCOUNT_FILE", default="")
FCM_PROJECT_ID = env.str("FCM_PROJECT_ID", default="")
FCM_API_URL = env.str("FCM_API_URL", default="https://fcm.googleapis.com")
# APNs with token-based auth (notifications/apns.py): the .p8 key from Apple's developer account,
# its key id, the team id, and the app's bundle id (the topic). Without all four, APNs is off.
# APNS_HOST: https://api.sandbox.push.apple.com for development builds of the app.
APNS_KEY_FILE = env.str("APNS_KEY_FILE", default="")
APNS_KEY_ID = env.str("APNS_KEY_ID", default="")
APNS_TEAM_ID = env.str("APNS_TEAM_ID", default="")
APNS_TOPIC = env.str("APNS_TOPIC", default="")
APNS_HOST = env.str("APNS_HOST", default="https://api.push.apple.com")
# A CA bundle for FCM's, Google's token endpoint's and APNs' certificates; empty, certifi's, as
# for Web Push (the tests' stand-ins have a certificate of their own).
PUSH_CA_BUNDLE = env.str("PUSH_CA_BUNDLE", default="")
# Reverse proxies (addresses or networks, "10.0.0.0/8") whose X-Forwarded-For is believed; from
# anyone else the header is ignored, since a client can write whatever it likes into it. The web
# refuses to start with DEBUG off until it is set ("none": clients connect directly), because
# behind an undeclared proxy every client shares the proxy's one per-IP abuse limit.
TRUSTED_PROXIES_DECLARED = bool(env.str("TRUSTED_PROXIES", default="").strip())
TRUSTED_PROXIES = [
    entry.strip()
    for entry in env.list("TRUSTED_PROXIES", default=[])
    if entry.strip() and entry.strip().lower() != "none"
]
for _entry in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_entry, strict=False)
    except ValueError as _error:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_entry!r} is no address or network"
        ) from _error
# Take a request's id from X-Request-ID when a trusted proxy sends it (jobs/request_ids.py). Off
# behind a proxy that passes a client's header along instead of setting its own.
REQUEST_ID_FROM_PROXY = env.bool("REQUEST_ID_FROM_PROXY", default=True)
LOGIN_URL = "/login"

# --- Media ----------------------------------------------------------------------------------

# Largest accepted upload; refused from the Content-Length header before the body is read.
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=20 * 1024 * 1024)
# Largest accepted image, checked from its header before any decoding: a 50 MP RGB image
# decodes to ~150 MB in a worker, and a "decompression bomb" is a small file claiming far more.
UPLOAD_MAX_PIXELS = env.int("UPLOAD_MAX_PIXELS", default=50_000_000)
# Bytes of originals one user may keep.
UPLOAD_QUOTA_BYTES = env.int("UPLOAD_QUOTA_BYTES", default=1024 * 1024 * 1024)
# What one account may upload per hour, as "N/s|m|h": uploads, and megapixels (read from each
# image's header). A worker's cost is the decoded image, not the file: a 160 KB PNG of 7000 x
# 7000 is 49 MP. Measured on one core: a 12 MP photo costs ~1.1 s through the pipeline (0.09 s
# per MP), that PNG ~2 s (0.04), a 49 MP RGBA PNG, whose variants each decode it whole, ~10 s
# (0.2). So 1500 MP an hour costs at most ~300 s of CPU an hour (4 % of the two-process media
# worker; twice that in a burst across a window boundary), while a photographer's session fits
# with room: 30 photos of 12 MP are 360 MP, of a 45 MP camera 1350 MP. 200 uploads an hour
# bounds the fixed cost of each upload (the request, its rows, its eight tasks), and lies beyond
# the 125 photos of 12 MP the pixels allow.
UPLOAD_RATE_PER_ACCOUNT = env.str("UPLOAD_RATE_PER_ACCOUNT", default="200/h")
UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT = env.str("UPLOAD_MEGAPIXELS_RATE_PER_ACCOUNT", default="1500/h")
# An upload still queued or processing this many seconds after its last progress has lost its
# pipeline, and the sweep resumes it. A step records progress as it ends, and the longest a live
# step goes without ending is its hard time limit (90 s) times its four attempts (three retries
# of a disk error, seconds apart): 6 minutes. 10 minutes leaves 4 for a wait in the media queue.
UPLOAD_PROGRESS_DEADLINE_SECONDS = env.int("UPLOAD_PROGRESS_DEADLINE_SECONDS", default=600)
# Times the sweep resumes an upload; the next time it finds it stalled, it fails it. A resume
# publishes only what is missing and takes a healthy pipeline seconds; three that did not finish
# it mean a cause no resume fixes (no worker on the media queue all that while, a broker that
# keeps losing messages), and the person learns it within the hour: an upload that stops
# progressing is failed at most (3 + 1) x (10 min + the sweep's 1 min) = 44 min after its last
# progress.
UPLOAD_MAX_RESUMES = env.int("UPLOAD_MAX_RESUMES", default=3)
# When set (e.g. "/protected-media/"), the web process answers a file request with an
# X-Accel-Redirect to this internal nginx location instead of streaming the file itself.
MEDIA_ACCEL_REDIRECT_PREFIX = env.str("MEDIA_ACCEL_REDIRECT_PREFIX", default="")

# --- API ------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "config.schema.ApiAutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.api.StrictJSONParser"],
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "config.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Celery SaaS API",
    "DESCRIPTION": "Signup, uploads, reports, notifications: every slow part runs on Celery.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Request and response components apart: a request string refuses blanks (minLength) and a
    # file field is binary, which would be untrue of the same fields in responses.
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Swagger UI would otherwise send the schema's URL to validator.swagger.io from the browser.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # Two sets of choices share the field name "frequency": a schedule's (with "off") and a
    # report's; named here, or the schema names one of them by a hash.
    "ENUM_NAME_OVERRIDES": {
        "ScheduleFrequencyEnum": "reports.models.Frequency",
        "ReportFrequencyEnum": "reports.models.REPORT_FREQUENCIES",
    },
}

# --- Security -------------------------------------------------------------------------------

# Behind a TLS-terminating proxy the request arrives as plain HTTP, and X-Forwarded-Proto says
# otherwise. gunicorn believes it from TRUSTED_PROXIES only (config/gunicorn.py) and tells
# Django through the WSGI scheme; Django's SECURE_PROXY_SSL_HEADER would believe it from any
# peer, so it stays off.
SECURE_PROXY_SSL_HEADER = None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# /healthz and /readyz are probed over plain HTTP from inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Database sessions that know their account: a deletion request ends them all
# (accounts/sessions.py).
SESSION_ENGINE = "accounts.sessions"

# --- Logging --------------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# "text" for people at a terminal, "json" (one object per line) for a log pipeline; every
# process (web, gunicorn's own log, workers, beat, the relay) writes the chosen one.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Every line names the request it serves and, in a worker, the task (jobs/request_ids.py).
    "filters": {"request_id": {"()": "jobs.request_ids.RequestIdFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(task_name)s "
            "%(task_id)s] %(message)s"
        },
        "json": {"()": "jobs.request_ids.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # WeasyPrint logs each step of each render at INFO; its warnings (a refused URL, a CSS
    # property it does not know) still show.
    "loggers": {"weasyprint.progress": {"level": "WARNING"}},
}
