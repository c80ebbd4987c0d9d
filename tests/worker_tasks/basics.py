from celery import shared_task
from django.contrib.auth import get_user_model


@shared_task(name="tests.create_user")
def create_user(email: str) -> int:
    return get_user_model().objects.create_user(email=email, password=None).pk
