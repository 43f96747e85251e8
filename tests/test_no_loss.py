"""Issue 17: the cases where a file could be lost without a word, each on the real local stack.

- two exports with long names that map to one destination (the owner is compared in full, by digest);
- a gateway that acknowledges a write and stores nothing (no receipt without the destination's evidence);
- an archive that would overwrite an earlier archived version (each version gets its own name);
- long copies: the server copy's SAS and the delivery's claim are renewed while a copy runs, and a stream
  copy resumes from the blocks an earlier (killed) attempt staged.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.faultproxy import Fault, match, proxy_for

pytestmark = pytest.mark.stack


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


# -- 1. one destination, one owner, compared in full ---------------------------------------------------------

LONG = "å" * 100 + "/" + "ø" * 100 + "/"  # percent-encoded, the path alone is over 1,024 characters


def test_two_long_names_that_map_to_one_destination_never_overwrite_each_other(relay_env):
    first, second = LONG + "data_1.csv", LONG + "data 1.csv"  # both become .../data-1.csv at Bane NOR
    relay_env.put(first, b"first")
    relay_env.put(second, b"second")
    assert relay_env.rt.relay.deliver(first).status == "delivered"
    outcome = relay_env.rt.relay.deliver(second)
    assert outcome.status == "rejected"
    assert "already belongs to export" in outcome.reason
    landed = relay_env.landed("aa" * 100 + "/" + "oe" * 100 + "/data-1.csv")
    assert landed.download_blob().readall() == b"first"


def test_an_updated_long_named_export_still_replaces_its_own_earlier_delivery(relay_env):
    name = LONG + "daily.csv"
    relay_env.put(name, b"monday")
    assert relay_env.rt.relay.deliver(name).status == "delivered"
    relay_env.put(name, b"tuesday")
    assert relay_env.rt.relay.deliver(name).status == "delivered"
    landed = relay_env.landed("aa" * 100 + "/" + "oe" * 100 + "/daily.csv")
    assert landed.download_blob().readall() == b"tuesday"


def test_the_destination_records_a_digest_of_the_full_source_path(relay_env):
    name = LONG + "digest.csv"
    relay_env.put(name, b"x")
    relay_env.rt.relay.deliver(name)
    md = relay_env.landed("aa" * 100 + "/" + "oe" * 100 + "/digest.csv").get_blob_properties().metadata
    account = relay_env.rt.exports.account_name
    expected = hashlib.sha256(f"{account}\n{relay_env.rt.settings.exports.container}\n{name}".encode()).hexdigest()
    assert md["relay_source_digest"] == expected


# -- 2. no receipt on the gateway's word alone ---------------------------------------------------------------


@pytest.fixture
def lying_gateway(stack):
    """A proxy in front of the gateway that can answer a write with 201 and forward nothing."""
    proxy = proxy_for(stack, "BANENOR_STORAGE_URL")
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("mode", ["deliver", "sync"])
def test_a_gateway_that_acknowledges_and_stores_nothing_gets_no_receipt(relay_env, lying_gateway, mode):
    relay_env.put("small.csv", b"a;b\n1;2\n")
    rt = relay_env.make(BANENOR_STORAGE_URL=lying_gateway.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    lying_gateway.add(Fault("fake_ok", when=match("PUT"), times=None))
    if mode == "deliver":
        outcome = rt.relay.deliver("small.csv")
        assert outcome.status == "failed"
        assert "does not hold" in outcome.reason
    else:
        summary = rt.relay.sync()
        assert summary.delivered == 0 and summary.failed == 1
    version = rt.exports.get_blob_client("small.csv").get_blob_properties().etag
    assert rt.ledger.receipt("small.csv", version) is None
    assert not rt.ledger.delivered("small.csv", version)
    lying_gateway.clear()
    relay_env.clock.offset += 600  # the failure's backoff has passed
    assert rt.relay.sync().delivered == 1  # the next sync sends it again, for real
    assert relay_env.landed("small.csv").download_blob().readall() == b"a;b\n1;2\n"


def test_a_destination_without_the_bytes_md5_is_not_evidence(relay_env, lying_gateway):
    """A HEAD that answers the right size but no Content-MD5 proves nothing about the bytes."""
    relay_env.put("nomd5.csv", b"12345")
    rt = relay_env.make(BANENOR_STORAGE_URL=lying_gateway.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    lying_gateway.add(Fault("fake_ok", when=match("PUT"), times=None))
    lying_gateway.add(Fault("fake_ok", when=match("HEAD"), times=None,
                            headers={"Content-Length": "5", "x-ms-blob-type": "BlockBlob"}))
    assert rt.relay.deliver("nomd5.csv").status == "failed"


# -- 3. an archive never overwrites an archive --------------------------------------------------------------


def test_archiving_a_daily_export_keeps_every_days_version(relay_env):
    rt = relay_env.make(AFTER_DELIVERY="archive")
    relay_env.put("daily/report.csv", b"day 1")
    assert rt.relay.deliver("daily/report.csv").status == "delivered"
    relay_env.put("daily/report.csv", b"day 2")
    assert rt.relay.deliver("daily/report.csv").status == "delivered"
    archived = sorted(b.name for b in rt.archive.list_blobs(name_starts_with="daily/"))
    assert len(archived) == 2
    contents = {rt.archive.get_blob_client(n).download_blob().readall() for n in archived}
    assert contents == {b"day 1", b"day 2"}
    assert all(n.startswith("daily/report.") and n.endswith(".csv") for n in archived)


def test_an_archived_version_names_its_source_in_metadata(relay_env):
    rt = relay_env.make(AFTER_DELIVERY="archive")
    relay_env.put("monthly.csv", b"m")
    etag = rt.exports.get_blob_client("monthly.csv").get_blob_properties().etag
    rt.relay.deliver("monthly.csv")
    (archived,) = list(rt.archive.list_blobs(include=["metadata"]))
    assert archived.metadata["relay_source_name"] == "monthly.csv"
    assert archived.metadata["relay_source_etag"] == etag.strip('"')


def test_an_archive_name_already_taken_is_never_overwritten(relay_env):
    rt = relay_env.make(AFTER_DELIVERY="archive")
    relay_env.put("taken.csv", b"ours")
    props = rt.exports.get_blob_client("taken.csv").get_blob_properties()
    from shared.copier import SourceVersion
    from shared.relay import archive_name

    target = archive_name(SourceVersion.from_properties(props))
    rt.archive.get_blob_client(target).upload_blob(b"someone else's")
    assert rt.relay.deliver("taken.csv").status == "delivered"
    assert rt.archive.get_blob_client(target).download_blob().readall() == b"someone else's"
    assert rt.exports.get_blob_client("taken.csv").exists()  # not archived, so not removed either


def test_a_retried_archive_of_the_same_version_completes_the_move(relay_env):
    rt = relay_env.make(AFTER_DELIVERY="archive")
    relay_env.put("twice.csv", b"same")
    props = rt.exports.get_blob_client("twice.csv").get_blob_properties()
    from shared.copier import SourceVersion
    from shared.relay import archive_name

    target = archive_name(SourceVersion.from_properties(props))
    # An earlier attempt archived this very version, then stopped before removing the source.
    rt.archive.get_blob_client(target).start_copy_from_url(rt.relay.source_url(
        rt.exports.get_blob_client("twice.csv")), requires_sync=True,
        metadata={"relay_source_name": "twice.csv", "relay_source_etag": props.etag.strip('"')})
    assert rt.relay.deliver("twice.csv").status == "delivered"
    assert not rt.exports.get_blob_client("twice.csv").exists()
    assert rt.archive.get_blob_client(target).download_blob().readall() == b"same"


def test_an_empty_file_is_archived_too(relay_env):
    rt = relay_env.make(AFTER_DELIVERY="archive")
    relay_env.put("empty.csv", b"")
    assert rt.relay.deliver("empty.csv").status == "delivered"
    assert not rt.exports.get_blob_client("empty.csv").exists()
    assert len(list(rt.archive.list_blobs())) == 1


def test_archive_names_keep_the_extension_and_sort_by_time():
    import datetime as dt

    from shared.copier import SourceVersion
    from shared.relay import archive_name

    def version(day):
        return SourceVersion("in/report.csv", '"0x8DC1"', 1, None, None, None,
                             dt.datetime(2026, 11, day, 6, 30, 1, tzinfo=dt.UTC))

    first, second = archive_name(version(1)), archive_name(version(2))
    assert first == "in/report.20261101T063001Z.0x8DC1.csv"
    assert first < second
    no_ext = SourceVersion("README", '"e1"', 1, None, None, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert archive_name(no_ext) == "README.20260101T000000Z.e1"
