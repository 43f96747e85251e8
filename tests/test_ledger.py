"""The delivery ledger against real Azurite: create-only receipts, counted failures, claims, listings.

The `ledger` fixture (tests/conftest.py) is on a container of its own with an injected `clock`."""

from __future__ import annotations

import threading
import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from shared.ledger import RECEIPT_BATCHES, Failure, Ledger, Receipt, Rejection
from tests.helpers import ETAG, NAME, receipt, versions
from tests.helpers import LedgerClock as Clock

pytestmark = pytest.mark.stack


def new_ledger(ledger: Ledger, clock: Clock) -> Ledger:
    """Another instance on the same container, with its own client and connection (another worker)."""
    c = ledger.container
    service = BlobServiceClient(c.primary_endpoint.rsplit("/", 1)[0], credential=c.credential)
    return Ledger(service.get_container_client(c.container_name), clock=clock)


def run_together(count: int, work) -> list:
    """Start `count` threads at one barrier and collect their results."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


# -- keys and setup --------------------------------------------------------------------------
def test_key_is_name_hash_and_bare_etag() -> None:
    key = Ledger.key(NAME, ETAG)
    assert key.endswith("-0x8DC1234567890AB")
    assert len(key.split("-")[0]) == 40


def test_key_hashes_an_etag_that_is_not_filesystem_safe() -> None:
    key = Ledger.key(NAME, 'W/"a/b c"')
    assert key.split("-")[1].startswith("h")
    assert "/" not in key


def test_key_is_the_same_for_a_quoted_and_a_bare_unusual_etag() -> None:
    assert Ledger.key(NAME, '"a/b c"') == Ledger.key(NAME, "a/b c")


def test_key_differs_per_version_and_per_name() -> None:
    assert len({Ledger.key("a", "1"), Ledger.key("a", "2"), Ledger.key("b", "1")}) == 3


def test_ensure_is_idempotent(ledger: Ledger) -> None:
    ledger.ensure()
    assert ledger.container.exists()


# -- receipts --------------------------------------------------------------------------------
def test_receipt_round_trips_through_json() -> None:
    r = receipt()
    assert Receipt.from_json(r.to_json()) == r


def test_missing_receipt_is_none(ledger: Ledger) -> None:
    assert ledger.receipt(NAME, ETAG) is None


def test_recorded_receipt_reads_back(ledger: Ledger) -> None:
    ledger.record_receipt(receipt())
    assert ledger.receipt(NAME, ETAG) == receipt()


def test_second_receipt_for_the_same_version_returns_the_first(ledger: Ledger) -> None:
    first = ledger.record_receipt(receipt())
    second = ledger.record_receipt(receipt(delivered_at=9.0, destination_etag='"other"'))
    assert second == first
    assert ledger.receipt(NAME, ETAG) == first


def test_receipts_of_two_versions_are_separate(ledger: Ledger) -> None:
    ledger.record_receipt(receipt())
    ledger.record_receipt(receipt(etag='"0x2"'))
    assert ledger.receipt(NAME, '"0x2"') == receipt(etag='"0x2"')


def test_delivered_keys_lists_every_receipt(ledger: Ledger) -> None:
    ledger.record_receipt(receipt())
    ledger.record_receipt(receipt(name="b.csv", etag='"0x2"'))
    assert ledger.delivered_keys() == {Ledger.key(NAME, ETAG), Ledger.key("b.csv", '"0x2"')}


# Receipt batches as earlier versions wrote them for `sync` (nothing writes them now; a deployed ledger holds
# them, and during an upgrade an earlier instance may still write and compact them beside this one).
BATCH_MIN = 10


def write_batch(ledger: Ledger, receipts: list[Receipt]) -> None:
    """A batch blob in the layout earlier versions wrote: JSON lines under a unique name, create-only."""
    blob = ledger.container.get_blob_client(f"{RECEIPT_BATCHES}20261101T000000Z-{uuid.uuid4().hex}.jsonl")
    blob.upload_blob("".join(r.to_json() + "\n" for r in receipts).encode(), overwrite=False,
                     metadata={"count": str(len(receipts))})


def compact_as_an_earlier_version(ledger: Ledger) -> int:
    """What an earlier version's compaction did: merge every batch into a new one, then delete the merged."""
    every = list(ledger.container.list_blobs(name_starts_with=RECEIPT_BATCHES))
    merged = [Receipt.from_json(line) for b in every
              for line in ledger.container.get_blob_client(b.name).download_blob().readall().splitlines()]
    write_batch(ledger, merged)
    for b in every:
        ledger.container.get_blob_client(b.name).delete_blob()
    return len(every)


