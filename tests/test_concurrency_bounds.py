"""Issue 30: what runs at once, and what it holds: the connections each storage client keeps per host, and the few
exports above SINGLE_PUT_LIMIT a sync copies at once while its small exports keep the pool.

Counts, never times: connections are counted where they arrive (a fault proxy in front of the service), the large
deliveries in flight by the delivery itself.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.config import MIB, Settings
from shared.delivery import Outcome
from tests.faultproxy import FaultProxy, proxy_for
from tests.helpers import REPO, count_bundle_reads
from tests.test_config import base_env

THREADS = 16  # a sync's workers (SYNC_CONCURRENCY below), all sending at once
ROUNDS = 8
# A hang guard for waits between threads (a barrier, an event): a stuck test fails instead of hanging; never a
# speed check.
HANG_GUARD = 60.0


def _at_once(threads: int, call: Callable[[], Any]) -> None:
    """`call` on `threads` threads that start together (a barrier): as many requests in flight as threads."""
    barrier = threading.Barrier(threads)

    def one(_: int) -> None:
        barrier.wait(timeout=HANG_GUARD)
        call()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))


# -- connections ---------------------------------------------------------------------------------------------------
def test_the_storage_clients_keep_a_connection_for_every_thread_that_may_send():
    from shared.storage import connection_pool_size

    relay = Settings.load(base_env(SYNC_CONCURRENCY="32")).relay
    # 32 sync workers, 4 large copies x 4 blocks, the listing, the receipt writer, the blob trigger's 8 invocations
    assert connection_pool_size(relay) == 32 + 4 * 4 + 2 + 8


def test_the_trigger_invocations_counted_are_host_jsons():
    from shared.storage import TRIGGER_INVOCATIONS

    host = json.loads((REPO / "host.json").read_text())
    assert host["extensions"]["blobs"]["maxDegreeOfParallelism"] == TRIGGER_INVOCATIONS


@pytest.mark.parametrize("interactive", [False, True])
def test_the_pooled_transport_keeps_the_clients_timeouts_ca_bundle_and_environment_choice(tmp_path, interactive):
    from shared.runtime import Runtime
    from shared.storage import INTERACTIVE_CONNECT_SECONDS, connection_pool_size

    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    settings = Settings.load(base_env(REQUESTS_CA_BUNDLE=str(bundle)))
    rt = Runtime(settings, interactive=interactive)
    # No public accessor for a client's transport: the one the SDK sends every request through.
    for client in (rt.export_service, rt.banenor_service):
        transport = client._pipeline._transport
        config = transport.connection_config
        connect = INTERACTIVE_CONNECT_SECONDS if interactive and client is rt.banenor_service else 20
        assert (config.timeout, config.read_timeout, config.verify) == (connect, 120, str(bundle))
        assert transport.session.trust_env is False  # no proxy variable set: requests skips the environment
        adapter = transport.session.get_adapter("https://example.blob.core.windows.net/")
        assert adapter.poolmanager.connection_pool_kw["maxsize"] == connection_pool_size(settings.relay)
        assert adapter.max_retries.total is False  # the client's retry policy retries, not urllib3


def test_a_proxy_variable_keeps_requests_reading_the_environment():
    from shared.runtime import Runtime

    rt = Runtime(Settings.load(base_env(HTTPS_PROXY="http://proxy.example:3128")))
    assert rt.export_service._pipeline._transport.session.trust_env is True
    assert rt.banenor_service._pipeline._transport.session.trust_env is True


def _proxy_in_front_of_exports(stack: Any) -> tuple[FaultProxy, str]:
    """A started proxy in front of the partner's Azurite account, and EXPORT_STORAGE through it."""
    conn = stack.settings["EXPORT_STORAGE"]
    endpoint = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)["BlobEndpoint"]
    parts = urlsplit(endpoint)
    tls = stack.workdir / "tls"
    proxy = FaultProxy(f"{parts.scheme}://{parts.netloc}", str(tls / "server.pem"), str(tls / "server-key.pem"),
                       stack.settings["REQUESTS_CA_BUNDLE"], name="EXPORT_STORAGE").start()
    return proxy, conn.replace(endpoint, proxy.url(endpoint))


