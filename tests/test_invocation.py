"""shared.invocation: records logged on pool threads carry the invocation id, through a stand-in for the Python
worker's logging path (tests/worker.py follows the worker's dispatcher), so the host keeps them."""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from shared import invocation
from tests.worker import worker_fixture  # noqa: F401 (the `worker` fixture)

log = logging.getLogger("relay.test")


def log_on_pool(name: str, initializer=None, nested: bool = False) -> None:
    def work() -> None:
        log.info("%s pool line", name)
        if nested:
            with ThreadPoolExecutor(2, thread_name_prefix=f"{name}-inner",
                                    initializer=invocation.pool_initializer()) as inner:
                inner.submit(log.info, "%s nested line", name).result()

    with ThreadPoolExecutor(2, thread_name_prefix=name, initializer=initializer) as pool:
        pool.submit(work).result()


def test_a_plain_pool_thread_logs_without_an_invocation_id_and_the_host_drops_it(worker):
    def handler(context):
        log.info("on the invocation thread")
        log_on_pool("plain")

    worker.invoke(handler)
    assert [s.message for s in worker.delivered()] == ["on the invocation thread"]
    assert [s.message for s in worker.dropped()] == ["plain pool line"]


def test_pool_threads_started_with_the_initializer_log_with_the_invocation_id(worker):
    def handler(context):
        invocation.bind(context)
        log_on_pool("bound", invocation.pool_initializer())

    invocation_id, _ = worker.invoke(handler)
    assert worker.dropped() == []
    assert [(s.message, s.invocation_id) for s in worker.delivered()] == [("bound pool line", invocation_id)]


def test_pools_made_on_pool_threads_inherit_the_invocation_id(worker):
    def handler(context):
        invocation.bind(context)
        log_on_pool("outer", invocation.pool_initializer(), nested=True)

    invocation_id, _ = worker.invoke(handler)
    assert worker.dropped() == []
    assert {s.invocation_id for s in worker.sent} == {invocation_id}
    assert any(s.thread.startswith("outer-inner") for s in worker.sent)


def test_two_invocations_at_once_keep_their_own_ids(worker):
    both_started = threading.Barrier(2, timeout=10)

    def handler(tag, context):
        invocation.bind(context)
        initializer = invocation.pool_initializer()
        both_started.wait()  # both have bound before either pool starts
        log_on_pool(tag, initializer)

    results = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, worker.invoke(handler, t)[0]))
               for t in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {s.message.split()[0]: s.invocation_id for s in worker.sent}
    assert got == results


def test_there_is_no_initializer_outside_an_invocation(worker):
    assert invocation.pool_initializer() is None  # nothing bound yet

    def handler(context):
        invocation.bind(context)

    worker.invoke(handler)
    assert invocation.pool_initializer() is None  # bound, but this thread is no invocation's


def test_a_context_without_thread_local_storage_binds_nothing(worker):
    class Bare:
        invocation_id = "x"

    invocation.bind(Bare())
    assert invocation.current() is None and invocation.pool_initializer() is None