def test_delivered_keys_include_batched_receipts(ledger: Ledger) -> None:
    ledger.record_receipt(receipt())
    batch = versions(BATCH_MIN)
    write_batch(ledger, batch)
    expected = {Ledger.key(NAME, ETAG)} | {Ledger.key(r.source_name, r.source_etag) for r in batch}
    assert ledger.delivered_keys() == expected


def test_receipt_finds_a_batched_receipt(ledger: Ledger) -> None:
    batch = versions(BATCH_MIN)
    write_batch(ledger, batch)
    assert ledger.receipt(batch[3].source_name, batch[3].source_etag) == batch[3]


def test_receipt_finds_a_batched_receipt_by_an_etag_without_quotes(ledger: Ledger) -> None:
    batch = versions(BATCH_MIN)  # etags as Get Blob Properties gives them: quoted
    write_batch(ledger, batch)
    assert ledger.receipt(batch[3].source_name, batch[3].source_etag.strip('"')) == batch[3]


def test_each_batch_is_read_once_per_ledger(ledger: Ledger, monkeypatch) -> None:
    write_batch(ledger, versions(BATCH_MIN))
    ledger.delivered_keys()
    reads = []
    real = ledger.blobs.read
    monkeypatch.setattr(ledger.blobs, "read", lambda blob: reads.append(blob.blob_name) or real(blob))
    assert len(ledger.delivered_keys()) == BATCH_MIN
    assert [r for r in reads if r.startswith(RECEIPT_BATCHES)] == []


def test_a_batch_merged_by_a_compaction_while_it_is_read_is_found_in_the_merged_one(ledger: Ledger,
                                                                                     clock: Clock,
                                                                                     monkeypatch) -> None:
    for i in range(4):
        write_batch(ledger, versions(BATCH_MIN, prefix=f"b{i}"))
    expected = new_ledger(ledger, clock).delivered_keys()
    real = ledger.blobs.read

    def compaction_strikes_after_the_listing(blob):
        monkeypatch.setattr(ledger.blobs, "read", real)  # once
        assert compact_as_an_earlier_version(new_ledger(ledger, clock)) == 4
        return real(blob)

    monkeypatch.setattr(ledger.blobs, "read", compaction_strikes_after_the_listing)
    assert ledger.delivered_keys() == expected


def test_a_receipt_in_a_batch_merged_since_the_last_read_is_still_found(ledger: Ledger, clock: Clock) -> None:
    batches = [versions(BATCH_MIN, prefix=f"b{i}") for i in range(3)]
    for batch in batches:
        write_batch(ledger, batch)
    ledger.delivered_keys()  # this process has read (and remembers) the three batches
    compact_as_an_earlier_version(new_ledger(ledger, clock))
    wanted = batches[1][4]
    assert ledger.receipt(wanted.source_name, wanted.source_etag) == wanted


def test_delivered_knows_own_and_batched_receipts(ledger: Ledger) -> None:
    batch = versions(BATCH_MIN)
    write_batch(ledger, batch)
    ledger.record_receipt(receipt())
    assert ledger.delivered(NAME, ETAG) and ledger.delivered(batch[2].source_name, batch[2].source_etag)
    assert not ledger.delivered(NAME, '"0xOTHER"')


def test_a_version_with_two_receipts_counts_once(ledger: Ledger) -> None:
    batch = versions(BATCH_MIN)
    write_batch(ledger, batch)
    ledger.record_receipt(batch[0])
    assert ledger.counts()["delivered"] == BATCH_MIN


# -- failures --------------------------------------------------------------------------------
def test_first_failure_counts_one_and_backs_off_base(ledger: Ledger, clock: Clock) -> None:
    f = ledger.record_failure(NAME, ETAG, "503 ServerBusy", max_attempts=5)
    assert (f.attempts, f.poisoned, f.next_retry_at) == (1, False, clock.now + 60)
    assert f.first_failed_at == f.last_failed_at == clock.now


def test_backoff_doubles_per_attempt_and_caps_at_max(ledger: Ledger, clock: Clock) -> None:
    delays = []
    for _ in range(8):
        f = ledger.record_failure(NAME, ETAG, "boom", max_attempts=100)
        delays.append(f.next_retry_at - clock.now)
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_failure_reads_back_with_history(ledger: Ledger, clock: Clock) -> None:
    start = clock.now
    ledger.record_failure(NAME, ETAG, "first", max_attempts=5)
    clock.now += 100
    ledger.record_failure(NAME, ETAG, "second", max_attempts=5)
    assert ledger.failure(NAME, ETAG) == Failure(NAME, ETAG, 2, "second", start, start + 100, start + 220, False)


def test_not_poisoned_one_attempt_below_max(ledger: Ledger) -> None:
    for _ in range(2):
        f = ledger.record_failure(NAME, ETAG, "boom", max_attempts=3)
    assert not f.poisoned


