"""Issue 10 on the local stack: deliver and sync through the gateway simulator with the Bane NOR credential.

Each test gets its own export and ledger containers and its own destination folder (the `relay_env` fixture,
tests/conftest.py), so tests share one stack without seeing each other's files.
"""

import base64
import dataclasses
import hashlib
import os
import threading
import uuid

import pytest

from shared import destination

pytestmark = pytest.mark.stack


def md5(data):
    return hashlib.md5(data).digest()


def test_large_file_is_streamed_in_blocks_and_verified(relay_env):
    data = os.urandom(64 * 2**20)
    relay_env.put("large/export.csv", data, max_concurrency=4)
    rt = relay_env.make(COPY_MODE="stream")
    outcome = rt.relay.deliver("large/export.csv")
    assert outcome.status == "delivered"
    props = relay_env.landed("large/export.csv").get_blob_properties()
    assert props.size == len(data)
    assert bytes(props.content_settings.content_md5) == md5(data)
    assert props.metadata["relay_source_name"] == "large/export.csv"
    assert relay_env.landed("large/export.csv").download_blob(max_concurrency=4).readall() == data


def test_zero_byte_file_is_delivered(relay_env):
    relay_env.put("empty.txt", b"")
    assert relay_env.rt.relay.deliver("empty.txt").status == "delivered"
    assert relay_env.landed("empty.txt").get_blob_properties().size == 0


def test_content_type_and_disposition_are_carried_over(relay_env):
    from azure.storage.blob import ContentSettings

    relay_env.put("report.pdf", b"%PDF-1.7", content_settings=ContentSettings(
        content_type="application/pdf", content_disposition='attachment; filename="report.pdf"'))
    relay_env.rt.relay.deliver("report.pdf")
    settings = relay_env.landed("report.pdf").get_blob_properties().content_settings
    assert settings.content_type == "application/pdf"
    assert settings.content_disposition == 'attachment; filename="report.pdf"'


def test_sync_delivers_500_small_files_with_one_token_of_each_kind(relay_env):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: relay_env.put(f"batch/file-{i:03}.csv", f"{i}\n".encode()), range(500)))
    sky, entra = relay_env.stack.skyporten.token_requests, relay_env.stack.entra.token_requests
    summary = relay_env.rt.relay.sync()
    assert summary.delivered == 500 and summary.failed == 0
    assert relay_env.stack.skyporten.token_requests - sky == 1
    assert relay_env.stack.entra.token_requests - entra == 1
    again = relay_env.rt.relay.sync()
    assert again.already_delivered == 500 and again.delivered == 0


@pytest.mark.parametrize(("source", "expected"), [
    ("Målinger 2024_01 (rev B).csv", "Maalinger-2024-01-rev-B.csv"),
    ("kjørebok.xlsx", "kjoerebok.xlsx"),
    ("reise bok/ola´s reisebok.txt", "reise-bok/olas-reisebok.txt"),
])
def test_sanitize_policy_delivers_norwegian_spaced_and_underscored_names(relay_env, source, expected):
    relay_env.put(source)
    outcome = relay_env.rt.relay.deliver(source)
    assert outcome.status == "delivered"
    assert outcome.destination == relay_env.dest_prefix + expected
    assert relay_env.landed(expected).get_blob_properties().metadata["relay_source_name"]


def test_strict_policy_rejects_names_bane_nor_would_refuse(relay_env):
    relay_env.put("Målinger 2024_01.csv")
    rt = relay_env.make(NAME_POLICY="strict")
    outcome = rt.relay.deliver("Målinger 2024_01.csv")
    assert outcome.status == "rejected"
    assert rt.ledger.rejection("Målinger 2024_01.csv", outcome.source_etag) is not None


def test_two_sources_that_sanitise_to_one_name_never_overwrite_each_other(relay_env):
    relay_env.put("data_1.csv", b"first")
    relay_env.put("data 1.csv", b"second")
    first = relay_env.rt.relay.deliver("data_1.csv")
    second = relay_env.rt.relay.deliver("data 1.csv")
    assert first.status == "delivered"
    assert second.status == "rejected"
    assert "already belongs to export 'data_1.csv'" in second.reason
    assert relay_env.landed("data-1.csv").download_blob().readall() == b"first"


def test_refused_extension_is_recorded_once_and_never_uploaded(relay_env):
    relay_env.put("tool.exe", b"MZ")
    summary = relay_env.rt.relay.sync()
    assert summary.rejected == 1
    assert not relay_env.landed("tool.exe").exists()
    assert relay_env.rt.relay.sync().rejected == 1  # still rejected, not retried, not poisoned
    assert relay_env.rt.ledger.counts()["poisoned"] == 0


