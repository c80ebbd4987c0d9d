"""Faults, counted: each scenario asks for real work from every pipeline it names (signup
emails, uploads, reports, erasures, a broadcast), strikes while that work is in flight, lets the
platform recover as it would in production, and counts, per pipeline, what was done once, held
for a person, lost, done twice and left unfinished (tests/chaos/ledger.py). The goal of every
row: lost 0, twice 0, every job final. The session prints the table (docs/reliability.md).

Recovery is what production has: redelivery (RabbitMQ requeues a dead connection's messages,
Redis workers restore a dead worker's lapsed lease), retries, the outbox relay in beat, and the
periodic sweeps. A sweep acts on what waited past its deadline, minutes to hours; once nothing
has moved for QUIET_SECONDS with nothing waiting anywhere (`nothing_waiting`), the scenario
runs each sweep as beat would at that later time (`sweeps_run_later`), and the row says so.
"""

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from accounts.deletion import account_erasures_resume_stalled
from accounts.emails import email_deliveries_sweep
from config.celery import app
from jobs.batches import batches_sweep
from jobs.brokers import messages_waiting_in
from jobs.models import OutboxMessage
from media.services import uploads_stalled_sweep
from notifications.services import push_deliveries_sweep
from reports.services import reports_stalled_sweep
from tests.chaos.ledger import LEDGER, row_count
from tests.chaos.workloads import OPEN, SIZES, WORKLOADS, Workload
from tests.jobs.test_worker_recovery import kill_whole
from tests.services import eventually

PIPELINES = list(WORKLOADS)
# Settling takes minutes where a sweep or a provider's outage is involved.
pytestmark = pytest.mark.timeout(600)
# Nothing moved for this long, every queue empty: what is left waits for a sweep. Longer than a
# Redis worker's lease (10 s) and a test retry's longest wait (8 s).
QUIET_SECONDS = 20
# Each sweep run as beat would this much later: past every sweep's deadline (uploads 11 min,
# erasures 15 min, emails and pushes hours), within a push's 24 h time to live.
LATER = timedelta(hours=6)
SETTLE_SECONDS = 300


class Scenario:
    def __init__(self, smtp, push_service, start_worker, *, beat) -> None:
        self.beat = beat
        self.smtp = smtp
        self.push_service = push_service
        self.start_worker = start_worker
        self.workloads: list[Workload] = []

    def ask(self, pipelines: list[str]) -> None:
        for name in pipelines:
            workload = WORKLOADS[name](SIZES[name], self.smtp, self.push_service)
            workload.ask()
            self.workloads.append(workload)

    def open_jobs(self) -> dict[str, int]:
        return {w.name: sum(s == OPEN for s in w.states().values()) for w in self.workloads}

    def started(self) -> bool:
        """The pipelines are running, most of their work still ahead."""
        return any(w.begun() for w in self.workloads)

    def count(
        self, fault: str, *, in_flight: dict[str, int], began: float, unaided: bool = False
    ) -> None:
        """Wait until every job is final (running the sweeps as later if it comes to that),
        then add a row per pipeline to the ledger, and require each to be clean."""
        open_at_sweep = settle(self.workloads)
        time.sleep(3)  # a second delivery, if any, has time to arrive
        seconds = time.monotonic() - began
        rows = [
            row_count(w, fault=fault, in_flight=in_flight[w.name], seconds=seconds,
                      recovered_by=recovery(open_at_sweep.get(w.name)))
            for w in self.workloads
        ]  # fmt: skip
        LEDGER.extend(rows)
        assert all(row.clean for row in rows), rows
        if unaided:  # every job done by the platform alone: nothing held, no sweep
            assert all(row.held == 0 and row.recovered_by == recovery(None) for row in rows), rows


def recovery(open_at_sweep: int | None) -> str:
    if not open_at_sweep:
        return "the platform"
    return f"the platform; the sweeps for {open_at_sweep}"


def settle(workloads: list[Workload]) -> dict[str, int]:
    """Wait until every job is final; returns how many of each pipeline's jobs were still
    open when the sweeps first ran (none if they did not)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    open_at_sweep: dict[str, int] = {}
    last, moved_at = None, time.monotonic()
    while time.monotonic() < deadline:
        snapshot = [(w.states(), w.effects()) for w in workloads]
        if all(OPEN not in states.values() for states, _ in snapshot):
            return open_at_sweep
        if snapshot != last:
            last, moved_at = snapshot, time.monotonic()
        elif time.monotonic() - moved_at > QUIET_SECONDS and nothing_waiting():
            if not open_at_sweep:
                open_at_sweep = {
                    w.name: list(states.values()).count(OPEN)
                    for w, (states, _) in zip(workloads, snapshot, strict=True)
                }
            sweeps_run_later()
            moved_at = time.monotonic()
        time.sleep(0.5)
    return open_at_sweep


def nothing_waiting() -> bool:
    """No message waits in the outbox (the relay will publish it), in a queue, or in a worker:
    running, reserved, or held for its countdown (a retry's wait)."""
    if OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).exists():
        return False
    try:
        if any(messages_waiting_in(list(settings.JOB_QUEUES)).values()):
            return False
        inspect = app.control.inspect(timeout=1.0)
        held = [inspect.active(), inspect.reserved(), inspect.scheduled()]
    except Exception:
        return False  # a broker that cannot say is not known to be empty
    return all(not tasks for replies in held for tasks in (replies or {}).values())


def sweeps_run_later() -> None:
    later = timezone.now() + LATER
    email_deliveries_sweep(now=later)
    push_deliveries_sweep(now=later)
    uploads_stalled_sweep(now=later)
    reports_stalled_sweep(now=later)
    account_erasures_resume_stalled(now=later)
    batches_sweep(now=later)


@pytest.fixture
def scenario(no_worker_running, smtp, push_service, start_worker, start_beat) -> Scenario:
    """A scenario on the production set-up: the periodic jobs synced and a beat running them
    (the outbox relay every few seconds, the sweeps on their own schedules)."""
    call_command("sync_periodic_tasks")
    return Scenario(smtp, push_service, start_worker, beat=start_beat())


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
