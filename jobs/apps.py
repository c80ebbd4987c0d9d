from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Background jobs"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules
        from prometheus_client import REGISTRY

        from jobs import checks  # noqa: F401 - registers the system checks
        from jobs.metrics import PlatformCollector

        # Every app's stuck jobs for /metrics (jobs.metrics.stuck_jobs_register); this app's
        # module among them, which also stamps every published message with its time.
        autodiscover_modules("metrics")
        REGISTRY.register(PlatformCollector())
        # Every app's tasks, in every process: Celery registers a task when its module is
        # imported, and a web process imports one only when something there needs it. A
        # re-drive in the admin (a task looked up by name) served by a gunicorn worker that had
        # not would find "no such task".
        autodiscover_modules("tasks")
