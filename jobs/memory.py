"""Worker processes keep the memory they free for their next task, instead of giving it back to
the kernel and faulting it in again.

glibc's malloc serves each allocation from 128 KiB up with its own mmap and unmaps it on free;
it raises that threshold after the first large free, yet a pool process still got most of its
image buffers as fresh pages: in bench/images.py a pool process faulted in ~4,800 pages (19 MB)
for each 2 MP photo, and the same code looping in one process none. On a VM those faults cost
a tenth to a fifth of an image's CPU. With both thresholds fixed, a freed buffer stays in the heap
and the next task's image reuses it: ~70 faults per photo, and the pipeline's CPU per image fell
by 10-20 % for 2 MP and 12 MP photos alike.

What it costs: a pool process keeps up to TRIM_THRESHOLD_BYTES of freed memory at the top of its
heap rather than returning it; CELERY_WORKER_MAX_MEMORY_PER_CHILD still replaces a process that
grows past its limit. Only glibc has mallopt; elsewhere (musl) the C library's defaults stand.
"""

import ctypes
import ctypes.util
import logging

from celery import signals

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# From the heap up to this size: a 12 MP image's pixels (48 MB) included.
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
# Freed memory kept at the heap's top up to this much: a 12 MP normalize's buffers, twice.
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def freed_memory_kept() -> bool:
    """Set this process's malloc to keep freed memory for reuse; False if it cannot."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


@signals.worker_init.connect
def _pool_processes_keep_freed_memory(**_) -> None:
    # In the worker's main process, before it forks its pool: every pool process, recycled ones
    # included, starts with the same malloc settings.
    if not freed_memory_kept():
        logger.info("malloc settings left as they are: this C library has no mallopt")
