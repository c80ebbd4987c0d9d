# Import the Celery app with Django so `@shared_task` binds to it and web processes can publish.
from config.celery import app as celery_app

__all__ = ("celery_app",)
