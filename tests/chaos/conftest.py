"""The chaos suite's scenario, and its table: each scenario adds its rows; the session prints them
at its end and writes them to the session folder, for docs/reliability.md."""

import pytest
from django.core.management import call_command

from tests.chaos.ledger import LEDGER
from tests.chaos.scenario import Scenario
from tests.harness import SESSION_DIR, TEST_BROKER


def pytest_terminal_summary(terminalreporter) -> None:
    if not LEDGER:
        return
    table = LEDGER.markdown()
    path = SESSION_DIR / f"reliability-{TEST_BROKER}.md"
    path.write_text(table)
    terminalreporter.section(f"faults, counted ({TEST_BROKER}; also in {path})")
    terminalreporter.write(table)


@pytest.fixture
def scenario(no_worker_running, smtp, push_service, start_worker, start_beat) -> Scenario:
    """A scenario on the production set-up: the periodic jobs synced and a beat running them
    (the outbox relay every few seconds, the sweeps on their own schedules)."""
    call_command("sync_periodic_tasks")
    return Scenario(smtp, push_service, start_worker, beat=start_beat())
