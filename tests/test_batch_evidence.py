"""Issue 17, the evidence a sync's receipts rest on, at the cost of a listing per batch instead of a read-back per
file: a sync's small first deliveries are checked against one listing of Bane NOR's directory (size, Content-MD5,
the attempt id each was written with) before their receipts are written and their outcomes reported. Where the
identity may not list (an ACL with -wx and no r), each delivery is read back on its own, as before.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import pytest

from tests.faultproxy import Fault, match, proxy_for

pytestmark = pytest.mark.stack


@pytest.fixture
def gateway_counts(stack):
    """The gateway's request counter by method, as a difference from now."""
    before = Counter(stack.gateway.requests)
    return lambda: Counter(stack.gateway.requests) - before


@pytest.fixture
def no_listing(stack):
    """The gateway refuses List Blobs (403 AuthorizationPermissionMismatch), as an ACL without r on the directory
    does; put back afterwards (the stack is shared)."""
    stack.gateway.options.allow_listing = False
    yield
    stack.gateway.options.allow_listing = True


@pytest.fixture
def lying_gateway(stack):
    proxy = proxy_for(stack, "BANENOR_STORAGE_URL")
    yield proxy
    proxy.stop()


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def put_many(env, names):
    for name in names:
        env.put(name, f"{name};1\n".encode())


def test_a_sync_reads_its_small_deliveries_back_with_a_listing_not_a_request_each(relay_env, gateway_counts):
    names = [f"daily/file-{i:03d}.csv" for i in range(40)]
    put_many(relay_env, names)
    summary = relay_env.rt.relay.sync()
    assert summary.delivered == 40 and summary.failed == 0
    counts = gateway_counts()
    assert counts["PUT"] == 40
    assert counts["HEAD"] == 0  # no read-back per file
    # the listings: file-00* .. file-03*, one each (the credential's preflight does not reach the gateway)
    assert 1 <= counts["GET"] <= 4
    for name in names:
        assert relay_env.landed(name).download_blob().readall() == f"{name};1\n".encode()


def test_every_listed_delivery_gets_its_receipt(relay_env):
    names = [f"a/x-{i}.csv" for i in range(12)] + [f"b/y-{i}.csv" for i in range(12)]
    put_many(relay_env, names)
    assert relay_env.rt.relay.sync().delivered == 24
    ledger = relay_env.make().ledger
    for name in names:
        etag = relay_env.rt.exports.get_blob_client(name).get_blob_properties().etag
        assert ledger.delivered(name, etag)


def test_deliveries_in_several_directories_are_each_found(relay_env, gateway_counts):
    names = [f"{folder}/part-{i}.csv" for folder in ("north", "south", "west") for i in range(5)]
    put_many(relay_env, names)
    summary = relay_env.rt.relay.sync()
    assert summary.delivered == 15
    assert gateway_counts()["HEAD"] == 0


