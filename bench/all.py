"""Every benchmark, one after another, and their figures in one file: `bench/RESULTS.md`.

    .venv/bin/python bench/all.py            # each at its own default size (about 1.5 hours)
    .venv/bin/python bench/all.py --quick    # smaller runs, noisier figures (about 30 minutes)
    .venv/bin/python bench/all.py --only queue,costs

`make bench` runs the quick set. The file opens with the machine, its load before and after,
and the versions; then each benchmark's command, how long it took, the lines that hold a goal's
verdict, and everything it printed (each prints its figures beside its baseline, measured in the
same run, and its goal). A benchmark that fails is recorded as failed, and the others still run.
"""

import sys
from pathlib import Path

# The repository root first on sys.path (not bench/, where queue.py would shadow the standard
# library's `queue`), as every benchmark does.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import platform
import subprocess
import time
from datetime import UTC, datetime

import celery
import django
import kombu

from bench.support import load_average

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"

# name -> (arguments at the benchmark's own size, arguments for --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "queue": ([], ["--tasks", "500"]),
    "costs": ([], ["--tasks", "200"]),
    "brokers": ([], ["--tasks", "500"]),
    "ordering": ([], ["--keys", "20", "--tasks-per-key", "10", "--rounds", "2"]),
    "batches": ([], ["--sizes", "2000", "--chunk-sizes", "100"]),
    "signup": ([], ["--requests", "30"]),
    "images": ([], []),
    "readyz": ([], []),
    "metrics": ([], ["--scrapes", "20"]),
    "reports": ([], ["--subscribers", "20"]),
    "erasure": ([], []),
    "notifications": ([], ["--accounts", "1000"]),
    "hosts": ([], ["--tasks", "500", "--uploads", "6"]),
}
# A line that states a goal's outcome, in each benchmark's own words.
VERDICT_WORDS = (" met", "MISSED", "NOT met", "goal", "target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, noisier figures")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    options = parser.parse_args()
    chosen = [name for name in options.only.split(",") if name] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}")

    started, load_before = datetime.now(UTC), load_average()
    sections = [section_run(name, BENCHMARKS[name][options.quick]) for name in chosen]
    header = [
        "# Benchmark results",
        "",
        "Written by `bench/all.py` (`make bench`); each section is one benchmark's own output.",
        "",
        f"- run: {started:%Y-%m-%d %H:%M} UTC, {'quick sizes' if options.quick else 'full sizes'}",
        f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
        f"{memory_gib():.0f} GiB",
        f"- load average: {load_before} before, {load_average()} after",
        f"- versions: Python {platform.python_version()}, Django {django.get_version()}, "
        f"Celery {celery.__version__}, kombu {kombu.__version__}, "
        f"{server_version('redis-server')}, {server_version('rabbitmqctl')}",
        "",
        "| benchmark | outcome | minutes |",
        "|---|---|---|",
        *(
            f"| [{name}](#{name}) | {outcome} | {minutes:.1f} |"
            for name, outcome, minutes, _ in sections
        ),
        "",
    ]
    RESULTS.write_text("\n".join(header + [text for *_, text in sections]))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def section_run(name: str, arguments: list[str]) -> tuple[str, str, float, str]:
    command = [sys.executable, f"bench/{name}.py", *arguments]
    print(f"--- {' '.join(command[1:])}", flush=True)
    began = time.monotonic()
    finished = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."}
    )
    minutes = (time.monotonic() - began) / 60
    output = finished.stdout + (finished.stderr if finished.returncode else "")
    verdicts = [line.strip() for line in finished.stdout.splitlines() if verdict(line)]
    outcome = "ran" if finished.returncode == 0 else f"FAILED (exit {finished.returncode})"
    print(output[-2000:], flush=True)
    text = "\n".join(
        [
            f"## {name}",
            "",
            f"`.venv/bin/python bench/{name}.py {' '.join(arguments)}`".replace(" `", "`"),
            f"({minutes:.1f} min, {outcome})",
            "",
            *(f"- {line}" for line in verdicts),
            "",
            "```",
            output.rstrip(),
            "```",
            "",
        ]
    )
    return name, outcome, minutes, text


def verdict(line: str) -> bool:
    return any(word in line for word in VERDICT_WORDS)


def server_version(program: str) -> str:
    command = [program, "version"] if program == "rabbitmqctl" else [program, "--version"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return f"{program} not installed"
    name = "RabbitMQ" if program == "rabbitmqctl" else program
    return f"{name} {answer.split('v=')[-1].split()[0] if 'v=' in answer else answer.strip()}"


def memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


if __name__ == "__main__":
    main()
