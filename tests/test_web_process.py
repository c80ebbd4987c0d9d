"""The web process as production starts it: what it refuses, and what its log keeps."""

import http.client
import os
import re
import runpy
import subprocess
import sys

import pytest

from tests.services import BASE_DIR, eventually


def start_wsgi(**environment: str) -> subprocess.CompletedProcess:
    # Importing the WSGI module is what gunicorn does first; a refusal there stops every worker.
    env = {key: value for key, value in os.environ.items() if key != "TRUSTED_PROXIES"}
    return subprocess.run(
        [sys.executable, "-c", "import config.wsgi"],
        cwd=BASE_DIR,
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_in_production_the_web_refuses_to_start_until_trusted_proxies_is_declared():
    refused = start_wsgi(DEBUG="0")
    assert refused.returncode != 0
    assert "Set TRUSTED_PROXIES" in refused.stderr
    assert start_wsgi(DEBUG="0", TRUSTED_PROXIES="").returncode != 0
    assert start_wsgi(DEBUG="0", TRUSTED_PROXIES="none").returncode == 0
    assert start_wsgi(DEBUG="0", TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.7").returncode == 0
    assert start_wsgi(DEBUG="1").returncode == 0  # development: no proxy to forget


def test_a_trusted_proxies_entry_that_is_no_address_stops_every_process():
    refused = start_wsgi(DEBUG="0", TRUSTED_PROXIES="10.0.0.0/8,proxy.internal")
    assert refused.returncode != 0 and "'proxy.internal' is no address" in refused.stderr


@pytest.mark.django_db(transaction=True)
def test_tokens_in_links_never_reach_the_access_log(start_web):
    # given the web server started by the Procfile's command
    web = start_web()
    secret = "TOKEN-THAT-MUST-NOT-BE-LOGGED"
    # when a link from an email is opened, and the page it shows is the next request's Referer
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    connection.request("GET", f"/verify-email?token={secret}")
    assert connection.getresponse().read() and True
    connection.request(
        "GET", "/static/css/site.css", headers={"Referer": f"{web.url}/verify-email?token={secret}"}
    )
    connection.getresponse().read()
    connection.close()
    # then the access log has both requests, and the token nowhere
    log = eventually(lambda: (text := web.logfile.read_text()).count('"GET /') >= 2 and text)
    assert "/verify-email" in log
    assert secret not in log


def test_tokens_never_reach_the_error_log_either(tmp_path):
    # gunicorn names the request in its error log when a worker times out or a request fails
    # below Django: the same path, without its query string
    from gunicorn.config import Config

    settings_file = runpy.run_path(str(BASE_DIR / "config" / "gunicorn.py"))
    config = Config()
    config.set("errorlog", str(tmp_path / "error.log"))
    log = settings_file["logger_class"](config)
    try:
        raise TimeoutError("worker timeout")
    except TimeoutError:
        log.exception("Error handling request %s", "/verify-email?token=TOKEN-NOT-TO-LOG")
    written = (tmp_path / "error.log").read_text()
    assert "Error handling request /verify-email" in written
    assert "TOKEN-NOT-TO-LOG" not in written


def test_a_web_process_knows_every_task_before_serving_anything():
    # A re-drive in the admin looks its task up by name, in whichever gunicorn worker serves
    # it: one that has imported nothing yet must know every task the code declares.
    declared = {
        name
        for app in ("accounts", "jobs", "media", "notifications", "reports")
        for name in re.findall(
            r'@shared_task\(\s*name="([^"]+)"', (BASE_DIR / app / "tasks.py").read_text()
        )
    }
    assert "accounts.send_email" in declared and "media.normalize" in declared
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import config.wsgi; from config.celery import app; print(' '.join(app.tasks))",
        ],
        cwd=BASE_DIR,
        env={**os.environ, "DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert declared <= set(fresh.stdout.split())
