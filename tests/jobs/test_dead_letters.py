"""Dead letters are visible in the admin and a script, and can be re-driven or discarded."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from jobs.models import DeadLetter, OutboxMessage
from jobs.redis import redis_client
from tests.services import eventually
from tests.worker_tasks.platform import permanent_unless_allowed, recorded


@pytest.fixture
def admin_client(client, transactional_db):
    admin = get_user_model().objects.create_superuser("ops@example.com", "correct horse battery")
    client.force_login(admin)
    return client


def test_a_permanent_failure_is_redriven_from_the_admin_and_runs_again(celery_worker, admin_client):
    # given a task that failed permanently and sits in the dead-letter store
    key = uuid.uuid4().hex
    permanent_unless_allowed.delay(key=key)
    letter = eventually(lambda: DeadLetter.objects.filter(kwargs={"key": key}).first())
    # and an operator who can find it in the admin, filtered by task and exception
    changelist = reverse("admin:jobs_deadletter_changelist")
    listing = admin_client.get(
        changelist, {"task_name": letter.task_name, "exception_class": letter.exception_class}
    )
    assert listing.status_code == 200
    assert reverse("admin:jobs_deadletter_change", args=[letter.pk]) in listing.content.decode()
    # when the cause is fixed and the operator re-drives it
    redis_client().set(f"test:allow:{key}", 1)
    response = admin_client.post(
        changelist, {"action": "redrive", "_selected_action": [letter.pk]}, follow=True
    )
    # then the task runs again, successfully, and the re-drive is recorded
    assert "1 dead letter(s) re-driven." in response.content.decode()
    eventually(lambda: recorded("effects", key), timeout=20)
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REDRIVEN
    assert letter.redrive_count == 1 and letter.redriven_at is not None
    assert letter.resolved_by == "ops@example.com"
    assert OutboxMessage.objects.filter(task_name=letter.task_name).count() == 1


@pytest.mark.django_db(transaction=True)
def test_discard_from_the_admin_and_a_second_action_on_the_same_letter_is_refused(admin_client):
    letter = DeadLetter.objects.create(
        task_name="tests.flaky", task_id="t-1", kwargs={"key": "k", "failures": 0},
        exception_class="builtins.ValueError",
    )  # fmt: skip
    changelist = reverse("admin:jobs_deadletter_changelist")
    admin_client.post(changelist, {"action": "discard", "_selected_action": [letter.pk]})
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.DISCARDED
    response = admin_client.post(
        changelist, {"action": "redrive", "_selected_action": [letter.pk]}, follow=True
    )
    assert "already discarded" in response.content.decode()
    assert not OutboxMessage.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_management_command_lists_redrives_and_discards(capsys):
    # given two dead letters of different tasks
    first = DeadLetter.objects.create(
        task_name="tests.flaky", task_id="a", kwargs={"key": "k1", "failures": 0},
        exception_class="builtins.ValueError",
    )  # fmt: skip
    second = DeadLetter.objects.create(
        task_name="tests.create_user", task_id="b", args=["positional@example.com"],
        exception_class="builtins.KeyError",
    )  # fmt: skip
    # when they are listed
    call_command("dead_letters", "list")
    listed = capsys.readouterr().out
    assert "tests.flaky" in listed and "tests.create_user" in listed
    # when one task's letters are re-driven: positional arguments become keywords in the outbox
    call_command("dead_letters", "redrive", "--task", "tests.create_user")
    assert OutboxMessage.objects.get().kwargs == {"email": "positional@example.com"}
    second.refresh_from_db()
    assert second.status == DeadLetter.Status.REDRIVEN
    # when the other is discarded by id
    call_command("dead_letters", "discard", str(first.pk))
    first.refresh_from_db()
    assert first.status == DeadLetter.Status.DISCARDED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", ["redrive", "discard"])
def test_a_letter_acted_on_stays_acted_on_when_the_same_task_fails_again(action):
    from jobs.deadletters import dead_letter_discard, dead_letter_record, dead_letter_redrive

    def fail() -> DeadLetter:
        return dead_letter_record(
            task_name=permanent_unless_allowed.name,
            task_id="the-same-task-id",
            args=(),
            kwargs={"key": "k"},
            queue="default",
            error=RuntimeError("the provider rejected it"),
            attempts=1,
        )

    # given a dead letter a person acted on
    letter = fail()
    act = dead_letter_redrive if action == "redrive" else dead_letter_discard
    act(dead_letter_id=letter.pk, by="ops@example.com")
    decided = DeadLetter.objects.get(pk=letter.pk).status
    # when the same task id fails again (its old message redelivered)
    fail()
    # then the decision stands: one letter, still acted on, its failure details updated
    letter.refresh_from_db()
    assert DeadLetter.objects.filter(task_id="the-same-task-id").count() == 1
    assert letter.status == decided != DeadLetter.Status.DEAD
    assert letter.resolved_by == "ops@example.com"


@pytest.mark.django_db(transaction=True)
def test_a_letter_older_than_its_keys_or_of_a_task_gone_from_the_code_is_not_redriven(settings):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.deadletters import DeadLetterNotActionable, dead_letter_redrive
    from jobs.idempotency import idempotency_keys_prune
    from jobs.models import IdempotencyKey

    # given keys and letters from before the retention, and a letter of a removed task
    settings.JOBS_IDEMPOTENCY_KEY_RETENTION_DAYS = 30
    long_ago = timezone.now() - timedelta(days=31)
    IdempotencyKey.objects.create(key="media.upload_ready:old", created_at=long_ago)
    IdempotencyKey.objects.create(key="media.upload_ready:recent")
    old = DeadLetter.objects.create(
        task_name=permanent_unless_allowed.name, task_id="old", kwargs={"key": "k"},
        exception_class="E", first_failed_at=long_ago,
    )  # fmt: skip
    gone = DeadLetter.objects.create(task_name="tests.removed", task_id="gone", exception_class="E")
    # then the prune forgets only the old key, and neither letter can be re-driven
    assert idempotency_keys_prune() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == [
        "media.upload_ready:recent"
    ]
    with pytest.raises(DeadLetterNotActionable, match="older than 30 days"):
        dead_letter_redrive(dead_letter_id=old.pk)
    with pytest.raises(DeadLetterNotActionable, match=r"no task 'tests\.removed'"):
        dead_letter_redrive(dead_letter_id=gone.pk)
    assert not OutboxMessage.objects.exists()
