"""Faults, counted: each scenario asks for real work from every pipeline it names (signup
emails, uploads, reports, erasures, a broadcast), strikes while that work is in flight, lets the
platform recover as it would in production, and counts, per pipeline, what was done once, held
for a person, lost, done twice and left unfinished (tests/chaos/ledger.py). The goal of every
row: lost 0, twice 0, every job final. The session prints the table (docs/reliability.md).

How a scenario waits for the end and counts it: tests/chaos/scenario.py.
"""

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connections

from jobs.models import OutboxMessage
from tests.chaos.scenario import PIPELINES, Scenario
from tests.jobs.test_worker_recovery import kill_whole
from tests.services import eventually

# Settling takes minutes where a sweep or a provider's outage is involved.
pytestmark = pytest.mark.timeout(600)


# --- processes killed -----------------------------------------------------------------------


def whole_worker_killed(scenario: Scenario, worker) -> None:
    kill_whole(worker)
    scenario.start_worker()


def pool_children_killed(scenario: Scenario, worker) -> None:
    for pid in worker.pool_pids():
        os.kill(pid, signal.SIGKILL)


KILLS: dict[str, Callable] = {
    "whole worker SIGKILLed": whole_worker_killed,
    "pool children SIGKILLed": pool_children_killed,
}


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("fault", list(KILLS))
def test_a_worker_killed_mid_pipeline(scenario, fault, pipeline):
    # given a pipeline's jobs asked for, and a worker that starts on them
    scenario.ask([pipeline])
    worker = scenario.start_worker()
    # when the first job is done, the worker (or its pool) is killed
    eventually(scenario.started, timeout=60, interval=0.05)
    in_flight, began = scenario.open_jobs(), time.monotonic()
    KILLS[fault](scenario, worker)
    # then every job ends once, done or where a person sees it
    scenario.count(fault, in_flight=in_flight, began=began)


# --- the broker -----------------------------------------------------------------------------


def test_the_broker_restarted_empty(scenario, broker_server):
    # given every pipeline's jobs asked for, their messages published, and no worker
    scenario.ask(PIPELINES)
    eventually(lambda: not OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING))
    in_flight, began = scenario.open_jobs(), time.monotonic()
    # when the broker loses every message (an in-memory Redis restarted; a RabbitMQ node
    # replaced with its disk) and a worker starts
    broker_server.forget_all_messages()
    broker_server.stop()
    broker_server.start()
    scenario.start_worker()
    # then every job ends once
    scenario.count("broker restarted empty", in_flight=in_flight, began=began)


def test_the_broker_frozen_longer_than_the_publish_timeout(scenario, broker_server):
    # given a worker
    scenario.start_worker()
    # when the broker stops answering (SIGSTOP) while every pipeline's jobs are asked for
    broker_server.freeze()
    began = time.monotonic()
    scenario.ask(PIPELINES)
    asking = time.monotonic() - began
    in_flight = scenario.open_jobs()
    frozen_for = settings.JOBS_PUBLISH_TIMEOUT_SECONDS * 10 + 5
    time.sleep(max(0.0, frozen_for - asking))
    broker_server.thaw()
    # then every job ends once
    scenario.count(f"broker frozen {frozen_for:.0f} s", in_flight=in_flight, began=began)


# --- outside services -----------------------------------------------------------------------

PROVIDER_OUTAGE_SECONDS = 60
# The retry timing production runs with, not the tests' shortened one: whether a minute's
# outage is ridden out depends on it.
PRODUCTION_RETRIES = {"JOBS_RETRY_BASE_SECONDS": "2", "JOBS_RETRY_MAX_SECONDS": "600"}


