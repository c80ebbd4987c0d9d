"""Counting what a fault did, in the manner of Jepsen's checkers: for each pipeline, how many
jobs were asked for, how many were in flight when the fault struck, and in the end how many were
done once, held where a person sees them, lost, done twice, or never final."""

from collections import Counter
from dataclasses import dataclass

from tests.chaos.workloads import DONE, HELD, OPEN, Workload
from tests.harness import TEST_BROKER


@dataclass
class Row:
    fault: str
    workload: str
    asked: int
    in_flight: int
    done: int
    held: int
    held_arrived: int
    lost: int
    twice: int
    not_final: int
    recovered_by: str
    seconds: float

    @property
    def clean(self) -> bool:
        """The goal: nothing lost, nothing twice, every job final."""
        return self.lost == self.twice == self.not_final == 0


def row_count(
    workload: Workload,
    *,
    fault: str,
    in_flight: int,
    recovered_by: str,
    seconds: float,
) -> Row:
    """One row: `done` has its effect and a final state; `held` failed where a person sees it
    (its effect may or may not have come: a person decides); `lost` says done with no effect,
    or is final with none and nothing for a person to see; `twice` had its effect more than
    once; `not_final` never settled."""
    effects: Counter = workload.effects()
    states = workload.states()
    done = sum(states[key] == DONE and effects[key] >= 1 for key in workload.keys)
    held = [key for key in workload.keys if states[key] == HELD]
    not_final = sum(states[key] == OPEN for key in workload.keys)
    return Row(
        fault=fault,
        workload=workload.name,
        asked=len(workload.keys),
        in_flight=in_flight,
        done=done,
        held=len(held),
        held_arrived=sum(effects[key] >= 1 for key in held),
        lost=len(workload.keys) - done - len(held) - not_final,
        twice=sum(effects[key] > 1 for key in workload.keys),
        not_final=not_final,
        recovered_by=recovered_by,
        seconds=seconds,
    )


class Ledger(list[Row]):
    def markdown(self) -> str:
        lines = [
            f"Broker: {TEST_BROKER}\n",
            "| fault | pipeline | asked | in flight at the fault | done once "
            "| held for a person (of which arrived) | lost | twice | not final | recovered by "
            "| seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.fault} | {r.workload} | {r.asked} | {r.in_flight} | {r.done} "
            f"| {r.held} ({r.held_arrived}) "
            f"| {r.lost} | {r.twice} | {r.not_final} | {r.recovered_by} | {r.seconds:.0f} |"
            for r in self
        ]
        return "\n".join(lines) + "\n"


LEDGER = Ledger()
