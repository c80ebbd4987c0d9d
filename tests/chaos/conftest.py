"""The chaos suite's table: each scenario adds its rows; the session prints them at its end and
writes them to the session folder, for docs/reliability.md."""

from tests.chaos.ledger import LEDGER
from tests.harness import SESSION_DIR, TEST_BROKER


def pytest_terminal_summary(terminalreporter) -> None:
    if not LEDGER:
        return
    table = LEDGER.markdown()
    path = SESSION_DIR / f"reliability-{TEST_BROKER}.md"
    path.write_text(table)
    terminalreporter.section(f"faults, counted ({TEST_BROKER}; also in {path})")
    terminalreporter.write(table)