@pytest.mark.parametrize("name", ["x" * 300 + ".csv", "a/" * 3 + "\u202e.csv"])
def test_hostile_names_are_rejected_with_a_reason(relay_env, name):
    relay_env.put(name)
    outcome = relay_env.rt.relay.deliver(name)
    assert outcome.status == "rejected"
    assert outcome.reason


def test_export_rewritten_mid_copy_delivers_the_new_version_next_time(relay_env, monkeypatch):
    data = os.urandom(24 * 2**20)
    relay_env.put("moving.csv", data)
    rt = relay_env.make(COPY_MODE="stream", BLOCK_SIZE="4MiB")
    original = rt.copier.read_source

    def read_then_rewrite(source):
        version = original(source)
        relay_env.put("moving.csv", b"the new version\n")  # the partner rewrites the export right now
        return version

    monkeypatch.setattr(rt.copier, "read_source", read_then_rewrite)
    outcome = rt.relay.deliver("moving.csv")
    assert outcome.status == "failed"
    assert not relay_env.landed("moving.csv").exists()  # nothing partial was committed
    monkeypatch.undo()
    assert rt.relay.sync().delivered == 1
    assert relay_env.landed("moving.csv").download_blob().readall() == b"the new version\n"


def test_crash_after_commit_before_receipt_ends_with_one_receipt_and_no_second_copy(relay_env):
    relay_env.put("crash.csv", b"payload")
    rt = relay_env.rt
    outcome = rt.relay.deliver("crash.csv")
    etag_before = relay_env.landed("crash.csv").get_blob_properties().etag
    key = rt.ledger.key("crash.csv", outcome.source_etag)
    receipt_blob = rt.ledger.container.get_blob_client(f"receipts/{key}.json")
    receipt_blob.delete_blob()  # as if the process died between the commit and the receipt
    assert rt.relay.deliver("crash.csv").status == "in_progress"  # its claim outlives the dead process...
    relay_env.clock.offset += 3601  # ...until CLAIM_TTL has passed
    again = rt.relay.deliver("crash.csv")
    assert again.status == "already_delivered" and again.mode == "existing"  # the bytes were not sent again
    assert rt.ledger.receipt("crash.csv", outcome.source_etag) is not None
    assert relay_env.landed("crash.csv").get_blob_properties().etag == etag_before


def test_destination_with_a_foreign_file_of_the_same_name_is_never_overwritten(relay_env):
    relay_env.backend.get_blob_client(relay_env.dest_prefix + "theirs.csv").upload_blob(b"bane nor's own")
    relay_env.put("theirs.csv", b"ours")
    outcome = relay_env.rt.relay.deliver("theirs.csv")
    assert outcome.status == "poisoned"  # not transient: terminal at once (issue 18)
    assert "never overwritten" in outcome.reason
    assert relay_env.landed("theirs.csv").download_blob().readall() == b"bane nor's own"


def test_an_updated_export_replaces_the_earlier_delivery(relay_env):
    relay_env.put("daily.csv", b"monday")
    relay_env.rt.relay.deliver("daily.csv")
    relay_env.put("daily.csv", b"tuesday")
    assert relay_env.rt.relay.deliver("daily.csv").status == "delivered"
    assert relay_env.landed("daily.csv").download_blob().readall() == b"tuesday"


def test_a_lease_on_the_destination_is_a_failure_with_its_code_not_a_change(relay_env):
    relay_env.put("leased.csv", b"monday")
    relay_env.rt.relay.deliver("leased.csv")
    relay_env.put("leased.csv", b"tuesday")
    lease = relay_env.landed("leased.csv").acquire_lease(lease_duration=-1)  # Bane NOR's reader holds it
    try:
        outcome = relay_env.rt.relay.deliver("leased.csv")
    finally:
        lease.release()
    assert outcome.status == "failed" and "LeaseIdMissing" in outcome.reason
    assert relay_env.landed("leased.csv").download_blob().readall() == b"monday"


def test_an_update_never_overwrites_a_version_written_while_it_looked(relay_env, monkeypatch):
    relay_env.put("daily.csv", b"monday")
    relay = relay_env.rt.relay
    relay.deliver("daily.csv")
    relay_env.put("daily.csv", b"tuesday")
    look = destination.existing_delivery

    def look_then_a_newer_version_lands(dest, version, ours):
        found = look(dest, version, ours)
        monkeypatch.setattr(destination, "existing_delivery", look)  # once
        blob = relay_env.landed("daily.csv")  # another instance delivers a newer version right now
        metadata = dict(blob.get_blob_properties().metadata, relay_source_modified="2999-01-01T00:00:00.000000Z")
        blob.upload_blob(b"wednesday", overwrite=True, metadata=metadata)
        return found

    monkeypatch.setattr(destination, "existing_delivery", look_then_a_newer_version_lands)
    outcome = relay.deliver("daily.csv")
    assert outcome.status == "rejected" and "newer version" in outcome.reason
    assert relay_env.landed("daily.csv").download_blob().readall() == b"wednesday"