def test_poisoned_when_attempts_reach_max(ledger: Ledger) -> None:
    for _ in range(3):
        f = ledger.record_failure(NAME, ETAG, "boom", max_attempts=3)
    assert f.poisoned
    assert ledger.failure(NAME, ETAG).poisoned


def test_error_text_is_truncated_to_500_characters(ledger: Ledger) -> None:
    ledger.record_failure(NAME, ETAG, "é" * 800, max_attempts=3)
    assert ledger.failure(NAME, ETAG).last_error == "é" * 500


def test_error_text_never_keeps_a_jwt(ledger: Ledger) -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIwMTkyOjEyMyJ9.c2lnbmF0dXJl"
    ledger.record_failure(NAME, ETAG, f"refused token {jwt} at gateway", max_attempts=3)
    text = ledger.failure(NAME, ETAG).last_error
    assert "eyJ" not in text
    assert text == "refused token [jwt] at gateway"


def test_concurrent_failures_are_all_counted(ledger: Ledger, clock: Clock) -> None:
    ledgers = [new_ledger(ledger, clock) for _ in range(4)]
    run_together(4, lambda i: ledgers[i].record_failure(NAME, ETAG, f"writer {i}", max_attempts=99))
    assert ledger.failure(NAME, ETAG).attempts == 4


def test_two_concurrent_first_failures_are_both_counted(ledger: Ledger, clock: Clock) -> None:
    ledgers = [new_ledger(ledger, clock) for _ in range(2)]
    results = run_together(2, lambda i: ledgers[i].record_failure(NAME, ETAG, "boom", max_attempts=99))
    assert sorted(f.attempts for f in results) == [1, 2]


def test_clear_failure_forgets_it(ledger: Ledger) -> None:
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=3)
    ledger.clear_failure(NAME, ETAG)
    assert ledger.failure(NAME, ETAG) is None


def test_clear_failure_without_one_is_harmless(ledger: Ledger) -> None:
    ledger.clear_failure(NAME, ETAG)
    assert ledger.failure(NAME, ETAG) is None


def test_failures_lists_state_from_metadata(ledger: Ledger) -> None:
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=1)
    ledger.record_failure("b.csv", '"0x2"', "bang", max_attempts=5)
    listed = {f.source_name: f for f in ledger.failures()}
    assert listed[NAME].poisoned and listed[NAME].last_error == "boom"
    assert listed["b.csv"] == ledger.failure("b.csv", '"0x2"')


# -- due retries and manual retry ------------------------------------------------------------
def test_a_failure_is_not_due_one_second_before_its_retry_time(ledger: Ledger, clock: Clock) -> None:
    f = ledger.record_failure(NAME, ETAG, "boom", max_attempts=5)
    clock.now = f.next_retry_at - 1
    assert list(ledger.due_retries()) == []


def test_a_failure_is_due_at_its_retry_time(ledger: Ledger, clock: Clock) -> None:
    f = ledger.record_failure(NAME, ETAG, "boom", max_attempts=5)
    clock.now = f.next_retry_at
    assert list(ledger.due_retries()) == [(NAME, ETAG)]


def test_a_poisoned_failure_is_never_due(ledger: Ledger, clock: Clock) -> None:
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=1)
    clock.now += 10**6
    assert list(ledger.due_retries()) == []


def test_retry_unpoisons_every_version_of_the_name_due_now(ledger: Ledger, clock: Clock) -> None:
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=1)
    ledger.record_failure(NAME, '"0x2"', "boom", max_attempts=1)
    ledger.record_failure("other.csv", ETAG, "boom", max_attempts=1)
    assert ledger.retry(NAME) == 2
    assert sorted(ledger.due_retries()) == sorted([(NAME, ETAG), (NAME, '"0x2"')])


def test_retry_gives_a_fresh_attempt_budget(ledger: Ledger) -> None:
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=2)
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=2)
    ledger.retry(NAME)
    assert not ledger.record_failure(NAME, ETAG, "boom", max_attempts=2).poisoned


def test_retry_leaves_failures_that_are_not_poisoned_alone(ledger: Ledger) -> None:
    before = ledger.record_failure(NAME, ETAG, "boom", max_attempts=5)
    assert ledger.retry(NAME) == 0
    assert ledger.failure(NAME, ETAG) == before


def test_retry_all_poisoned_counts_each(ledger: Ledger) -> None:
    ledger.record_failure(NAME, ETAG, "boom", max_attempts=1)
    ledger.record_failure("other.csv", ETAG, "boom", max_attempts=1)
    assert ledger.retry_all_poisoned() == 2
    assert ledger.counts()["poisoned"] == 0


