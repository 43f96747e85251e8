"""Issue 26: a broken link is the link's state, not the files'; the relay heals itself once the cause is gone.

Through the fault proxies of the local stack (tests/faultproxy.py): Bane NOR's side refuses every write for a
while (403 AuthorizationPermissionMismatch: a role still propagating; 404 ContainerNotFound: Bane NOR redeploying;
503 CannotVerifyCopySource: the partner's storage throttled during a server-side copy). No file is poisoned, the
link's state is recorded once and logged once, and the next ordinary sync delivers every file by itself.
"""

from __future__ import annotations

import logging
import os

import pytest

from shared.storage import list_blob_pages
from shared.sync import START_WINDOW
from tests.faultproxy import Fault, match
from tests.helpers import dest_blobs, fast_runtime

pytestmark = pytest.mark.stack

NEXT_RUN = 60  # seconds between two ordinary timer runs: the relay's clock moves this much


def _lines(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def _put_many(env, count: int, folder: str = "w", size: int = 700) -> None:
    for i in range(count):
        env.put(f"{folder}/{i:04d}.csv", os.urandom(size))


@pytest.mark.parametrize(("status", "code"), [(403, "AuthorizationPermissionMismatch"), (404, "ContainerNotFound")])
def test_a_window_of_link_refusals_charges_no_file_and_the_next_sync_heals_by_itself(relay_env, faults, caplog,
                                                                                     status, code):
    _put_many(relay_env, 20)
    rt = fast_runtime(relay_env, faults)
    gateway = faults["BANENOR_STORAGE_URL"]
    gateway.add(Fault("status", match("PUT"), status=status, code=code, times=None))
    with caplog.at_level(logging.INFO):
        first = rt.relay.sync()
    assert first.error and first.link == "gateway", first
    assert first.poisoned == first.failed == 0
    assert rt.ledger.counts() == {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}
    broken = _lines(caplog, "link broken link=gateway")
    assert len(broken) == 1 and f"status={status}" in broken[0] and f"code={code}" in broken[0]
    [state] = rt.ledger.link_states()
    assert state.link == "gateway" and state.code == code

    gateway.clear()
    relay_env.clock.offset += NEXT_RUN
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = rt.relay.sync()
    assert second.ok and second.delivered == 20 and second.error is None, second
    assert len(_lines(caplog, "link restored link=gateway")) == 1
    assert rt.ledger.link_states() == []
    assert len(dest_blobs(relay_env)) == 20


def test_a_throttled_server_side_copy_is_transient_and_the_next_sync_delivers_every_file(relay_env, faults):
    from azure.storage.blob import LinearRetry

    from shared.storage import banenor_service_client

    _put_many(relay_env, 20, size=300 * 1024)
    gateway = faults["BANENOR_STORAGE_URL"]
    # Only the gateway behind its proxy: Azurite pulls a server-side copy from the source's own URL.
    rt = relay_env.make(COPY_MODE="server", SINGLE_PUT_LIMIT="0", BLOCK_SIZE="256KiB",
                        BANENOR_STORAGE_URL=gateway.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    rt.override(banenor_service=banenor_service_client(  # the product's builder, retries 50 ms apart
        rt.settings.banenor, rt.settings.http, rt.banenor_credential,
        retry_policy=LinearRetry(backoff=0.05, retry_total=2, random_jitter_range=0)))
    gateway.add(Fault("status", match("PUT", comp="block"), status=503, code="CannotVerifyCopySource",
                      retry_after="0", times=None))
    first = rt.relay.sync()
    assert first.poisoned == 0, first
    counts = rt.ledger.counts()
    assert counts["poisoned"] == 0
    for failure in rt.ledger.failures():
        assert "COPY_MODE" not in failure.last_error and "mode 'auto'" not in failure.last_error

    gateway.clear()
    relay_env.clock.offset += NEXT_RUN
    second = rt.relay.sync()
    assert second.ok, second
    assert rt.ledger.counts() == {"delivered": 20, "failed": 0, "poisoned": 0, "rejected": 0}


def test_a_link_broken_for_whole_runs_costs_a_few_writes_and_one_alert_line(relay_env, faults, caplog):
    _put_many(relay_env, 300, size=200)
    rt = fast_runtime(relay_env, faults)
    gateway = faults["BANENOR_STORAGE_URL"]
    refusal = gateway.add(Fault("status", match("PUT"), status=403, code="AuthorizationPermissionMismatch",
                                times=None))
    with caplog.at_level(logging.INFO):
        rt.relay.sync()
    assert refusal.fired <= 20, refusal.fired
    fired = refusal.fired
    relay_env.clock.offset += NEXT_RUN
    with caplog.at_level(logging.INFO):
        again = rt.relay.sync()
    assert again.link == "gateway"
    assert refusal.fired - fired <= 2, "a run on a link known to be broken probes it with one write"
    assert len(_lines(caplog, "link broken")) == 1
    assert rt.ledger.counts() == {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}


def test_a_link_broken_when_a_wide_run_starts_costs_at_most_the_start_window(relay_env, faults):
    # Each refusal takes its time, so every thread of a run that went wide at once would have sent its write before
    # the first one was refused: SYNC_CONCURRENCY writes, not START_WINDOW.
    _put_many(relay_env, 100, folder="wide", size=200)
    rt = fast_runtime(relay_env, faults, SYNC_CONCURRENCY="32")
    refusal = faults["BANENOR_STORAGE_URL"].add(Fault("slow_status", match("PUT"), status=403, stall=0.5,
                                                      code="AuthorizationPermissionMismatch", times=None))
    summary = rt.relay.sync()
    assert summary.link == "gateway"
    assert refusal.fired <= START_WINDOW, refusal.fired
    assert rt.ledger.counts() == {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}


def test_a_probe_of_a_link_recorded_broken_is_one_delivery_even_with_large_exports_first(relay_env, faults):
    for i in range(3):  # listed first, and above SINGLE_PUT_LIMIT: block copies with a bound of their own
        relay_env.put(f"probe/a-large-{i}.csv", b"x;y\n" * 512)
    _put_many(relay_env, 20, folder="probe/b", size=200)
    rt = fast_runtime(relay_env, faults, SINGLE_PUT_LIMIT="1024")
    refusal = faults["BANENOR_STORAGE_URL"].add(Fault("slow_status", match("PUT"), status=403, stall=0.5,
                                                      code="AuthorizationPermissionMismatch", times=None))
    assert rt.relay.sync().link == "gateway"
    fired = refusal.fired
    relay_env.clock.offset += NEXT_RUN
    assert rt.relay.sync().link == "gateway"
    assert refusal.fired - fired == 1, "a run on a link known to be broken probes it with one write"


def test_the_trigger_meeting_a_broken_link_returns_at_once_and_leaves_the_file_to_the_sync(relay_env, faults):
    relay_env.put("t/one.csv", b"a;b\n")
    rt = fast_runtime(relay_env, faults)
    gateway = faults["BANENOR_STORAGE_URL"]
    gateway.add(Fault("status", match("PUT"), status=403, code="AuthorizationPermissionMismatch", times=None))
    outcome = rt.relay.deliver("t/one.csv")
    assert outcome.status == "held" and "AuthorizationPermissionMismatch" in (outcome.reason or "")
    assert rt.ledger.failure("t/one.csv", outcome.source_etag) is None
    assert [s.link for s in rt.ledger.link_states()] == ["gateway"]
    gateway.clear()
    relay_env.clock.offset += NEXT_RUN
    assert rt.relay.sync().delivered == 1
    assert rt.ledger.link_states() == []


def test_a_refused_extension_is_still_rejected_at_once_and_never_sent(relay_env, faults):
    relay_env.put("bad/tool.exe", b"MZ")
    rt = fast_runtime(relay_env, faults)
    summary = rt.relay.sync()
    assert summary.rejected == 1 and summary.error is None
    assert faults["BANENOR_STORAGE_URL"].requests.get("PUT", 0) == 0
    assert rt.ledger.link_states() == []


# -- every loop has a bound ------------------------------------------------------------------------------------

def test_a_listing_with_an_endless_continuation_marker_ends(relay_env, faults):
    rt = fast_runtime(relay_env, faults)
    gateway = faults["BANENOR_STORAGE_URL"]
    endless = gateway.add(Fault("endless_listing", match("GET"), times=None))
    from azure.core.exceptions import HttpResponseError

    from shared.errors import RelayError

    with pytest.raises((RelayError, HttpResponseError)):
        for _ in list_blob_pages(rt.destination, "", 10):
            pass
    assert endless.fired <= 101


def test_the_receipt_check_ends_on_an_endless_listing_and_every_file_is_delivered(relay_env, faults, caplog):
    _put_many(relay_env, 20, size=300)
    rt = fast_runtime(relay_env, faults)
    gateway = faults["BANENOR_STORAGE_URL"]
    endless = gateway.add(Fault("endless_listing", lambda req: req.method == "GET" and req.comp == "list",
                                times=None))
    with caplog.at_level(logging.INFO):
        summary = rt.relay.sync()
    assert summary.delivered == 20 and summary.ok, summary
    assert endless.fired <= 200
    assert _lines(caplog, "sync summary")


def test_the_command_lines_first_check_of_the_gateway_ends_on_an_endless_listing(relay_env, faults):
    from shared import cli

    rt = fast_runtime(relay_env, faults)
    gateway = faults["BANENOR_STORAGE_URL"]
    endless = gateway.add(Fault("endless_listing", lambda req: req.method == "GET" and req.comp == "list",
                                times=None))
    cli.check_gateway(rt)
    assert endless.fired <= 2


def test_an_export_listing_with_an_endless_marker_ends_the_sync_with_its_summary(relay_env, faults, caplog):
    relay_env.put("e/one.csv", b"1")
    rt = fast_runtime(relay_env, faults)
    rt.ledger.ensure()
    exports = faults["EXPORT_STORAGE"]
    exports.add(Fault("endless_listing",
                      lambda req: req.method == "GET" and req.comp == "list" and "/exports-" in req.path,
                      times=None))
    with caplog.at_level(logging.INFO):
        summary = rt.relay.sync()
    assert summary.error and "NextMarker" in summary.error, summary
    assert exports.requests.get("GET", 0) <= 120
    assert _lines(caplog, "sync summary outcome=error")


# -- a superseded version is closed, not failed ------------------------------------------------------------------

def test_a_version_superseded_before_its_check_is_closed_and_leaves_no_failure(relay_env):
    from shared.destination import ListingEvidence
    from shared.receipts import ReceiptBuffer
    from shared.storage import list_blobs

    rt = relay_env.rt
    relay_env.put("s/report.csv", b"version one\n")
    [first] = list(list_blobs(rt.exports, "s/"))
    settled = []
    buffer = ReceiptBuffer(rt.ledger, evidence=ListingEvidence(rt.destination),
                           settled=lambda name, result: settled.append(result))
    assert rt.relay.deliver_listed(first, None, buffer) is None  # written; its evidence comes with its batch
    relay_env.put("s/report.csv", b"version two, a little longer\n")
    assert rt.relay.deliver("s/report.csv").status == "delivered"  # replaces version one at Bane NOR
    buffer.flush()
    assert [o.status for o in settled] == ["superseded"]
    assert rt.ledger.failure("s/report.csv", first.etag) is None
    assert rt.ledger.counts() == {"delivered": 1, "failed": 0, "poisoned": 0, "rejected": 0}


def test_a_sync_closes_the_failure_record_of_a_version_whose_successor_is_delivered(relay_env):
    rt = relay_env.rt
    relay_env.put("old/report.csv", b"one\n")
    old_etag = rt.exports.get_blob_client("old/report.csv").get_blob_properties().etag
    rt.ledger.record_failure("old/report.csv", old_etag, "Bane NOR's storage does not hold it as sent", 5)
    relay_env.put("old/report.csv", b"two\n")
    assert rt.relay.sync().delivered == 1
    assert rt.relay.sync().ok
    assert rt.ledger.counts() == {"delivered": 1, "failed": 0, "poisoned": 0, "rejected": 0}


# -- memory does not grow with the files delivered ----------------------------------------------------------------

def test_a_sync_summary_keeps_counts_and_only_what_needs_attention():
    from shared.delivery import Outcome
    from shared.sync import MAX_OUTCOMES, SyncSummary

    summary = SyncSummary()
    for i in range(10_000):
        summary.add(Outcome("delivered", f"f/{i}.csv", "0x1", size=10))
    summary.add(Outcome("failed", "f/bad.csv", "0x2", reason="503"))
    assert summary.delivered == 10_000 and summary.bytes == 100_000
    assert [o.source_name for o in summary.outcomes] == ["f/bad.csv"]
    for i in range(MAX_OUTCOMES + 5):
        summary.add(Outcome("rejected", f"r/{i}.exe", "0x3"))
    assert len(summary.outcomes) == MAX_OUTCOMES and summary.outcomes_left_out == 6
    assert summary.rejected == MAX_OUTCOMES + 5


# -- the command line does not call a slow partner storage broken --------------------------------------------------

def test_the_command_line_waits_for_a_partner_storage_that_answers_slowly(stack, tmp_path, faults):
    from tests.cli_runner import make_cli
    from tests.faultproxy import proxied_settings

    cli = make_cli(stack, tmp_path)
    exports = faults["EXPORT_STORAGE"]
    slow = exports.add(Fault("slow", lambda req: req.comp == "list" and req.query.get("maxresults") == "5000"
                             and "/cli-exports-" in req.path, stall=4.0, times=3))
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(cli.base["EXPORT_STORAGE"],
                                             connection_verify=cli.base["REQUESTS_CA_BUNDLE"]) \
        .get_container_client(cli.base["EXPORT_CONTAINER"]).get_blob_client("slow.csv").upload_blob(b"1\n")
    result = cli("sync", expect=0, EXPORT_STORAGE=proxied_settings(stack, faults)["EXPORT_STORAGE"])
    assert "delivered 1" in result.stdout
    assert slow.fired >= 1
