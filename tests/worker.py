"""A stand-in for the Azure Functions Python worker's logging path, for tests (the worker itself runs only
inside the Functions host, behind gRPC, and is not a dependency of the app).

It follows azure-functions-python-worker (azure_functions_worker/dispatcher.py, bindings/context.py):
- one process-wide `threading.local()` holds the invocation id (`_invocation_id_local`); the Context handed to a
  function exposes that object as `thread_local_storage`;
- a sync function runs on a thread of the worker's own pool with `invocation_id` set on that thread before the
  call and reset to None after it (`_run_sync_func`);
- the root logger's handler tags each record with the id found on the *logging* thread at emit time
  (`on_logging` -> `get_current_invocation_id()`); the host drops a record that has none, so only tagged
  records reach Application Insights (`Worker.delivered`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import pytest

from shared import invocation


class Context(func.Context):
    """The worker's Context: invocation id and the worker's thread-local storage."""

    def __init__(self, function_name: str, invocation_id: str, storage: threading.local) -> None:
        self._function_name = function_name
        self._invocation_id = invocation_id
        self._storage = storage

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> threading.local:  # the worker annotates it Type[threading.local]
        return self._storage

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return ""

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


@dataclass
class Sent:
    invocation_id: str | None
    logger: str
    level: int
    message: str
    thread: str


class Worker(logging.Handler):
    """Root-logger handler plus the sync-function pool, as the worker has them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.storage = threading.local()
        self.sent: list[Sent] = []
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="worker-sync")

    def emit(self, record: logging.LogRecord) -> None:
        self.sent.append(Sent(getattr(self.storage, "invocation_id", None), record.name, record.levelno,
                              record.getMessage(), threading.current_thread().name))

    def delivered(self) -> list[Sent]:
        """What the host keeps: records with an invocation id."""
        return [s for s in self.sent if s.invocation_id is not None]

    def dropped(self) -> list[Sent]:
        return [s for s in self.sent if s.invocation_id is None]

    def invoke(self, function: Any, *args: Any, function_name: str = "f") -> tuple[str, Any]:
        """Run `function(*args, context)` as the worker runs a sync function; returns (invocation id, result)."""
        invocation_id = str(uuid.uuid4())
        context = Context(function_name, invocation_id, self.storage)

        def run() -> Any:
            self.storage.invocation_id = invocation_id
            try:
                return function(*args, context)
            finally:
                self.storage.invocation_id = None

        return invocation_id, self._pool.submit(run).result()

    def __enter__(self) -> Worker:
        root = logging.getLogger()
        self._saved_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._saved_level)
        self._pool.shutdown()


@pytest.fixture(name="worker")
def worker_fixture():
    """A Worker on the root logger, with nothing bound in shared.invocation before or after."""
    invocation.reset()
    with Worker() as w:
        yield w
    invocation.reset()