def test_eight_threads_delivering_one_blob_upload_it_once(relay_env):
    relay_env.put("once.csv", os.urandom(3 * 2**20))
    gateway = relay_env.stack.gateway
    puts_before = gateway.requests["PUT"]
    results = []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        results.append(relay_env.rt.relay.deliver("once.csv").status)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("delivered") == 1
    assert set(results) <= {"delivered", "in_progress", "already_delivered"}
    assert gateway.requests["PUT"] - puts_before == 1  # one Put Blob


def test_sync_racing_triggers_delivers_each_file_once(relay_env):
    for i in range(40):
        relay_env.put(f"race/{i}.csv", f"{i}".encode())
    outcomes = []
    sync_thread = threading.Thread(target=lambda: outcomes.append(relay_env.rt.relay.sync()))
    sync_thread.start()
    trigger_results = [relay_env.rt.relay.deliver(f"race/{i}.csv").status for i in range(40)]
    sync_thread.join()
    summary = outcomes[0]
    delivered = summary.delivered + trigger_results.count("delivered")
    assert delivered == 40
    assert relay_env.rt.ledger.counts()["delivered"] == 40


def test_an_acl_refusal_is_the_links_state_and_the_first_sync_after_the_grant_delivers(relay_env):
    stack = relay_env.stack
    relay_env.put("blocked.csv")
    rt = relay_env.make(MAX_ATTEMPTS="5")
    stack.gateway.revoke(stack.mi_object_id)  # Bane NOR has not set the ACL yet: 403 for every write (issue 26)
    try:
        first = rt.relay.sync()
        assert first.link == "gateway" and first.poisoned == first.failed == 0  # the link's, charged to no file
        relay_env.clock.offset += 3600
        assert rt.relay.sync().link == "gateway"  # probed again, still refused
        assert list(rt.ledger.failures()) == []
        [state] = rt.ledger.link_states()
        assert state.status == 403 and state.code == "AuthorizationPermissionMismatch"
    finally:
        stack.gateway.grant(stack.mi_object_id, "integration-dev", "partner-987654321")
    assert rt.relay.sync().delivered == 1  # no `retry`: the next run after the grant delivers
    assert rt.ledger.link_states() == []


def test_broken_trust_chain_stops_sync_early_and_charges_no_file(relay_env):
    for i in range(5):
        relay_env.put(f"chain/{i}.csv")
    rt = relay_env.make(BANENOR_CLIENT_ID=str(uuid.uuid4()))
    summary = rt.relay.sync()
    assert summary.error and "AADSTS700016" in summary.error
    assert summary.delivered == 0 and summary.failed == 0
    assert rt.ledger.counts() == {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}


def test_delete_after_delivery_removes_the_source_only_once_verified(relay_env):
    stack = relay_env.stack
    relay_env.put("gone.csv")
    relay_env.put("kept.csv")
    rt = relay_env.make(AFTER_DELIVERY="delete")
    assert rt.relay.deliver("gone.csv").status == "delivered"
    assert not rt.exports.get_blob_client("gone.csv").exists()
    stack.gateway.revoke(stack.mi_object_id)
    try:
        assert rt.relay.deliver("kept.csv").status == "held"  # an ACL refusal is the link's (issue 26)
    finally:
        stack.gateway.grant(stack.mi_object_id, "integration-dev", "partner-987654321")
    assert rt.exports.get_blob_client("kept.csv").exists()


def test_archive_after_delivery_moves_the_source(relay_env):
    relay_env.put("old.csv", b"archived")
    rt = relay_env.make(AFTER_DELIVERY="archive")
    assert rt.relay.deliver("old.csv").status == "delivered"
    assert not rt.exports.get_blob_client("old.csv").exists()
    (archived,) = [b.name for b in rt.archive.list_blobs()]  # under a name of its own version (issue 17)
    assert archived.startswith("old.") and archived.endswith(".csv")
    assert rt.archive.get_blob_client(archived).download_blob().readall() == b"archived"