def test_a_write_the_gateway_acknowledged_but_never_stored_fails_and_the_rest_are_delivered(
        relay_env, lying_gateway):
    names = [f"mixed/file-{i}.csv" for i in range(20)]
    put_many(relay_env, names)
    rt = relay_env.make(BANENOR_STORAGE_URL=lying_gateway.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    lying_gateway.add(Fault("fake_ok", when=match("PUT", path=r"file-(3|7|11)\.csv$"), times=None))
    summary = rt.relay.sync()
    assert summary.delivered == 17 and summary.failed == 3
    failed = sorted(o.source_name for o in summary.outcomes if o.status == "failed")
    assert failed == ["mixed/file-11.csv", "mixed/file-3.csv", "mixed/file-7.csv"]
    assert all("does not hold" in o.reason for o in summary.outcomes if o.status == "failed")
    for name in failed:
        etag = rt.exports.get_blob_client(name).get_blob_properties().etag
        assert not rt.ledger.delivered(name, etag)
        assert rt.ledger.failure(name, etag) is not None  # retried by the next sync, after its backoff
    lying_gateway.clear()
    relay_env.clock.offset += 600
    assert rt.relay.sync().delivered == 3


def test_a_blob_at_the_destination_from_another_write_is_not_evidence(relay_env, lying_gateway, backend):
    """The listing shows a blob of the right name, but not the one this attempt wrote (another attempt id): a
    receipt needs this write's own id."""
    relay_env.put("race/report.csv", b"1;2\n")
    rt = relay_env.make(BANENOR_STORAGE_URL=lying_gateway.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    stale = backend.get_blob_client(relay_env.dest_prefix + "race/report.csv")

    def plant(_request):  # as the write goes out, the gateway acknowledges it and stores someone else's copy
        stale.upload_blob(b"1;2\n", overwrite=True, metadata={"relay_attempt": "someone-else"})
        return True

    lying_gateway.add(Fault("fake_ok", when=lambda req: req.method == "PUT" and plant(req), times=1))
    summary = rt.relay.sync()
    assert summary.failed == 1 and summary.delivered == 0
    assert "did not produce" in summary.outcomes[0].reason


def test_without_permission_to_list_each_delivery_is_read_back(relay_env, gateway_counts, no_listing):
    names = [f"acl/file-{i}.csv" for i in range(15)]
    put_many(relay_env, names)
    summary = relay_env.rt.relay.sync()
    assert summary.delivered == 15 and summary.failed == 0
    counts = gateway_counts()
    assert counts["HEAD"] == 15
    assert counts["GET"] == 1  # one refused listing, then no more tries in this run


def test_each_deferred_delivery_logs_its_one_outcome_line(relay_env, caplog):
    caplog.set_level(logging.INFO, logger="shared.relay")
    names = [f"log/file-{i}.csv" for i in range(11)]
    put_many(relay_env, names)
    relay_env.rt.relay.sync()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("delivery outcome=")]
    assert len(lines) == 11
    assert all("outcome=delivered" in line for line in lines)
    assert sorted(line.split(" source=")[1].split(" ")[0] for line in lines) == sorted(names)


def test_the_sync_progress_sees_each_outcome_once(relay_env):
    names = [f"progress/file-{i}.csv" for i in range(9)]
    put_many(relay_env, names)
    seen = []
    relay_env.rt.relay.sync(progress=seen.append)
    assert sorted(o.source_name for o in seen) == sorted(names)
    assert {o.status for o in seen} == {"delivered"}


def test_a_listing_crowded_by_other_files_stops_at_its_bound_and_reads_the_rest_back(relay_env, backend,
                                                                                     gateway_counts):
    """Bane NOR's directory already holds 400 other files that sort before this batch under its common prefix:
    the listing scans at most 2 entries per delivery plus 200, then reads what it did not reach back one by one."""
    from concurrent.futures import ThreadPoolExecutor

    def plant(i):
        backend.get_blob_client(f"{relay_env.dest_prefix}crowd/file-100-{i:03d}.csv").upload_blob(b"old")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(plant, range(400)))
    names = [f"crowd/file-100{i}.csv" for i in range(10)]  # listed from "file-100": the others come first
    put_many(relay_env, names)
    summary = relay_env.rt.relay.sync()
    assert summary.delivered == 10 and summary.failed == 0
    counts = gateway_counts()
    assert counts["HEAD"] == 10  # none reached within the bound: each read back
    assert counts["GET"] <= 2


def test_a_batch_of_numbered_files_is_listed_from_prefixes_that_start_where_it_starts():
    from shared.destination import listing_groups

    names = [f"d/file-{i:05d}.csv" for i in range(150, 350)]
    groups = listing_groups(names)
    assert [(g[0], g[-1]) for g in groups] == [
        *((f"d/file-00{t}0.csv", f"d/file-00{t}9.csv") for t in range(15, 20)),  # file-0015 .. file-0019
        ("d/file-00200.csv", "d/file-00299.csv"), ("d/file-00300.csv", "d/file-00349.csv")]
    assert sorted(n for g in groups for n in g) == names


def test_names_with_nothing_in_common_are_one_bounded_listing():
    from shared.destination import listing_groups

    names = sorted(f"d/{c}{i}.csv" for c in "abcdefghijklmnopqrstuvwxyz" for i in range(3))
    assert listing_groups(names) == [names]


# -- the listing itself: the same answer as the SDK's list_blobs, parsed for a tenth of the CPU -------------


def _sdk_view(container, prefix):
    return [(b.name, b.size, bytes(b.content_settings.content_md5) if b.content_settings.content_md5 else None,
             {k.lower(): v for k, v in (b.metadata or {}).items()})
            for b in container.list_blobs(name_starts_with=prefix, include=["metadata"])]


def _our_view(pages):
    return [(b.name, b.size, b.content_md5, {k.lower(): v for k, v in b.metadata.items()})
            for page in pages for b in page]


