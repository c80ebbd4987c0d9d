"""Admin actions act (re-drive, discard, erase an account, send an email again): every one is for
those who may change its rows, never for an operator who may only look."""

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from jobs.models import DeadLetter


def staff_with(codename_prefix: str):
    user = get_user_model().objects.create_user(
        f"{codename_prefix}operator@example.com", "an operator's passphrase", is_staff=True
    )
    user.user_permissions.set(Permission.objects.filter(codename__startswith=codename_prefix))
    return get_user_model().objects.get(pk=user.pk)  # permissions are cached per instance


def actions_offered(rf, user) -> set[str]:
    request = rf.get("/admin/")
    request.user = user
    return {
        f"{model._meta.label}.{name}"
        for model, model_admin in admin.site._registry.items()
        for name in model_admin.get_actions(request)
    }


@pytest.mark.django_db
def test_no_action_is_offered_to_an_operator_who_may_only_view(rf):
    assert actions_offered(rf, staff_with("view_")) == set()
    # while one who may change the rows is offered the project's actions
    offered = actions_offered(rf, staff_with("change_"))
    assert {
        "jobs.DeadLetter.redrive",
        "jobs.DeadLetter.discard",
        "jobs.Batch.redrive_failed_chunks",
        "accounts.User.erase_now",
        "accounts.EmailDelivery.send_again",
    } <= offered


@pytest.mark.django_db
def test_a_view_only_operator_posting_an_action_changes_nothing(client):
    letter = DeadLetter.objects.create(
        task_name="tests.flaky", task_id="posted", exception_class="ValueError"
    )
    client.force_login(staff_with("view_"))
    client.post(
        reverse("admin:jobs_deadletter_changelist"),
        {"action": "discard", "_selected_action": [letter.pk]},
    )
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.DEAD
