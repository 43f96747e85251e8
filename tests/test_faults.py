"""Issue 13, fault injection: a fault proxy between the relay and each dependency, on the real local stack.

Key Vault, Skyporten, Entra, the partner's storage and Bane NOR's gateway each sit behind a `FaultProxy`
(tests/faultproxy.py). For each fault the delivery retries or fails as designed, nothing partial is ever
visible at Bane NOR, and once the fault is gone one `sync` leaves every export version with exactly one
verified delivery and a consistent ledger. A seeded random run checks the same invariant.

The product has no setting for client timeouts or the storage SDK's retry backoff (15 s, 18 s, 24 s...),
so runtimes here are built with the product's own builders plus a short retry backoff and, for stalls,
a short read timeout (`fast_runtime`, tests/helpers.py). The proxies are the `proxies`/`faults` fixtures
(tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.errors import RelayError
from tests.faultproxy import Chaos, Fault, match
from tests.helpers import dest_blobs, fast_runtime

pytestmark = pytest.mark.stack

RETRY_WAIT = 600  # seconds the relay's clock moves so every failure's backoff (60, 120, 240, 480 s) is due


def assert_nothing_partial(env) -> int:
    """Every file visible at Bane NOR is some export's complete bytes (checked by MD5 against the source)."""
    seen = 0
    for path, blob in dest_blobs(env).items():
        source_name = blob.metadata["relay_source_name"]
        data = env.backend.get_blob_client(env.dest_prefix + path).download_blob().readall()
        source = env.rt.exports.get_blob_client(source_name).download_blob().readall()
        assert hashlib.md5(data).digest() == hashlib.md5(source).digest(), f"partial or mixed file at {path}"
        seen += 1
    return seen


def assert_one_verified_delivery_each(env, rt) -> None:
    """Every export version has one receipt and one destination file with its bytes; the ledger agrees."""
    sources = {b.name: b for b in env.rt.exports.list_blobs()}
    landed = dest_blobs(env)
    assert len(landed) == len(sources), sorted(set(landed) ^ set(sources))
    for name, blob in sources.items():
        receipt = rt.ledger.receipt(name, blob.etag)
        assert receipt is not None, f"no receipt for {name}"
        dest = env.backend.get_blob_client(receipt.destination_path)
        props = dest.get_blob_properties()
        data = dest.download_blob().readall()
        source = env.rt.exports.get_blob_client(name).download_blob().readall()
        assert data == source, f"{name}: delivered bytes differ"
        assert props.metadata["relay_source_etag"] == blob.etag.strip('"')
        assert receipt.md5 == base64.b64encode(hashlib.md5(source).digest()).decode()
    assert rt.ledger.counts() == {"delivered": len(sources), "failed": 0, "poisoned": 0, "rejected": 0}


def recover(env, rt) -> object:
    """Faults are off: make every failure due (the relay's clock moves, tokens stay cached), one sync."""
    rt.relay.preflight()  # a token from now, so the moved clock never signs a grant from the future
    env.clock.offset += RETRY_WAIT
    summary = rt.relay.sync()
    assert summary.error is None and summary.failed == 0 and summary.in_progress == 0, summary
    assert_one_verified_delivery_each(env, rt)
    return summary


# -- the proxies themselves ------------------------------------------------------------------------------

def test_every_dependency_is_reached_through_its_proxy(relay_env, faults):
    relay_env.put("plain.csv", b"a;b\n")
    before = {k: sum(p.requests.values()) for k, p in faults.items()}
    rt = fast_runtime(relay_env, faults)
    assert rt.relay.deliver("plain.csv").status == "delivered"
    for setting, proxy in faults.items():
        assert sum(proxy.requests.values()) > before[setting], f"{setting} was not proxied"
    assert_one_verified_delivery_each(relay_env, rt)


# -- transient faults the clients retry within one delivery -------------------------------------------------

