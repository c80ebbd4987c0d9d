"""Test-only task for periodic jobs: each run records how beat sent it, for the test to read."""

import json

from celery import shared_task

from jobs.redis import redis_client

PROBE_RUNS_KEY = "test:periodic_probe:runs"


@shared_task(name="tests.periodic_probe", bind=True)
def periodic_probe(self, **kwargs) -> None:
    request = self.request
    run = {
        "queue": request.delivery_info.get("routing_key"),
        "expires": request.expires,
        "kwargs": kwargs,
        "periodic_task_name": (request.headers or {}).get("periodic_task_name"),
    }
    redis_client().rpush(PROBE_RUNS_KEY, json.dumps(run))


def periodic_probe_runs() -> list[dict]:
    return [json.loads(run) for run in redis_client().lrange(PROBE_RUNS_KEY, 0, -1)]