def test_server_side_copy_moves_no_bytes_through_the_function(relay_env):
    data = os.urandom(20 * 2**20)
    relay_env.put("server.zip", data)
    rt = relay_env.make(COPY_MODE="server")
    outcome = rt.relay.deliver("server.zip")
    assert outcome.status == "delivered" and outcome.mode == "server"
    assert relay_env.landed("server.zip").download_blob().readall() == data


def test_auto_mode_falls_back_to_streaming_when_the_gateway_refuses_copy_source(relay_env):
    gateway = relay_env.stack.gateway
    relay_env.put("a.zip", os.urandom(12 * 2**20))
    relay_env.put("b.zip", os.urandom(12 * 2**20))
    rt = relay_env.make(COPY_MODE="auto")
    gateway.options.allow_copy_source = False
    try:
        first = rt.relay.deliver("a.zip")
        second = rt.relay.deliver("b.zip")
    finally:
        gateway.options.allow_copy_source = True
    assert (first.status, first.mode) == ("delivered", "stream")
    assert (second.status, second.mode) == ("delivered", "stream")
    assert rt.copier.server_disabled_reason


def test_receipt_records_the_delivery(relay_env):
    data = b"receipt me"
    relay_env.put("r.csv", data)
    outcome = relay_env.rt.relay.deliver("r.csv")
    receipt = relay_env.rt.ledger.receipt("r.csv", outcome.source_etag)
    assert receipt.size == len(data)
    assert receipt.md5 == base64.b64encode(md5(data)).decode()
    assert receipt.destination_path == relay_env.dest_prefix + "r.csv"
    assert receipt.destination_url.endswith("/payload-manager/v1/integration-dev/" + receipt.destination_path)


def test_missing_source_is_reported_not_failed(relay_env):
    assert relay_env.rt.relay.deliver("never-existed.csv").status == "missing"


def test_an_older_empty_version_never_replaces_a_newer_delivery(relay_env, monkeypatch):
    relay_env.put("report.csv", b"")  # the partner's tool creates the blob empty ...
    rt = relay_env.rt
    read_source = rt.relay.copier.read_source

    def content_written_and_delivered_meanwhile(source):
        empty_version = read_source(source)  # a trigger for the empty version has read it ...
        monkeypatch.setattr(rt.relay.copier, "read_source", read_source)  # (once)
        relay_env.put("report.csv", b"the real content\n")  # ... then the tool writes the content
        assert rt.relay.deliver("report.csv").status == "delivered"  # and a second trigger delivers it
        return empty_version

    monkeypatch.setattr(rt.relay.copier, "read_source", content_written_and_delivered_meanwhile)
    late = rt.relay.deliver("report.csv")  # the stale trigger goes on with the empty version
    assert late.source_etag != rt.exports.get_blob_client("report.csv").get_blob_properties().etag
    assert late.status != "delivered"
    assert relay_env.landed("report.csv").download_blob().readall() == b"the real content\n"


def test_a_file_delivered_from_another_container_is_never_overwritten(relay_env):
    relay_env.backend.get_blob_client(relay_env.dest_prefix + "shared.csv").upload_blob(
        b"team b's file", metadata={"relay_source_account": "partnerexports", "relay_source_container": "team-b",
                                   "relay_source_name": "shared.csv"})
    relay_env.put("shared.csv", b"team a's file")
    outcome = relay_env.rt.relay.deliver("shared.csv")
    assert outcome.status == "rejected"
    assert "team-b" in outcome.reason
    assert relay_env.landed("shared.csv").download_blob().readall() == b"team b's file"


def test_a_gateway_401_drops_the_cached_storage_token(relay_env):
    # Issue 29: the token is dropped where it is used, in Bane NOR's client (refused_token.RefusedTokenPolicy),
    # not by rebuilding the client from outside: the same client, and no refused token left in it.
    relay_env.put("denied.csv")
    rt, stack = relay_env.rt, relay_env.stack
    relay = rt.relay
    before = rt.destination
    stack.gateway.revoke_tokens(also_next=10)  # every token refused, the ones issued anew too
    try:
        assert relay.deliver("denied.csv").status == "held"  # the link's state, not the file's (issue 26)
    finally:
        stack.gateway.revoke_tokens(also_next=0)
    entra = stack.entra.token_requests
    rt.banenor_credential.get_token(rt.settings.banenor.storage_audience + "/.default")
    assert stack.entra.token_requests == entra + 1, "no refused token is left in the credential's cache"
    refused = stack.gateway.rejections["invalid_token"]
    assert relay.deliver("denied.csv").status == "delivered"
    assert relay.destination is before
    assert stack.gateway.rejections["invalid_token"] == refused  # its bearer policy held no refused token


