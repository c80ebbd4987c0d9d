"""config/flower.py refuses credentials that would leave Flower open, and passes good ones on.

The file is run as Flower runs it: tornado's `parse_config_file` executes it in a fresh process
with the environment given, and Flower takes `basic_auth` from what it leaves behind.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What `celery flower --conf=config/flower.py` does with the file (flower.command.apply_options).
LOAD_AS_FLOWER_DOES = """
import flower.options
from tornado.options import options
options.parse_config_file("config/flower.py", final=False)
print(",".join(options.basic_auth))
"""
GOOD_PASSWORD = "T0dvQ2n-xWq5bZ7k"


def load_flower_config(basic_auth: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    if basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    return subprocess.run(
        [sys.executable, "-c", LOAD_AS_FLOWER_DOES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("basic_auth", "reason"),
    [
        (None, "must be set as user:password"),
        ("", "must be set as user:password"),
        (",", "must be set as user:password"),
        ("admin:", "gives the user 'admin' an empty password"),
        (f":{GOOD_PASSWORD}", "has an entry without a user name"),
        (":", "has an entry without a user name"),
        ("admin", "has an entry without ':'"),
        ("admin:short-pw", "gives the user 'admin' a password shorter than 12 characters"),
        (f"admin:{GOOD_PASSWORD},ops:", "gives the user 'ops' an empty password"),
    ],
)
def test_flower_refuses_credentials_that_leave_it_open(basic_auth, reason):
    # when Flower loads its configuration with these credentials
    result = load_flower_config(basic_auth)
    # then it stops, saying why, without printing the password
    assert result.returncode != 0
    assert f"FLOWER_BASIC_AUTH {reason}" in result.stderr
    assert "Flower will not run unprotected" in result.stderr
    assert "short-pw" not in result.stderr


@pytest.mark.parametrize(
    "basic_auth",
    [f"admin:{GOOD_PASSWORD}", f"admin:{GOOD_PASSWORD},ops:{GOOD_PASSWORD[::-1]}"],
)
def test_flower_takes_good_credentials(basic_auth):
    result = load_flower_config(basic_auth)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == basic_auth
