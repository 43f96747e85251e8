"""A listing page is parsed while its answer arrives (issue 26: a sync's peak memory must not follow the size of the
export listing's pages), and an answer cut off in its body is asked for again, a bounded number of times.

Memory is counted with tracemalloc (Python's own allocations, exact and independent of the machine's load), not RSS.
"""

from __future__ import annotations

import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient

from shared.listing import PAGE_READ_RETRIES, list_blobs
from tests.faultproxy import Fault, match
from tests.helpers import fast_runtime

ENTRIES = 1500
METADATA = {"note": "m" * 2000}  # 2 KB an entry: an answer of about 4 MB, most of it kept in the entries


@pytest.fixture(scope="module")
def listed(azurite):
    service = BlobServiceClient.from_connection_string(azurite.connection_string("partnerexports"))
    container = service.get_container_client(f"listing-{uuid.uuid4().hex[:12]}")
    container.create_container()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: container.upload_blob(f"exports/file-{i:05d}.csv", b"x", metadata=METADATA),
                      range(ENTRIES)))
    yield container
    container.delete_container()


def _answer_bytes(container) -> int:
    sizes: list[int] = []
    list(container.list_blobs(include=["metadata"], results_per_page=5000,
                              raw_response_hook=lambda r: sizes.append(len(r.http_response.body()))))
    return sum(sizes)


def test_a_page_is_never_held_whole_besides_its_entries(listed):
    answer = _answer_bytes(listed)
    list(list_blobs(listed, metadata=True))  # the client's first request and imports out of the count
    tracemalloc.start()
    try:
        entries = list(list_blobs(listed, metadata=True))
        held, _ = tracemalloc.get_traced_memory()
        del entries
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        count = sum(1 for _ in list_blobs(listed, metadata=True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == ENTRIES
    # Beside the page's own entries, the listing holds far less than its answer (reading the answer whole and then
    # parsing it held about twice the answer on top of the entries).
    assert peak - before - held < answer / 2, (peak - before, held, answer)


def test_a_page_is_let_go_as_it_is_read_and_before_the_next_is_asked_for(listed, monkeypatch):
    import gc

    from shared.listing import ListedBlob

    live_at_request: list[int] = []
    send = listed._client._send_request  # a probe on the real client: the request still goes to Azurite

    def counted(*args, **kwargs):
        live_at_request.append(sum(1 for o in gc.get_objects() if isinstance(o, ListedBlob)))
        return send(*args, **kwargs)

    monkeypatch.setattr(listed._client, "_send_request", counted)
    count = 0
    for _blob in list_blobs(listed, page_size=300):  # the sync's way: one entry at a time, none kept
        count += 1
    assert count == ENTRIES and len(live_at_request) == ENTRIES // 300
    # While a page is asked for and parsed, nothing of the one before is held but the entry in the caller's hands
    # (the whole page before: a 5,000-entry page is about 2.3 MiB, so 10,000 exports peaked 4 MiB above 1,500).
    assert max(live_at_request[1:]) <= 1, live_at_request


def test_what_entries_have_alike_is_held_once(listed):
    entries = list(list_blobs(listed, page_size=400))  # no metadata asked for; every export has one content type
    assert len({id(b.metadata) for b in entries}) == 1 and dict(entries[0].metadata) == {}
    assert len({id(b.content_type) for b in entries}) == 1
    with pytest.raises(TypeError):
        entries[0].metadata["x"] = "y"  # type: ignore[index]  # shared, so nobody may change it


def test_the_listing_reads_what_the_sdk_reads(listed):
    ours = [(b.name, b.size, b.content_md5, b.metadata, b.etag, b.last_modified, b.content_type,
             b.content_disposition) for b in list_blobs(listed, metadata=True, page_size=400)]
    sdk = [(b.name, b.size, bytes(b.content_settings.content_md5), b.metadata, b.etag, b.last_modified,
            b.content_settings.content_type, b.content_settings.content_disposition)
           for b in listed.list_blobs(include=["metadata"])]
    assert ours == sdk


def test_an_answer_cut_off_in_its_body_is_asked_for_again(relay_env, faults):
    relay_env.put("cut/a.csv", b"a")
    relay_env.put("cut/b.csv", b"b")
    rt = fast_runtime(relay_env, faults)
    cut = faults["EXPORT_STORAGE"].add(Fault("reset_response", _list_request, times=1, fraction=0.5))
    names = [b.name for b in list_blobs(rt.exports, "cut/")]
    assert cut.fired == 1
    assert names == ["cut/a.csv", "cut/b.csv"]


def test_an_answer_cut_off_every_time_ends_with_the_transport_error(relay_env, faults):
    relay_env.put("cut/a.csv", b"a")
    rt = fast_runtime(relay_env, faults)
    cut = faults["EXPORT_STORAGE"].add(Fault("reset_response", _list_request, times=None, fraction=0.5))
    with pytest.raises(AzureError):
        list(list_blobs(rt.exports, "cut/"))
    # each read is one request through the client's own retry policy (which retries a reset before the headers
    # too): bounded either way
    assert PAGE_READ_RETRIES + 1 <= cut.fired <= (PAGE_READ_RETRIES + 1) * 6


def _list_request(req) -> bool:
    return match("GET")(req) and req.comp == "list"

