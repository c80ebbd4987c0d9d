"""gunicorn's settings for the web process (`gunicorn -c config/gunicorn.py config.wsgi`).

Command-line options (the Procfile's --bind, --workers) still win over this file.
"""

import os

from gunicorn import glogging

# The access log never holds a query string or a Referer: links from emails carry their token
# in the query string (`/verify-email?token=…`), and the page they open is the Referer of the
# next request. Logs are read by more people, and kept longer, than the accounts they would open.
# The last field is the request's id (jobs/request_ids.py), as the response carries it: the
# same id is on the request's own lines and its tasks' lines in the workers.
access_log_format = (
    '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s" %({x-request-id}o)s'
)

# LOG_FORMAT=json: gunicorn's own lines (its error log, the access log) are JSON objects too, like
# every other line of the stack; gunicorn configures these loggers before Django starts.
if os.environ.get("LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "jobs.request_ids.JsonFormatter"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
            "error_console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }

# gunicorn believes X-Forwarded-Proto (is this request HTTPS?) only from the proxies Django
# believes X-Forwarded-For from: TRUSTED_PROXIES, or nobody.
forwarded_allow_ips = ",".join(
    entry.strip()
    for entry in os.environ.get("TRUSTED_PROXIES", "").split(",")
    if entry.strip() and entry.strip().lower() != "none"
)


class TokenFreeLogger(glogging.Logger):
    """gunicorn's error log also names requests ("Error handling request /verify-email?token=…"
    when a worker times out): paths keep no query string there either."""

    def error(self, msg, *args, **kwargs):
        super().error(msg, *_without_query_strings(args), **kwargs)

    def exception(self, msg, *args, **kwargs):
        super().exception(msg, *_without_query_strings(args), **kwargs)

    def warning(self, msg, *args, **kwargs):
        super().warning(msg, *_without_query_strings(args), **kwargs)

    def critical(self, msg, *args, **kwargs):
        super().critical(msg, *_without_query_strings(args), **kwargs)


def _without_query_strings(args: tuple) -> tuple:
    return tuple(
        arg.split("?", 1)[0] if isinstance(arg, str) and arg.startswith("/") else arg
        for arg in args
    )


logger_class = TokenFreeLogger