TRANSIENT = [
    ("KEY_VAULT_URL", Fault("status", match("GET", "/secrets/"), status=503, retry_after="0")),
    ("KEY_VAULT_URL", Fault("reset", match("GET", "/secrets/"))),
    ("MASKINPORTEN_TOKEN_ENDPOINT", Fault("status", match("POST"), status=503)),
    ("MASKINPORTEN_TOKEN_ENDPOINT", Fault("reset_response", match("POST"))),
    ("BANENOR_AUTHORITY_HOST", Fault("status", match("POST", "/oauth2/v2.0/token"), status=503, retry_after="0")),
    ("BANENOR_AUTHORITY_HOST", Fault("reset", match("POST", "/oauth2/v2.0/token"))),
    ("EXPORT_STORAGE", Fault("reset_response", match("GET", "/exports-"))),
    ("EXPORT_STORAGE", Fault("status", match("GET", "/exports-"), status=500)),
    ("EXPORT_STORAGE", Fault("drop_answer", match("PUT", "/ledger-.*/receipts/"))),
    ("BANENOR_STORAGE_URL", Fault("status", match("PUT"), status=503)),
    ("BANENOR_STORAGE_URL", Fault("reset", match("PUT"))),
    ("BANENOR_STORAGE_URL", Fault("cut_request", match("PUT"))),
    ("BANENOR_STORAGE_URL", Fault("drop_answer", match("PUT"))),  # committed, the answer lost
]


@pytest.mark.parametrize(("setting", "fault"), TRANSIENT,
                         ids=[f"{s}-{f.action}-{f.status if f.action == 'status' else ''}" for s, f in TRANSIENT])
def test_one_transient_fault_is_retried_within_the_delivery(relay_env, faults, setting, fault):
    relay_env.put("once.csv", os.urandom(2048))
    rt = fast_runtime(relay_env, faults)
    faults[setting].add(fault)
    outcome = rt.relay.deliver("once.csv")
    assert fault.fired == 1
    assert outcome.status == "delivered", outcome.reason
    assert_one_verified_delivery_each(relay_env, rt)


def test_a_ledger_container_that_exists_is_enough_when_create_container_is_refused(relay_env, faults):
    relay_env.rt.ledger  # the container exists (created by the fixture's runtime)
    relay_env.put("scoped.csv")
    rt = fast_runtime(relay_env, faults)
    # A role scoped to the container: Create Container is refused (403), everything inside it is allowed.
    refused = faults["EXPORT_STORAGE"].add(Fault("status", match("PUT", r"^/[^/]+/ledger-[^/]+$"), status=403,
                                                 times=None))
    assert rt.relay.deliver("scoped.csv").status == "delivered"
    assert refused.fired == 1


def test_a_lost_answer_to_a_receipt_batch_write_is_not_an_error(relay_env, faults):
    for i in range(12):
        relay_env.put(f"batch/{i:02}.csv", f"{i}\n".encode())
    rt = fast_runtime(relay_env, faults)
    lost = faults["EXPORT_STORAGE"].add(Fault("drop_answer", match("PUT", "/ledger-.*/receipt-batches/")))
    summary = rt.relay.sync()
    assert lost.fired == 1  # the batch was stored; the SDK's retry of the create-only write met 409
    assert summary.error is None and summary.delivered == 12
    assert rt.ledger.counts()["delivered"] == 12
    batches = list(rt.ledger.container.list_blobs(name_starts_with="receipt-batches/"))
    assert len(batches) == 1


def test_skyporten_429_waits_as_long_as_retry_after_says(relay_env, faults):
    relay_env.put("throttled.csv")
    rt = fast_runtime(relay_env, faults)
    faults["MASKINPORTEN_TOKEN_ENDPOINT"].add(Fault("status", match("POST"), status=429, retry_after="7"))
    assert rt.relay.deliver("throttled.csv").status == "delivered"
    assert rt.sleeps.delays == [7.0]


def test_gateway_429_is_not_retried_by_the_sdk_but_recorded_and_delivered_by_the_next_sync(relay_env, faults):
    relay_env.put("busy.csv")
    rt = fast_runtime(relay_env, faults)
    fault = faults["BANENOR_STORAGE_URL"].add(Fault("status", match("PUT"), status=429, retry_after="1"))
    outcome = rt.relay.deliver("busy.csv")
    assert outcome.status == "failed" and "429" in outcome.reason
    assert fault.fired == 1  # the storage SDK does not retry 429 (nor honour Retry-After)
    assert rt.ledger.counts()["failed"] == 1
    assert dest_blobs(relay_env) == {}
    assert recover(relay_env, rt).delivered == 1


