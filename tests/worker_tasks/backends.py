"""A result backend for workers that tests start: Redis, whose first store of a successful
result fails as if Redis had blipped at that moment (the next one works)."""

import redis
from celery import states
from celery.backends.redis import RedisBackend


class FirstSuccessStoreFailsBackend(RedisBackend):
    """Select it with CELERY_RESULT_BACKEND=tests.worker_tasks.backends:FirstSuccessStoreFailsBackend+redis://..."""

    failed_once = False

    def store_result(self, task_id, result, state, *args, **kwargs):
        if state == states.SUCCESS and not FirstSuccessStoreFailsBackend.failed_once:
            FirstSuccessStoreFailsBackend.failed_once = True
            raise redis.ConnectionError("Redis went away while the result was stored")
        return super().store_result(task_id, result, state, *args, **kwargs)
