"""Workers on several hosts (network namespaces, tests/hosts.py), the broker and the database on
this machine: the work spreads over the hosts, and a host cut off the network mid-task loses
nothing. Its work completes on another host: on Redis once its worker's lease lapses (the other
workers restore what it held, jobs/recovery.py), on RabbitMQ once the broker drops its silent
connection (heartbeats) and delivers its messages again. Counted in the chaos table like every
other fault.

How fast the work goes with one, two and three hosts is a benchmark's business: bench/hosts.py.
"""

import os
import re
import time
from contextlib import ExitStack

import pytest
from django.db import connection

from config.celery import app
from jobs.batches import CHUNK_TASK
from tests.chaos.scenario import PIPELINES, Scenario
from tests.harness import SESSION_DIR
from tests.hosts import TestHosts, hosts_unavailable, local_ports
from tests.services import database_url_for_subprocesses, eventually

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def test_hosts(scenario: Scenario):
    """Makes `count` test hosts that reach every service of the run; removed after the test,
    with whatever still runs on them: the workers on a host are killed with it, before
    `start_worker` would stop them (this fixture is torn down first)."""
    if connection.vendor == "sqlite":
        pytest.skip("several hosts need a database server: SQLite's file lives on one host")
    why = hosts_unavailable()
    if why:
        pytest.skip(why)
    environment = {**os.environ, "DATABASE_URL": database_url_for_subprocesses()}
    with ExitStack() as made:
        yield lambda count: made.enter_context(
            TestHosts(count, ports=local_ports(environment), logdir=SESSION_DIR / "hosts")
        )


def workers_on(scenario: Scenario, hosts: TestHosts) -> list:
    """One worker of one pool process on each host, ready."""
    workers = [
        scenario.start_worker(concurrency=1, launcher=hosts.launcher(host), wait=False)
        for host in range(1, hosts.count + 1)
    ]
    for worker in workers:
        worker.wait_ready()
    return workers


# A task of the work asked for, succeeded: not one of the maintenance jobs beat sends every
# few seconds (the relay, the sweeps) nor a canary, which every worker runs too.
WORK_DONE = re.compile(
    r"Task (?!jobs\.canary\[)(?![a-z_]+\.maintenance_)[a-z_.]+\[[^\]]+\] succeeded in "
)
# The tasks of a pipeline that hold a pool process long enough to be cut off in the middle.
LONG_TASKS = {"upload": {"media.normalize", "media.make_variant"}, "broadcast": {CHUNK_TASK}}


def work_done_by(worker) -> int:
    return len(WORK_DONE.findall(worker.logfile.read_text(errors="replace")))


def running(worker) -> list[str]:
    """The names of the tasks the worker runs now."""
    replies = app.control.inspect(destination=[worker.name], timeout=1.0, limit=1).active()
    return [task["name"] for task in (replies or {}).get(worker.name, [])]


def test_workers_on_three_hosts_share_the_work_and_do_it_once(scenario, test_hosts):
    # given a worker on each of three hosts
    workers = workers_on(scenario, test_hosts(3))
    began = time.monotonic()
    # when every pipeline is asked for work
    scenario.ask(PIPELINES)
    # then each job ends once, and every host did some of it
    scenario.count("none: workers on three hosts", in_flight=scenario.open_jobs(), began=began)
    assert all(work_done_by(worker) > 0 for worker in workers), [
        work_done_by(worker) for worker in workers
    ]


@pytest.mark.parametrize("pipeline", ["upload", "broadcast"])
def test_a_host_cut_off_mid_task_loses_nothing(scenario, test_hosts, pipeline):
    # given workers on two hosts, and work under way on the first
    hosts = test_hosts(2)
    cut_off, other = workers_on(scenario, hosts)
    scenario.ask([pipeline])
    eventually(lambda: set(running(cut_off)) & LONG_TASKS[pipeline], timeout=60, interval=0.05)
    in_flight, began = scenario.open_jobs(), time.monotonic()
    # when the first host drops off the network, its worker still running
    hosts.cut(1)
    assert not app.control.ping(destination=[cut_off.name], timeout=2)

    def back_on_the_network() -> None:
        # Every job is final with the host still cut off: the other host did its work. Then it
        # comes back, and its worker finishes whatever it was running when cut off (on Redis;
        # on RabbitMQ it cancels the run once it sees its connection was lost), which must not
        # make anything happen twice.
        assert cut_off.alive
        assert not any(scenario.open_jobs().values()), scenario.open_jobs()
        hosts.heal(1)
        eventually(cut_off.is_ready, timeout=90, interval=0.5)
        eventually(lambda: not running(cut_off), timeout=60, interval=0.5)

    # then every job ends once, done by the other host
    scenario.count(
        f"a host cut off the network ({pipeline})",
        in_flight=in_flight,
        began=began,
        once_final=back_on_the_network,
    )
    assert work_done_by(other) > 0