@pytest.mark.stack
def test_a_sync_worth_of_concurrent_reads_opens_each_connection_once(relay_env, stack):
    relay_env.put("a.csv")
    proxy, through_proxy = _proxy_in_front_of_exports(stack)
    try:
        rt = relay_env.make(EXPORT_STORAGE=through_proxy, SYNC_CONCURRENCY=str(THREADS))
        blob = rt.exports.get_blob_client("a.csv")
        for _ in range(ROUNDS):
            _at_once(THREADS, blob.get_blob_properties)
        # requests' default pool keeps 10 per host: each round's 6 more threads would open 6 more connections
        assert proxy.requests["HEAD"] == THREADS * ROUNDS
        assert proxy.connections <= THREADS
    finally:
        proxy.stop()


@pytest.mark.stack
def test_a_sync_worth_of_new_connections_reads_the_trust_store_once(relay_env, stack, monkeypatch):
    relay_env.put("a.csv")
    proxy, through_proxy = _proxy_in_front_of_exports(stack)
    try:
        rt = relay_env.make(EXPORT_STORAGE=through_proxy, SYNC_CONCURRENCY=str(THREADS))
        blob = rt.exports.get_blob_client("a.csv")
        reads = count_bundle_reads(monkeypatch)
        _at_once(THREADS, blob.get_blob_properties)
        assert proxy.connections >= 2  # several new connections at once...
        # ...and one TLS context for them all: requests alone builds one per connection and reads the CA bundle
        # into each (certifi's bundle in Azure: 0.7 MiB each, as long as the connection lives)
        assert len(reads) == 1
    finally:
        proxy.stop()


@pytest.mark.stack
def test_a_sync_worth_of_concurrent_gateway_requests_opens_each_connection_once(relay_env, stack):
    proxy = proxy_for(stack, "BANENOR_STORAGE_URL")
    try:
        rt = relay_env.make(BANENOR_STORAGE_URL=proxy.url(stack.settings["BANENOR_STORAGE_URL"]),
                            SYNC_CONCURRENCY=str(THREADS))
        blob = rt.destination.get_blob_client(f"{relay_env.dest_prefix}absent.csv")
        blob.exists()  # the storage token first, so every round below is storage requests only
        proxy.clear()
        for _ in range(ROUNDS):
            _at_once(THREADS, blob.exists)
        assert proxy.requests["HEAD"] == THREADS * ROUNDS
        assert proxy.connections <= THREADS
    finally:
        proxy.stop()


# -- large exports in a sync ---------------------------------------------------------------------------------------
LARGE, SMALL = 6, 20


@pytest.mark.stack
def test_a_backlog_of_large_exports_copies_a_few_at_a_time_while_small_ones_flow(relay_env):
    # 160 MiB // (32 MiB x (1 + 1)) = 2 large exports at once; SINGLE_PUT_LIMIT 1 KiB makes 2 KiB "large"
    rt = relay_env.make(SYNC_CONCURRENCY="8", BLOCK_SIZE=str(32 * MIB), PARALLELISM="1", SINGLE_PUT_LIMIT="1024")
    for i in range(LARGE):  # listed first: a-... before b-...
        relay_env.put(f"a-large-{i}.csv", b"x" * 2048)
    for i in range(SMALL):
        relay_env.put(f"b-small-{i:02}.csv", b"x;y\n")
    lock = threading.Lock()
    smalls_delivered = threading.Event()
    seen = {"large": 0, "most": 0, "small": 0, "large_waited_for_smalls": 0}

    def deliver_listed(props: Any, failure: Any = None, receipts: Any = None) -> Outcome:
        """Holds each large export until every small one is delivered: so the small ones must get through while
        large ones are in flight, and the count of large ones in flight is the sync's bound, not timing's."""
        if props.size > 1024:
            with lock:
                seen["large"] += 1
                seen["most"] = max(seen["most"], seen["large"])
            if smalls_delivered.wait(HANG_GUARD):
                with lock:
                    seen["large_waited_for_smalls"] += 1
            with lock:
                seen["large"] -= 1
        else:
            with lock:
                seen["small"] += 1
                if seen["small"] == SMALL:
                    smalls_delivered.set()
        return Outcome("delivered", props.name, props.etag, size=props.size)

    rt.relay.deliver_listed = deliver_listed  # the sync's decisions and pool, with a delivery that counts
    summary = rt.relay.sync()
    assert summary.error is None and summary.delivered == LARGE + SMALL
    assert seen["most"] == 2  # all 6 at once without the bound (8 workers)
    assert seen["large_waited_for_smalls"] == LARGE  # the small ones were delivered while the large ones copied
