"""Dead letters from a script: `manage.py dead_letters list|redrive|discard [ids] [--task NAME]`."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.deadletters import DeadLetterNotActionable, dead_letter_discard, dead_letter_redrive
from jobs.models import DeadLetter


class Command(BaseCommand):
    help = "List, re-drive or discard dead letters (tasks that failed for good)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "redrive", "discard"])
        parser.add_argument("ids", nargs="*", type=int, help="dead letter ids (default: all)")
        parser.add_argument("--task", help="only dead letters of this task name")

    def handle(self, *args, action: str, ids: list[int], task: str | None, **options) -> None:
        letters = DeadLetter.objects.filter(status=DeadLetter.Status.DEAD)
        if ids:
            letters = letters.filter(pk__in=ids)
        if task:
            letters = letters.filter(task_name=task)
        if action == "list":
            for letter in letters.order_by("pk"):
                self.stdout.write(
                    f"{letter.pk}\t{letter.task_name}\t{letter.exception_class}\t"
                    f"attempts={letter.attempts}\t{letter.last_failed_at:%Y-%m-%d %H:%M:%S}"
                )
            return
        if action == "redrive" and not (ids or task):
            raise CommandError("name the ids or a --task to re-drive; re-driving all is no default")
        act = dead_letter_redrive if action == "redrive" else dead_letter_discard
        done = 0
        for letter_id in letters.values_list("pk", flat=True):
            try:
                act(dead_letter_id=letter_id, by="manage.py dead_letters")
                done += 1
            except DeadLetterNotActionable as refusal:
                self.stderr.write(str(refusal))
        self.stdout.write(f"{action}: {done} dead letter(s)")
