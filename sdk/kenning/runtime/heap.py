"""Giving freed memory back to the operating system after a burst of runs.

A worker that executed a few hundred runs at once keeps the peak of that burst in its heap
after the runs suspend or end: the C allocator holds on to freed pages. Waiting runs cost the
worker nothing, so an idle worker returns those pages (glibc's ``malloc_trim``), and its RSS,
what Kubernetes limits and autoscalers see, falls back to what it really holds. Elsewhere (musl,
macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
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
