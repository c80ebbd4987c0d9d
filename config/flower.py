"""Flower's configuration file (`celery -A config flower --conf=config/flower.py`).

Flower shows task arguments and can revoke tasks and shut workers down, so it never starts
without a password: FLOWER_BASIC_AUTH ("user:password", comma-separated for several) is required.
"""

import os

basic_auth = [pair for pair in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if pair]
if not basic_auth or any(":" not in pair for pair in basic_auth):
    raise SystemExit(
        "FLOWER_BASIC_AUTH must be set as user:password; Flower will not run unprotected."
    )

port = int(os.environ.get("FLOWER_PORT", "5555"))
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
# Workers that stopped answering disappear from the dashboard after 10 minutes instead of
# piling up across deploys.
purge_offline_workers = 600
