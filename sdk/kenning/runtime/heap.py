"""Giving freed memory back to the operating system after a burst of runs.

A worker that executed a few hundred runs at once keeps the peak of that burst in its heap
after the runs suspend or end: the C allocator holds on to freed pages. Waiting runs cost the
worker nothing, so an idle worker returns those pages (glibc's ``malloc_trim``), and its RSS,
what Kubernetes limits and autoscalers see, falls back to what it really holds. Elsewhere (musl,
macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` among the symbols the process already has, if it is there
    (no library search: that would start a subprocess)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the allocator cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