# -- lasting faults: the delivery fails as designed, then one sync recovers -----------------------------------

CHAIN = [
    ("KEY_VAULT_URL", match("GET", "/secrets/"), "Key Vault"),
    ("MASKINPORTEN_TOKEN_ENDPOINT", match("POST"), "Skyporten"),
    ("BANENOR_AUTHORITY_HOST", match("POST"), "Entra"),
]


@pytest.mark.parametrize("action", ["status", "reset"])
@pytest.mark.parametrize(("setting", "when", "what"), CHAIN, ids=[c[0] for c in CHAIN])
def test_a_trust_chain_outage_stops_sync_early_and_charges_no_file(relay_env, faults, setting, when, what,
                                                                   action):
    for i in range(4):
        relay_env.put(f"chain/{i}.csv", f"{i}\n".encode())
    rt = fast_runtime(relay_env, faults)
    faults[setting].add(Fault(action, when, status=503, retry_after="0", times=None))
    summary = rt.relay.sync()
    assert summary.error, summary
    assert summary.delivered == summary.failed == 0
    assert rt.ledger.counts() == {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}
    assert dest_blobs(relay_env) == {}
    faults[setting].clear()
    assert recover(relay_env, rt).delivered == 4


@pytest.mark.parametrize("action", ["status", "reset", "reset_response"])
def test_a_partner_storage_outage_on_the_exports_fails_the_delivery_and_one_sync_recovers(relay_env, faults,
                                                                                          action):
    relay_env.put("src/a.csv", os.urandom(4096))
    relay_env.put("src/b.csv", os.urandom(4096))
    rt = fast_runtime(relay_env, faults)
    rt.ledger.ensure()  # the ledger container exists before the outage
    faults["EXPORT_STORAGE"].add(Fault(action, match("GET", "/exports-.*/src/a"), status=500, times=None))
    summary = rt.relay.sync()
    assert summary.delivered == 1 and summary.failed == 1, summary
    assert set(dest_blobs(relay_env)) == {"src/b.csv"}
    faults["EXPORT_STORAGE"].clear()
    assert recover(relay_env, rt).delivered == 1


@pytest.mark.parametrize("action", ["status", "reset", "cut_request"])
def test_a_gateway_outage_fails_the_delivery_without_a_partial_file_and_one_sync_recovers(relay_env, faults,
                                                                                           action):
    for i in range(3):
        relay_env.put(f"gw/{i}.csv", os.urandom(3000))
    rt = fast_runtime(relay_env, faults)
    faults["BANENOR_STORAGE_URL"].add(Fault(action, match("PUT"), status=503, times=None))
    summary = rt.relay.sync()
    assert summary.failed == 3 and summary.error is None, summary
    assert rt.ledger.counts()["failed"] == 3
    assert dest_blobs(relay_env) == {}
    faults["BANENOR_STORAGE_URL"].clear()
    assert recover(relay_env, rt).delivered == 3


def test_a_block_upload_cut_half_way_commits_nothing_and_the_retry_commits_only_its_own_blocks(relay_env,
                                                                                              faults):
    data = os.urandom(2**20 + 1000)  # five 256 KiB blocks
    relay_env.put("big/blocks.csv", data)
    rt = fast_runtime(relay_env, faults, COPY_MODE="stream", BLOCK_SIZE="256KiB", SINGLE_PUT_LIMIT="0",
                      PARALLELISM="1")
    gateway = faults["BANENOR_STORAGE_URL"]
    cut = gateway.add(Fault("cut_request", match("PUT", comp="block"), skip=2, times=None))
    outcome = rt.relay.deliver("big/blocks.csv")
    assert outcome.status == "failed", outcome
    assert cut.fired >= 1
    assert gateway.injected["cut_request"] >= 1
    assert not relay_env.landed("big/blocks.csv").exists()  # two blocks staged, none committed
    assert dest_blobs(relay_env) == {}
    gateway.clear()
    assert recover(relay_env, rt).delivered == 1
    assert relay_env.landed("big/blocks.csv").download_blob().readall() == data