def test_the_mail_server_and_push_service_down_for_a_minute(scenario, smtp, push_service):
    # given a worker retrying as production does
    scenario.start_worker(extra_env=PRODUCTION_RETRIES)
    # when the mail server and the push service are down while jobs that use them are asked for
    smtp.stop()
    push_service.stop()
    began = time.monotonic()
    scenario.ask(["signup", "upload", "report", "broadcast"])
    in_flight = scenario.open_jobs()
    time.sleep(max(0.0, PROVIDER_OUTAGE_SECONDS - (time.monotonic() - began)))
    # and they come back
    smtp.start()
    push_service.start()
    # then every job ends once
    scenario.count(
        f"mail server and push service down {PROVIDER_OUTAGE_SECONDS} s",
        in_flight=in_flight,
        began=began,
        unaided=True,
    )


def postgres_on_this_machine() -> bool:
    """The tests run on a PostgreSQL server of this machine's that the suite can restart."""
    url = urlsplit(os.environ.get("DATABASE_URL", ""))
    return (
        url.scheme.startswith("postgres")
        and url.hostname in {"127.0.0.1", "localhost", "::1"}
        and shutil.which("pg_ctlcluster") is not None
        and Path("/etc/postgresql").is_dir()
    )


@pytest.mark.skipif(
    not postgres_on_this_machine(),
    reason="restarts the PostgreSQL server the tests run on: needs one on this machine "
    "(DATABASE_URL on 127.0.0.1, as CI's) managed by pg_ctlcluster",
)
def test_the_database_restarted(scenario):
    # given every pipeline's jobs asked for, and a worker running them
    scenario.ask(PIPELINES)
    scenario.start_worker()
    eventually(scenario.started, timeout=60, interval=0.05)
    in_flight, began = scenario.open_jobs(), time.monotonic()
    # when PostgreSQL restarts (every connection cut, a few seconds refusing new ones)
    postgres_restart()
    connections.close_all()  # this process's connection died too
    # then every job ends once
    scenario.count("PostgreSQL restarted", in_flight=in_flight, began=began)


def postgres_restart() -> None:
    version = sorted(Path("/etc/postgresql").iterdir(), key=lambda p: float(p.name))[-1].name
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    subprocess.run(command, check=True, timeout=60)


# --- shutdowns ------------------------------------------------------------------------------


def test_a_worker_stopped_while_it_works(scenario):
    # given every pipeline's jobs asked for, and a worker running them
    scenario.ask(PIPELINES)
    worker = scenario.start_worker()
    eventually(scenario.started, timeout=60, interval=0.05)
    in_flight, began = scenario.open_jobs(), time.monotonic()
    # when it is told to stop (SIGTERM: a deploy), it finishes what it runs; another starts
    worker.stop(timeout=120)
    scenario.start_worker()
    scenario.count("SIGTERM (warm shutdown)", in_flight=in_flight, began=began)


def test_a_worker_stopped_twice_while_it_works(scenario):
    # given every pipeline's jobs asked for, and a worker running them
    scenario.ask(PIPELINES)
    worker = scenario.start_worker()
    eventually(scenario.started, timeout=60, interval=0.05)
    in_flight, began = scenario.open_jobs(), time.monotonic()
    # when it is told to stop twice (an impatient operator: a cold shutdown), what it ran is
    # handed back, and another worker runs it
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=60)
    worker.process = None
    scenario.start_worker()
    scenario.count("SIGTERM twice (cold shutdown)", in_flight=in_flight, began=began)


def test_two_beats(scenario, start_beat):
    # given a second beat beside the scenario's, and a worker
    scenario.start_worker()
    beats = [scenario.beat, start_beat()]
    began = time.monotonic()
    # when every pipeline's jobs are asked for, while the beats run the sweeps, the relay and
    # the erasures' queuing job
    scenario.ask(PIPELINES)
    # then every job ends once, and one beat sent everything
    scenario.count("two beats", in_flight=scenario.open_jobs(), began=began)
    assert sorted(beat.holds_lock() for beat in beats) == [False, True]
    idle = next(beat for beat in beats if not beat.holds_lock())
    assert idle.sent("") == 0
