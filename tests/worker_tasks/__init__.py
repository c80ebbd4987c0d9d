"""Tasks that exist only for tests: small effects a test can observe.

The test workers load this package with `--include tests.worker_tasks`; production workers
never do. One module per subject, each imported here so the worker registers them all.
"""

from tests.worker_tasks import (  # noqa: F401
    basics,
    batches,
    ordering,
    periodic,
    platform,
    ratelimit,
    recovery,
    uploads,
)
