"""gunicorn's settings for the web process (`gunicorn -c config/gunicorn.py config.wsgi`).

Command-line options (the Procfile's --bind, --workers) still win over this file.
"""

import os

from gunicorn import glogging

# The access log never holds a query string or a Referer: links from emails carry their token
# in the query string (`/verify-email?token=…`), and the page they open is the Referer of the
# next request. Logs are read by more people, and kept longer, than the accounts they would open.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'

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