# -- rejections ------------------------------------------------------------------------------
def test_rejection_is_recorded_and_read_back(ledger: Ledger, clock: Clock) -> None:
    r = ledger.record_rejection(NAME, ETAG, "the extension '.exe' is not allowed")
    assert r == Rejection(NAME, ETAG, "the extension '.exe' is not allowed", clock.now)
    assert ledger.rejection(NAME, ETAG) == r


def test_second_rejection_keeps_the_first(ledger: Ledger, clock: Clock) -> None:
    first = ledger.record_rejection(NAME, ETAG, "first reason")
    clock.now += 50
    assert ledger.record_rejection(NAME, ETAG, "second reason") == first


def test_rejections_lists_each(ledger: Ledger) -> None:
    ledger.record_rejection(NAME, ETAG, "æøå reason")
    assert [r.reason for r in ledger.rejections()] == ["æøå reason"]


# -- claims ----------------------------------------------------------------------------------
def test_only_one_of_eight_concurrent_claimants_wins(ledger: Ledger, clock: Clock) -> None:
    ledgers = [new_ledger(ledger, clock) for _ in range(8)]
    wins = run_together(8, lambda i: ledgers[i].try_claim(NAME, ETAG, f"worker-{i}", ttl=300))
    assert wins.count(True) == 1


def test_a_live_claim_is_refused_to_another_owner(ledger: Ledger, clock: Clock) -> None:
    assert ledger.try_claim(NAME, ETAG, "a", ttl=300)
    clock.now += 299
    assert not ledger.try_claim(NAME, ETAG, "b", ttl=300)


def test_an_expired_claim_is_taken_over(ledger: Ledger, clock: Clock) -> None:
    assert ledger.try_claim(NAME, ETAG, "a", ttl=300)
    clock.now += 300
    assert ledger.try_claim(NAME, ETAG, "b", ttl=300)
    assert not ledger.try_claim(NAME, ETAG, "a", ttl=300)


def test_only_one_of_several_claimants_takes_over_an_expired_claim(ledger: Ledger, clock: Clock) -> None:
    ledger.try_claim(NAME, ETAG, "dead", ttl=10)
    clock.now += 11
    ledgers = [new_ledger(ledger, clock) for _ in range(4)]
    wins = run_together(4, lambda i: ledgers[i].try_claim(NAME, ETAG, f"worker-{i}", ttl=300))
    assert wins.count(True) == 1


def test_the_owner_can_renew_its_claim(ledger: Ledger) -> None:
    assert ledger.try_claim(NAME, ETAG, "a", ttl=300)
    assert ledger.try_claim(NAME, ETAG, "a", ttl=300)


def test_released_claim_can_be_claimed_again(ledger: Ledger) -> None:
    ledger.try_claim(NAME, ETAG, "a", ttl=300)
    ledger.release_claim(NAME, ETAG, "a")
    assert ledger.try_claim(NAME, ETAG, "b", ttl=300)


def test_release_by_another_owner_leaves_the_claim(ledger: Ledger) -> None:
    ledger.try_claim(NAME, ETAG, "a", ttl=300)
    ledger.release_claim(NAME, ETAG, "b")
    assert not ledger.try_claim(NAME, ETAG, "b", ttl=300)


def test_claims_on_different_versions_are_independent(ledger: Ledger) -> None:
    assert ledger.try_claim(NAME, ETAG, "a", ttl=300)
    assert ledger.try_claim(NAME, '"0x2"', "b", ttl=300)


# -- overview --------------------------------------------------------------------------------
def test_counts_each_kind_of_record(ledger: Ledger) -> None:
    ledger.record_receipt(receipt())
    ledger.record_receipt(receipt(etag='"0x2"'))
    ledger.record_failure("f.csv", ETAG, "boom", max_attempts=5)
    ledger.record_failure("p.csv", ETAG, "boom", max_attempts=1)
    ledger.record_rejection("r.exe", ETAG, "extension")
    ledger.try_claim("c.csv", ETAG, "a", ttl=300)
    assert ledger.counts() == {"delivered": 2, "failed": 1, "poisoned": 1, "rejected": 1}


def test_an_empty_ledger_counts_zero(ledger: Ledger) -> None:
    assert ledger.counts() == {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}


def test_repr_names_only_the_container(ledger: Ledger) -> None:
    assert repr(ledger) == f"Ledger(container={ledger.container.container_name!r})"


def test_a_failure_recorded_before_a_later_delivery_is_not_counted(ledger: Ledger) -> None:
    ledger.record_failure(NAME, ETAG, "503 from a racing trigger", max_attempts=5)
    ledger.record_receipt(receipt())
    assert ledger.counts()["failed"] == 0
    assert list(ledger.failures()) == []
