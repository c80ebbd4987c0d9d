"""Reads of the job platform that features expose: a batch's progress."""

from dataclasses import dataclass

from jobs.models import Batch


@dataclass(frozen=True)
class BatchProgress:
    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    pending: int
    progress: int


def batch_progress(*, batch_id: int) -> BatchProgress | None:
    """Where a batch stands, for an owning feature's API; None for a batch that does not exist.
    Read from the batch's counts, one row: cheap enough to poll."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:
        return None
    return BatchProgress(
        id=batch.pk,
        kind=batch.kind,
        status=batch.status,
        total=batch.total,
        done=batch.done,
        failed=batch.failed,
        pending=batch.total - batch.done - batch.failed,
        progress=batch.progress,
    )