def test_a_lost_answer_to_the_block_list_commit_counts_the_commit_as_the_delivery(relay_env, faults):
    data = os.urandom(600 * 1024)
    relay_env.put("big/lost.csv", data)
    rt = fast_runtime(relay_env, faults, COPY_MODE="stream", BLOCK_SIZE="256KiB", SINGLE_PUT_LIMIT="0")
    lost = faults["BANENOR_STORAGE_URL"].add(Fault("drop_answer", match("PUT", comp="blocklist")))
    outcome = rt.relay.deliver("big/lost.csv")
    assert lost.fired == 1
    assert outcome.status == "delivered", outcome.reason
    assert_one_verified_delivery_each(relay_env, rt)


# -- stalls: each client's timeout catches them -------------------------------------------------------------

STALLS = [
    ("KEY_VAULT_URL", match("GET", "/secrets/")),
    ("MASKINPORTEN_TOKEN_ENDPOINT", match("POST")),
    ("BANENOR_AUTHORITY_HOST", match("POST")),
    ("EXPORT_STORAGE", match("GET", "/exports-")),
    ("BANENOR_STORAGE_URL", match("PUT")),
]


@pytest.mark.parametrize(("setting", "when"), STALLS, ids=[s[0] for s in STALLS])
def test_a_stall_past_the_read_timeout_is_retried_and_delivered(relay_env, faults, setting, when):
    relay_env.put("slow.csv")
    # The read timeout is short next to the stall (which the proxy holds until the client hangs up, at most a
    # minute) and long next to an answer on a loaded machine: only the stalled request times out.
    rt = fast_runtime(relay_env, faults, timeout=2.0)
    stall = faults[setting].add(Fault("stall", when, stall=60.0))
    outcome = rt.relay.deliver("slow.csv")
    assert stall.fired == 1
    assert stall.abandoned == 1  # the client gave up on the stalled request, it did not wait for the proxy
    assert outcome.status == "delivered", outcome.reason
    assert_one_verified_delivery_each(relay_env, rt)


# -- randomized --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [20240613])
def test_random_faults_everywhere_then_one_sync_delivers_every_version_exactly_once(relay_env, faults, seed):
    rng = random.Random(seed)
    files = {f"rnd/{i:03}-{rng.choice(['a', 'b', 'c'])}.csv": rng.randbytes(rng.randint(0, 3000)) for i in range(200)}
    names = list(files)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: relay_env.put(n, files[n]), names))
    rt = fast_runtime(relay_env, faults, timeout=2.0, SYNC_CONCURRENCY="4")
    rt.ledger.ensure()  # created before the faults start
    storage_actions = ("status", "reset", "reset_response", "cut_request", "drop_answer")
    token_actions = ("status", "reset", "reset_response")
    for setting, proxy in faults.items():
        storage = setting in ("EXPORT_STORAGE", "BANENOR_STORAGE_URL")
        # The token services see a few requests per walk of the chain: a higher rate so faults land there too.
        proxy.chaos(Chaos(random.Random(rng.random()), 0.08 if storage else 0.3,
                          storage_actions if storage else token_actions))
    outcomes: dict[str, int] = {}
    chain_errors = 0

    def deliver(name: str) -> str:
        try:
            return rt.relay.deliver(name).status
        except RelayError as exc:
            return "chain" if getattr(exc, "trust_chain", False) or type(exc).__name__ in (
                "SigningKeyError", "MaskinportenError", "EntraError") else f"raised {type(exc).__name__}"
        except Exception as exc:  # a ledger request that failed after the SDK's retries
            return f"raised {type(exc).__name__}"

    for start in range(0, len(names), 25):
        if rng.random() < 0.5:  # walk the whole chain again, under faults: key, grant, exchange
            rt.signing_keys.invalidate()
            rt.skyporten.invalidate()
            rt.banenor_credential.invalidate()
        with ThreadPoolExecutor(4) as pool:
            for status in pool.map(deliver, names[start:start + 25]):
                outcomes[status] = outcomes.get(status, 0) + 1
    chain_errors = outcomes.get("chain", 0)
    injected = {k: dict(p.injected) for k, p in faults.items()}
    for proxy in faults.values():
        proxy.clear()
    assert sum(sum(v.values()) for v in injected.values()) > 0
    visible = assert_nothing_partial(relay_env)
    print(f"random run seed={seed}: outcomes={outcomes} chain_errors={chain_errors} visible={visible} "
          f"injected={injected}")
    recover(relay_env, rt)