def test_a_401_from_the_partners_own_storage_is_charged_to_the_file_not_the_trust_chain():
    from shared.copier import CopyFailed
    from shared.relay import is_link_refusal

    assert is_link_refusal(CopyFailed("x", status=401, side="destination"))
    assert not is_link_refusal(CopyFailed("x", status=401, side="source"))


# -- sync's small exports: an unclaimed delivery, the create-only write arbitrates -------------------------
def ledger_names(rt, prefix):
    return [b.name for b in rt.ledger.container.list_blobs(name_starts_with=prefix)]


def put_many(relay_env, count, prefix="small"):
    for i in range(count):
        relay_env.put(f"{prefix}/{i:02}.csv", f"{i};x\n".encode())


def test_sync_sends_small_exports_without_claims_and_writes_their_receipts_in_a_batch(relay_env):
    put_many(relay_env, 30)
    before = relay_env.stack.gateway.responses.copy()
    summary = relay_env.rt.relay.sync()
    assert summary.delivered == 30
    assert ledger_names(relay_env.rt, "claims/") == [] and ledger_names(relay_env.rt, "receipts/") == []
    assert len(ledger_names(relay_env.rt, "receipt-batches/")) == 1
    assert (relay_env.stack.gateway.responses - before)[("PUT", 201)] == 30


def test_a_sync_delivery_is_delivered_when_a_trigger_adopted_its_file_and_recorded_first(relay_env, monkeypatch):
    relay_env.put("raced.csv", b"monday\n")
    rt = relay_env.rt
    real = rt.ledger.record_receipt

    def a_trigger_adopts_the_file_and_records_first(receipt):
        real(dataclasses.replace(receipt, mode="existing"))  # the trigger found the sync's file at Bane NOR
        return real(receipt)

    monkeypatch.setattr(rt.ledger, "record_receipt", a_trigger_adopts_the_file_and_records_first)
    summary = rt.relay.sync()
    assert summary.delivered == 1 and summary.already_delivered == 0


def test_a_second_sync_skips_unclaimed_deliveries_without_a_request_to_the_gateway(relay_env):
    put_many(relay_env, 30)
    relay_env.rt.relay.sync()
    before = sum(relay_env.stack.gateway.requests.values())
    again = relay_env.rt.relay.sync()
    assert again.already_delivered == 30 and again.delivered == 0
    assert sum(relay_env.stack.gateway.requests.values()) == before


def test_sync_claims_an_export_larger_than_one_put_and_writes_its_receipt_at_once(relay_env):
    relay_env.put("big.csv", os.urandom(600 * 1024))
    rt = relay_env.make(SINGLE_PUT_LIMIT="256KiB", BLOCK_SIZE="256KiB")
    assert rt.relay.sync().delivered == 1
    assert len(ledger_names(rt, "claims/")) == 1  # a delivered version keeps its claim
    assert len(ledger_names(rt, "receipts/")) == 1 and ledger_names(rt, "receipt-batches/") == []


def test_sync_with_after_delivery_delete_writes_each_receipt_before_removing_the_source(relay_env):
    put_many(relay_env, 12)
    rt = relay_env.make(AFTER_DELIVERY="delete")
    assert rt.relay.sync().delivered == 12
    assert len(ledger_names(rt, "receipts/")) == 12 and ledger_names(rt, "receipt-batches/") == []
    assert list(rt.exports.list_blobs()) == []


def test_a_trigger_after_an_unclaimed_sync_delivery_finds_its_receipt_and_sends_nothing(relay_env):
    put_many(relay_env, 12)
    relay_env.rt.relay.sync()
    requests_before = sum(relay_env.stack.gateway.requests.values())
    outcome = relay_env.rt.relay.deliver("small/03.csv")
    assert outcome.status == "already_delivered"
    assert sum(relay_env.stack.gateway.requests.values()) == requests_before


def test_receipts_a_sync_could_not_write_are_recorded_by_the_next_without_sending_again(relay_env, monkeypatch):
    put_many(relay_env, 12)
    rt = relay_env.rt

    def down(ledger, batch):
        raise ConnectionError("partner storage unreachable")

    from shared import receipts

    monkeypatch.setattr(receipts, "record_receipts", down)
    first = rt.relay.sync()
    assert first.delivered == 12 and "receipts of 12 delivered versions" in first.error
    monkeypatch.undo()
    before = relay_env.stack.gateway.responses.copy()
    second = rt.relay.sync()
    assert second.already_delivered == 12 and second.error is None
    assert (relay_env.stack.gateway.responses - before)[("PUT", 201)] == 0
    assert rt.ledger.counts()["delivered"] == 12
