"""The Functions invocation id on threads the Python worker did not start.

The worker tags a log record with the invocation id it finds, at the moment of logging, in a thread-local
object (`func.Context.thread_local_storage`, the worker's `_invocation_id_local`) on the logging thread; it sets
that only on the invocation's own thread, and the host drops records without an id. Deliveries in a sync and
the copier's blocks run on pool threads, so their records (`delivery outcome=poisoned`, which an alert
watches) would be lost. `bind(context)` on the invocation thread remembers the worker's storage;
`pool_initializer()`, called where a pool is created, returns the initializer that gives the pool's threads
the creating thread's invocation id (nested pools inherit it in turn).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# The worker's thread-local storage: one object per worker process, shared by every invocation's context.
_storage: Any = None
_lock = threading.Lock()


def bind(context: Any) -> None:
    """Remember the worker's thread-local storage from an invocation's `func.Context` (a context without
    one, e.g. a handler called from a test or the CLI, changes nothing)."""
    global _storage
    storage = getattr(context, "thread_local_storage", None)
    if storage is None:
        return
    with _lock:
        _storage = storage


def current() -> str | None:
    """The invocation id the worker would tag a record logged on this thread with; None outside one."""
    storage = _storage
    return getattr(storage, "invocation_id", None) if storage is not None else None


def pool_initializer() -> Callable[[], None] | None:
    """For `ThreadPoolExecutor(initializer=...)`, called on the thread that creates the pool: an initializer
    that sets this thread's invocation id on each new pool thread, or None when this thread has none."""
    storage = _storage
    invocation_id = current()
    if storage is None or invocation_id is None:
        return None

    def start() -> None:
        storage.invocation_id = invocation_id

    return start


def reset() -> None:
    """Forget the bound storage (tests)."""
    global _storage
    with _lock:
        _storage = None
