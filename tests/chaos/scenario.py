"""A chaos scenario: the work it asks of the pipelines, and how it waits for every job to be
final and counts it (tests/chaos/ledger.py).

Recovery is what production has: redelivery (RabbitMQ requeues a dead connection's messages,
Redis workers restore a dead worker's lapsed lease), retries, the outbox relay in beat, and the
periodic sweeps. A sweep acts on what waited past its deadline, minutes to hours; once nothing
has moved for QUIET_SECONDS with nothing waiting anywhere (`nothing_waiting`), the scenario
runs each sweep as beat would at that later time (`sweeps_run_later`), and the row says so.
"""

import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
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

PIPELINES = list(WORKLOADS)
# Nothing moved for this long, every queue empty: what is left waits for a sweep. Longer than
# the time a broker takes to hand on what a silent worker held (a Redis worker's lease, 10 s,
# and the next sweep of it; RabbitMQ's two missed heartbeats, 20 s, and its next check) and a
# test retry's longest wait (8 s): those messages are in no queue meanwhile.
QUIET_SECONDS = 40
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
        self,
        fault: str,
        *,
        in_flight: dict[str, int],
        began: float,
        unaided: bool = False,
        once_final: Callable[[], None] = lambda: None,
    ) -> None:
        """Wait until every job is final (running the sweeps as later if it comes to that), do
        what the scenario does then (`once_final`: a cut host back on the network), then add a
        row per pipeline to the ledger, and require each to be clean."""
        open_at_sweep = settle(self.workloads)
        once_final()
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
