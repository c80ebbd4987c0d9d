"""Flower, the task-level view, on the broker the session runs: it sees the workers and the
tasks through the broker's events, behind its password."""

import base64
import http.client
import json
import uuid

from tests.services import FlowerProcess, eventually
from tests.worker_tasks.platform import sleep_then_record


def flower_get(flower: FlowerProcess, path: str, *, authenticated: bool = True) -> tuple[int, dict]:
    headers = {}
    if authenticated:
        token = base64.b64encode(":".join(FlowerProcess.credentials).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    connection = http.client.HTTPConnection("127.0.0.1", flower.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else {}
    finally:
        connection.close()


def test_flower_shows_the_workers_and_their_tasks_to_its_users_only(celery_worker, start_flower):
    # given Flower and a worker, on the session's broker
    flower = start_flower()
    eventually(lambda: celery_worker.name in flower_get(flower, "/api/workers?refresh=1")[1])
    # when a task runs
    result = sleep_then_record.delay(key=uuid.uuid4().hex, seconds=0)

    # then Flower shows it, with its outcome
    def task_succeeded() -> dict | None:
        task = flower_get(flower, "/api/tasks")[1].get(result.id, {})
        return task if task.get("state") == "SUCCESS" else None

    task = eventually(task_succeeded, timeout=30)
    assert task["name"] == sleep_then_record.name
    # and nobody without the password sees anything
    assert flower_get(flower, "/api/workers", authenticated=False) == (401, {})