def test_the_evidence_listing_reads_what_the_sdk_listing_reads_page_by_page(relay_env):
    from shared.storage import list_blob_pages

    names = [f"pages/file-{i}.csv" for i in range(7)] + ["pages/empty.csv"]
    put_many(relay_env, names[:-1])
    relay_env.put("pages/empty.csv", b"")
    relay_env.rt.relay.sync()
    destination = relay_env.rt.destination
    prefix = relay_env.dest_prefix + "pages/"
    pages = list(list_blob_pages(destination, prefix, page_size=3))
    assert [len(p) for p in pages] == [3, 3, 2]  # NextMarker followed
    assert _our_view(pages) == _sdk_view(destination, prefix)
    assert all(b.metadata.get("relay_attempt") for p in pages for b in p)


def test_without_the_raw_request_method_the_sdk_listing_is_used(relay_env):
    from shared.storage import list_blob_pages

    put_many(relay_env, ["fallback/a.csv", "fallback/b.csv"])
    relay_env.rt.relay.sync()
    destination = relay_env.rt.destination
    prefix = relay_env.dest_prefix + "fallback/"

    class Wrapped:  # a ContainerClient of a future SDK without the generated client's _send_request
        def list_blobs(self, *args, **kwargs):
            return destination.list_blobs(*args, **kwargs)

    assert _our_view(list_blob_pages(Wrapped(), prefix, page_size=1)) == _sdk_view(destination, prefix)


def test_a_refused_listing_raises_the_storage_error_code(relay_env, no_listing):
    from azure.core.exceptions import HttpResponseError

    from shared.storage import list_blob_pages

    with pytest.raises(HttpResponseError) as caught:
        list(list_blob_pages(relay_env.rt.destination, relay_env.dest_prefix, page_size=10))
    assert caught.value.status_code == 403
    assert caught.value.error_code == "AuthorizationPermissionMismatch"
    with pytest.raises(HttpResponseError) as sdk:  # the SDK's own listing raises the same type
        list(relay_env.rt.destination.list_blobs(name_starts_with=relay_env.dest_prefix))
    assert type(caught.value) is type(sdk.value)


def test_a_missing_container_raises_what_the_sdks_listing_raises(relay_env):
    from azure.core.exceptions import ResourceNotFoundError

    from shared.storage import list_blobs

    missing = relay_env.rt.export_service.get_container_client("no-such-exports")
    with pytest.raises(ResourceNotFoundError) as caught:
        list(list_blobs(missing))
    assert caught.value.error_code == "ContainerNotFound"


def test_the_export_listing_reads_every_field_a_version_is_made_of_as_the_sdk_does(relay_env):
    """The sync's own listing of the partner's container (shared key here) gives each export's version exactly as
    the SDK's listing would: name, etag, size, last modified, Content-MD5, type and disposition."""
    from azure.storage.blob import ContentSettings

    from shared.copier import SourceVersion
    from shared.storage import list_blobs

    relay_env.put("fields/a.csv", b"1;2\n", content_settings=ContentSettings(
        content_type="text/csv", content_disposition="attachment; filename=a.csv", content_md5=md5(b"1;2\n")))
    relay_env.put("fields/b.json", b"{}")
    relay_env.put("other/c.csv", b"3")
    exports = relay_env.rt.exports
    ours = [SourceVersion.from_properties(b) for b in list_blobs(exports, "fields/", page_size=1)]
    theirs = [SourceVersion.from_properties(b) for b in exports.list_blobs(name_starts_with="fields/")]
    assert ours == theirs and len(ours) == 2
    assert [b.name for b in list_blobs(exports)] == ["fields/a.csv", "fields/b.json", "other/c.csv"]


def test_once_a_listing_is_refused_deliveries_read_themselves_back_in_parallel(relay_env, no_listing):
    """After Bane NOR refuses a listing, the run's buffer stops taking deliveries unverified: each reads itself back
    on its own worker, instead of one read-back after another on the thread that checks the batches."""
    from shared.copier import SourceVersion
    from shared.destination import ListingEvidence, Sent
    from shared.receipts import ReceiptBuffer

    rt = relay_env.rt
    relay_env.put("refused/a.csv", b"1;2\n")
    outcome = rt.relay.deliver("refused/a.csv")
    evidence = ListingEvidence(rt.destination)
    buffer = ReceiptBuffer(rt.ledger, evidence=evidence, settled=lambda name, result: None)
    assert buffer.defers
    version = SourceVersion.from_properties(rt.exports.get_blob_client("refused/a.csv").get_blob_properties())
    assert evidence([Sent(outcome.destination, version, version.size, md5(b"1;2\n"), None)]) == [None]
    assert evidence.listing_refused and not buffer.defers
