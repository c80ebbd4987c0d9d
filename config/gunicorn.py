"""gunicorn's settings for the web process (`gunicorn -c config/gunicorn.py config.wsgi`).

Command-line options (the Procfile's --bind, --workers) still win over this file.
"""

import os

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
