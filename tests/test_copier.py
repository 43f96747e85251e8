"""The copy engine against a real Azurite holding both accounts (partner source and Bane NOR destination): the
`stores` and `wire` fixtures (tests/conftest.py).

Every request the SDK sends is recorded from its raw_request_hook / raw_response_hook so tests can check
what went over the wire (conditions, block ids, bytes read) without mocking anything.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import (
    BlobClient,
)

from shared.copier import (
    Copier,
    CopyFailed,
    CopyOptions,
    DestinationExistsError,
    ServerCopyRefusedError,
    SourceChangedError,
    VerificationError,
    scrub,
)
from shared.errors import DeliveryError
from sim.azurite import free_port
from tests.helpers import MiB, Stores, Wire, payload

SMALL_BLOCKS = CopyOptions(block_size=1 * MiB, single_put_limit=1 * MiB, parallelism=4)


def copy(copier: Copier, stores: Stores, source: BlobClient, name: str = "out.bin", **kwargs):
    version = copier.read_source(source)
    kwargs.setdefault("metadata", {"source": "test"})
    return copier.copy(source, version, stores.dest(name), **kwargs)


# --- options ------------------------------------------------------------------------------------------


def test_default_options_are_valid() -> None:
    assert CopyOptions().validate() == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (CopyOptions(block_size=100 * 1000 * 1000 + 1), "per-request limit"),
        (CopyOptions(block_size=0), "block_size must be positive"),
        (CopyOptions(parallelism=0), "parallelism"),
        (CopyOptions(single_put_limit=200 * 1000 * 1000), "single_put_limit"),
        (CopyOptions(mode="fast"), "mode"),
    ],
)
def test_validate_names_each_bad_option(options: CopyOptions, fragment: str) -> None:
    assert any(fragment in problem for problem in options.validate())


def test_validate_accepts_a_block_of_exactly_the_request_limit() -> None:
    assert CopyOptions(block_size=100 * 1000 * 1000).validate() == []


def test_copier_refuses_invalid_options() -> None:
    with pytest.raises(ValueError, match="per-request limit"):
        Copier(CopyOptions(block_size=101 * 1000 * 1000))


def test_server_mode_without_a_sas_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="source_sas"):
        Copier(CopyOptions(mode="server"))


# --- stream mode --------------------------------------------------------------------------------------


def test_read_source_returns_the_version_from_one_properties_request(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("a.csv", b"a;b\n1;2\n", content_type="text/csv")
    wire.requests.clear()
    version = Copier(CopyOptions()).read_source(source)
    assert (version.name, version.size, version.content_type) == ("a.csv", 8, "text/csv")
    assert version.etag and version.content_md5 == hashlib.md5(b"a;b\n1;2\n").digest()
    assert [r.method for r in wire.requests] == ["HEAD"]


def test_small_file_goes_in_one_put_blob(stores: Stores, wire: Wire) -> None:
    data = payload(100_000)
    source = stores.put_source("small.bin", data)
    wire.requests.clear()
    result = copy(Copier(CopyOptions()), stores, source)
    puts = wire.of("destination", method="PUT")
    assert len(puts) == 1 and "comp" not in puts[0].query
    assert stores.dest("out.bin").download_blob().readall() == data
    assert (result.mode, result.blocks, result.size) == ("stream", 1, len(data))


def test_a_copy_in_one_put_blob_says_so_in_its_result(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("small.bin", payload(100_000))
    wire.requests.clear()
    result = copy(Copier(CopyOptions()), stores, source)
    assert len(wire.of("destination", method="PUT")) == 1
    assert result.single_put is True


def test_a_copy_in_blocks_says_it_was_not_one_put_blob(stores: Stores) -> None:
    source = stores.put_source("mid.bin", payload(int(3.5 * MiB)))
    result = copy(Copier(SMALL_BLOCKS), stores, source)
    assert result.blocks > 1 and result.single_put is False


def test_an_empty_file_is_one_put_blob_even_in_server_mode(stores: Stores) -> None:
    source = stores.put_source("empty.bin", b"")
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, mode="server"), source_sas=stores.source_sas)
    assert copy(copier, stores, source).single_put is True


def test_multi_block_copy_stores_equal_content_and_whole_file_md5(stores: Stores) -> None:
    data = payload(24 * MiB)
    source = stores.put_source("big.bin", data)
    result = copy(Copier(CopyOptions(block_size=4 * MiB)), stores, source)
    dest = stores.dest("out.bin")
    assert dest.download_blob(max_concurrency=2).readall() == data
    assert result.md5 == hashlib.md5(data).digest()
    assert bytes(dest.get_blob_properties().content_settings.content_md5) == result.md5
    assert (result.blocks, result.mode) == (6, "stream")


def test_multi_block_copy_stages_blocks_and_commits_once(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("mid.bin", payload(int(3.5 * MiB)))
    wire.requests.clear()
    copy(Copier(SMALL_BLOCKS), stores, source)
    assert len(wire.of("destination", comp="block")) == 4
    assert len(wire.of("destination", comp="blocklist", method="PUT")) == 1  # the GET looks for staged blocks
    assert all(r.headers.get("Content-MD5") for r in wire.of("destination", comp="block"))


def test_block_ids_are_base64_and_all_the_same_length(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("mid.bin", payload(int(3.5 * MiB)))
    copy(Copier(SMALL_BLOCKS), stores, source)
    ids = [r.query["blockid"][0] for r in wire.of("destination", comp="block")]
    assert len({len(i) for i in ids}) == 1 and len(set(ids)) == 4
    assert all(base64.b64decode(i, validate=True) for i in ids)


def test_source_reads_are_pinned_to_the_etag(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("mid.bin", payload(int(3.5 * MiB)))
    copier = Copier(SMALL_BLOCKS)
    version = copier.read_source(source)
    copier.copy(source, version, stores.dest("out.bin"), metadata={})
    gets = wire.of("source", method="GET")
    assert len(gets) == 4 and all(r.headers.get("If-Match") == version.etag for r in gets)


def test_ranges_of_a_source_without_content_md5_are_md5_validated(stores: Stores, wire: Wire) -> None:
    source = stores.put_source_without_md5("nomd5.bin", payload(int(2.5 * MiB)))
    result = copy(Copier(SMALL_BLOCKS), stores, source)
    gets = wire.of("source", method="GET")
    assert gets and all(r.headers.get("x-ms-range-get-content-md5") == "true" for r in gets)
    assert result.md5 == hashlib.md5(payload(int(2.5 * MiB))).digest()


def test_ranges_of_a_source_with_content_md5_rely_on_the_whole_file_check(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("md5.bin", payload(int(2.5 * MiB)))
    copy(Copier(SMALL_BLOCKS), stores, source)
    assert not any(r.headers.get("x-ms-range-get-content-md5") for r in wire.of("source", method="GET"))


def test_blocks_are_staged_in_parallel(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("par.bin", payload(8 * MiB))
    copy(Copier(SMALL_BLOCKS), stores, source)
    assert 2 <= wire.max_in_flight_blocks <= SMALL_BLOCKS.parallelism


def test_zero_byte_file_is_one_put_without_reading_the_source(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("empty.csv", b"")
    wire.requests.clear()
    result = copy(Copier(CopyOptions()), stores, source, name="empty.csv")
    assert wire.of("source", method="GET") == []
    assert stores.dest("empty.csv").get_blob_properties().size == 0
    assert result.md5 == hashlib.md5(b"").digest()


@pytest.mark.parametrize("size", [1000, int(2.5 * MiB)], ids=["put-blob", "block-list"])
def test_content_type_disposition_and_metadata_are_carried(stores: Stores, size: int) -> None:
    source = stores.put_source(
        "r.csv", payload(size), content_type="text/csv", content_disposition='attachment; filename="r.csv"'
    )
    copy(Copier(SMALL_BLOCKS), stores, source, metadata={"partner": "acme", "sourceetag": "x"})
    props = stores.dest("out.bin").get_blob_properties()
    assert props.content_settings.content_type == "text/csv"
    assert props.content_settings.content_disposition == 'attachment; filename="r.csv"'
    assert props.metadata == {"partner": "acme", "sourceetag": "x"}


@pytest.mark.parametrize("size", [1000, int(2.5 * MiB)], ids=["put-blob", "block-list"])
def test_create_only_sends_if_none_match_on_the_committing_request(
    stores: Stores, wire: Wire, size: int
) -> None:
    source = stores.put_source("c.bin", payload(size))
    wire.requests.clear()
    copy(Copier(SMALL_BLOCKS), stores, source)
    committing = [r for r in wire.of("destination", method="PUT") if r.query.get("comp") != ["block"]]
    assert [r.headers.get("If-None-Match") for r in committing] == ["*"]


@pytest.mark.parametrize("size", [1000, int(2.5 * MiB)], ids=["put-blob", "block-list"])
def test_create_only_refuses_a_second_different_write(stores: Stores, size: int) -> None:
    copier = Copier(SMALL_BLOCKS)
    first = payload(size, seed=1)
    copy(copier, stores, stores.put_source("c.bin", first))
    with pytest.raises(DestinationExistsError) as caught:
        copy(copier, stores, stores.put_source("c.bin", payload(size, seed=2)))
    assert caught.value.transient is False and caught.value.status in (409, 412)
    assert caught.value.same_content is False
    assert stores.dest("out.bin").download_blob().readall() == first


@pytest.mark.parametrize("size", [1000, int(2.5 * MiB)], ids=["put-blob", "block-list"])
def test_create_only_refusal_says_when_the_existing_blob_has_the_same_content(
    stores: Stores, size: int
) -> None:
    copier = Copier(SMALL_BLOCKS)
    source = stores.put_source("c.bin", payload(size))
    copy(copier, stores, source)
    with pytest.raises(DestinationExistsError) as caught:
        copy(copier, stores, source)
    assert caught.value.same_content is True


def test_overwrite_replaces_an_existing_destination(stores: Stores) -> None:
    copier = Copier(SMALL_BLOCKS)
    copy(copier, stores, stores.put_source("c.bin", payload(2 * MiB, seed=1)))
    second = payload(int(2.5 * MiB), seed=2)
    copy(copier, stores, stores.put_source("c.bin", second), overwrite=True)
    assert stores.dest("out.bin").download_blob().readall() == second


class RewritesAfterFirstRead:
    """A real source BlobClient whose blob is replaced by another writer right after the first ranged read.

    Doing the rewrite inside the read makes the race deterministic: a background writer would need sleeps
    and could land before the first read or after the last one.
    """

    def __init__(self, real: BlobClient, replacement: bytes) -> None:
        self.real, self.replacement, self.rewritten = real, replacement, False

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def download_blob(self, *args, **kwargs):
        downloader = self.real.download_blob(*args, **kwargs)
        if not self.rewritten:
            self.rewritten = True
            self.real.upload_blob(self.replacement, overwrite=True)
        return downloader


def test_source_rewritten_mid_copy_raises_source_changed_and_commits_nothing(stores: Stores) -> None:
    real = stores.put_source("moving.bin", payload(3 * MiB, seed=1))
    source = RewritesAfterFirstRead(real, payload(3 * MiB, seed=2))
    # One worker: the blocks after the first are read after the rewrite, so the If-Match pin must fire.
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, parallelism=1))
    version = copier.read_source(real)
    with pytest.raises(SourceChangedError) as caught:
        copier.copy(source, version, stores.dest("out.bin"), metadata={})
    assert caught.value.transient and caught.value.status == 412
    assert not stores.dest("out.bin").exists()


def test_stale_version_of_a_small_file_raises_source_changed(stores: Stores) -> None:
    source = stores.put_source("s.csv", b"old")
    copier = Copier(CopyOptions())
    version = copier.read_source(source)
    stores.put_source("s.csv", b"new")
    with pytest.raises(SourceChangedError):
        copier.copy(source, version, stores.dest("out.bin"), metadata={})
    assert not stores.dest("out.bin").exists()


def test_md5_differing_from_the_sources_content_md5_fails_verification_before_commit(stores: Stores) -> None:
    source = stores.put_source("m.bin", payload(int(2.5 * MiB)))
    copier = Copier(SMALL_BLOCKS)
    version = dataclasses.replace(copier.read_source(source), content_md5=b"\0" * 16)
    with pytest.raises(VerificationError):
        copier.copy(source, version, stores.dest("out.bin"), metadata={})
    assert not stores.dest("out.bin").exists()


def test_missing_destination_container_is_a_permanent_copy_failure(stores: Stores) -> None:
    source = stores.put_source("x.csv", b"1")
    copier = Copier(CopyOptions())
    dest = stores.dest_service.get_blob_client("no-such-container", "x.csv")
    with pytest.raises(CopyFailed) as caught:
        copier.copy(source, copier.read_source(source), dest, metadata={})
    err = caught.value
    assert (err.status, err.error_code, err.transient) == (404, "ContainerNotFound", False)
    assert err.side == "destination"
    assert isinstance(err, DeliveryError) and err.hint and err.__cause__ is not None


def test_a_refusal_from_bane_nors_side_gets_the_same_hint_from_the_copier_and_the_gateway_check(
        stores: Stores) -> None:
    from shared.storage import gateway_error

    source = stores.put_source("x.csv", b"1")
    copier = Copier(CopyOptions())
    dest = stores.dest_service.get_blob_client("no-such-container", "x.csv")
    with pytest.raises(CopyFailed) as caught:
        copier.copy(source, copier.read_source(source), dest, metadata={})
    with pytest.raises(ResourceNotFoundError) as probed:
        dest.get_blob_properties()  # a HEAD: the status without a storage error code
    with pytest.raises(ResourceNotFoundError) as listed:
        stores.dest_service.get_container_client("no-such-container").get_container_properties()
    assert caught.value.hint == gateway_error(listed.value, "x.csv").hint
    assert "BANENOR_CONTAINER" in gateway_error(probed.value, "x.csv").hint


def test_unreachable_destination_is_a_transient_copy_failure(stores: Stores) -> None:
    source = stores.put_source("x.csv", b"1")
    copier = Copier(CopyOptions())
    dest = BlobClient(f"http://127.0.0.1:{free_port()}/bnplmext", "c", "x.csv", retry_total=0)
    with pytest.raises(CopyFailed) as caught:
        copier.copy(source, copier.read_source(source), dest, metadata={})
    assert caught.value.transient and caught.value.status is None


def test_too_many_blocks_is_refused_before_any_request(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("x.bin", b"1")
    version = dataclasses.replace(Copier(CopyOptions()).read_source(source), size=50_001 * 1024)
    wire.requests.clear()
    with pytest.raises(CopyFailed, match="50000"):
        Copier(CopyOptions(block_size=1024, single_put_limit=0)).copy(
            source, version, stores.dest("out.bin"), metadata={}
        )
    assert wire.requests == []


def test_result_seconds_come_from_the_injected_clock(stores: Stores) -> None:
    ticks = iter([100.0, 102.5])
    result = copy(Copier(CopyOptions(), clock=lambda: next(ticks)), stores, stores.put_source("t", b"1"))
    assert result.seconds == 2.5


# --- server mode and auto fallback ----------------------------------------------------------------------


def test_server_mode_copies_without_the_bytes_passing_through(stores: Stores, wire: Wire) -> None:
    data = payload(int(2.5 * MiB))
    source = stores.put_source("srv.bin", data)
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, mode="server"), source_sas=stores.source_sas)
    result = copy(copier, stores, source)
    assert wire.bytes_received["source"] == 0
    assert all(r.headers.get("Content-Length") == "0" for r in wire.of("destination", comp="block"))
    assert (result.mode, result.blocks) == ("server", 3)
    assert stores.dest("out.bin").download_blob().readall() == data


def test_server_mode_pins_every_block_to_the_source_etag(stores: Stores, wire: Wire) -> None:
    source = stores.put_source("srv.bin", payload(int(2.5 * MiB)))
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, mode="server"), source_sas=stores.source_sas)
    version = copier.read_source(source)
    copier.copy(source, version, stores.dest("out.bin"), metadata={})
    pulls = wire.of("destination", comp="block")
    assert pulls and all(r.headers.get("x-ms-source-if-match") == version.etag for r in pulls)


def test_server_mode_stores_the_sources_content_md5(stores: Stores) -> None:
    data = payload(int(2.5 * MiB))
    source = stores.put_source("srv.bin", data, content_md5=bytearray(hashlib.md5(data).digest()))
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, mode="server"), source_sas=stores.source_sas)
    result = copy(copier, stores, source)
    assert result.md5 == hashlib.md5(data).digest()
    assert bytes(stores.dest("out.bin").get_blob_properties().content_settings.content_md5) == result.md5


def test_server_mode_with_a_stale_version_raises_source_changed(stores: Stores) -> None:
    source = stores.put_source("srv.bin", payload(int(2.5 * MiB), seed=1))
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, mode="server"), source_sas=stores.source_sas)
    version = copier.read_source(source)
    stores.put_source("srv.bin", payload(int(2.5 * MiB), seed=2))
    with pytest.raises(SourceChangedError) as caught:
        copier.copy(source, version, stores.dest("out.bin"), metadata={})
    assert caught.value.error_code == "SourceConditionNotMet"
    assert not stores.dest("out.bin").exists()


def test_server_mode_refusal_raises_without_the_sas_in_any_message(stores: Stores) -> None:
    source = stores.put_source("srv.bin", payload(int(2.5 * MiB)))
    copier = Copier(dataclasses.replace(SMALL_BLOCKS, mode="server"), source_sas=stores.forged_sas)
    with pytest.raises(ServerCopyRefusedError) as caught:
        copy(copier, stores, source)
    err = caught.value
    assert (err.status, err.error_code) == (403, "CannotVerifyCopySource")
    texts = [str(err), repr(err), str(err.__cause__), repr(err.__cause__)]
    assert not any("sig=" in t.lower() for t in texts)


def test_auto_falls_back_to_stream_when_the_destination_cannot_verify_the_source(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(int(2.5 * MiB))
    source = stores.put_source("auto.bin", data)
    copier = Copier(SMALL_BLOCKS, source_sas=stores.forged_sas)
    with caplog.at_level(logging.WARNING, logger="shared.copier"):
        result = copy(copier, stores, source)
    assert result.mode == "stream" and result.md5 == hashlib.md5(data).digest()
    assert stores.dest("out.bin").download_blob().readall() == data
    assert "CannotVerifyCopySource" in (copier.server_disabled_reason or "")
    assert not any("sig=" in r.getMessage().lower() for r in caplog.records)


def test_auto_remembers_the_fallback_and_warns_once(
    stores: Stores, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    source = stores.put_source("auto.bin", payload(int(2.5 * MiB)))
    copier = Copier(SMALL_BLOCKS, source_sas=stores.forged_sas)
    with caplog.at_level(logging.WARNING, logger="shared.copier"):
        copy(copier, stores, source, name="one.bin")
        wire.requests.clear()
        second = copy(copier, stores, source, name="two.bin")
    assert second.mode == "stream"
    assert all(not r.headers.get("x-ms-copy-source") for r in wire.of("destination"))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_auto_uses_server_copy_when_the_destination_can_pull(stores: Stores) -> None:
    source = stores.put_source("auto.bin", payload(int(2.5 * MiB)))
    copier = Copier(SMALL_BLOCKS, source_sas=stores.source_sas)
    assert copy(copier, stores, source).mode == "server"
    assert copier.server_disabled_reason is None


def test_auto_sends_small_files_in_one_put_blob_even_with_server_copy_available(stores: Stores) -> None:
    copier = Copier(CopyOptions(), source_sas=stores.source_sas)
    assert copy(copier, stores, stores.put_source("s.csv", b"1;2")).mode == "stream"


def test_auto_without_a_sas_provider_streams_and_says_why() -> None:
    assert "no source SAS" in (Copier(CopyOptions()).server_disabled_reason or "")


# --- scrubbing --------------------------------------------------------------------------------------------


def test_scrub_removes_sas_signatures_and_url_queries() -> None:
    text = "source https://a.blob.core.windows.net/c/b?sv=2025-01-05&sig=abc%2Bdef=&se=x failed; sig=zzz"
    cleaned = scrub(text)
    assert "abc" not in cleaned and "zzz" not in cleaned and "sv=2025" not in cleaned
    assert "https://a.blob.core.windows.net/c/b" in cleaned


def test_a_service_error_echoing_the_source_url_is_scrubbed_in_the_error_and_its_cause(
    stores: Stores,
) -> None:
    # Azurite answers a source URL it cannot parse with 400 InvalidHeaderValue and echoes the header value,
    # SAS signature included, in the error body: the worst case for a leak.
    source = stores.put_source("srv.bin", payload(int(2.5 * MiB)))
    server = dataclasses.replace(SMALL_BLOCKS, mode="server")
    copier = Copier(server, source_sas=lambda blob: "bad?sig=SECRETSIG")
    with pytest.raises(CopyFailed) as caught:
        copy(copier, stores, source)
    err = caught.value
    texts = [str(err), repr(err), str(err.__cause__), repr(err.__cause__), err.__cause__.message]
    assert err.status == 400 and not any("SECRETSIG" in t for t in texts)
