"""Receipts of a sync's small exports, written in batches: one blob of JSON lines per up to 200 receipts.

A sync of 2,000 small files otherwise writes 2,000 receipt blobs, one request each: batching saves most of the
ledger's cost per file (bench/RESULTS.md). Owns `ReceiptBuffer` (one per sync run), the batch write and the
compaction that keeps the number of batch blobs bounded; `Ledger` reads batches (`receipt-batches/`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from .errors import RelayError, scrub
from .ledger import RECEIPT_BATCHES, Clock, Ledger, Receipt, _lower, _parse_batch

log = logging.getLogger(__name__)

BATCH_MIN = 10  # fewer receipts than this go one by one: a batch blob would cost each reader a GET for little
_JSON_LINES = ContentSettings(content_type="application/x-ndjson")


def record_receipts(ledger: Ledger, receipts: Sequence[Receipt]) -> None:
    """Write many receipts in one request: a blob of JSON lines under a unique name (create-only).

    Fewer than BATCH_MIN go one by one (`Ledger.record_receipt`). A version may end up with two receipts (its own
    and one in a batch, after two deliverers raced and one found the other's file at Bane NOR): readers take the
    union, so that is harmless.
    """
    if len(receipts) < BATCH_MIN:
        for receipt in receipts:
            ledger.record_receipt(receipt)
        return
    _write_batch(ledger, receipts)


def _write_batch(ledger: Ledger, receipts: Sequence[Receipt]) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ledger.clock()))
    blob = ledger.container.get_blob_client(f"{RECEIPT_BATCHES}{stamp}-{uuid.uuid4().hex}.jsonl")
    body = "".join(receipt.to_json() + "\n" for receipt in receipts)
    # None (409) can only mean our own write whose answer was lost and retried: the name is a fresh uuid4.
    ledger._create(blob, body, {"count": str(len(receipts))}, _JSON_LINES)


def compact_receipt_batches(ledger: Ledger, max_batches: int = 100, full: int = 1000) -> int:
    """Keep the number of batch blobs (each one a GET per process) bounded: when there are more than
    `max_batches`, merge every batch of fewer than `full` receipts into one new batch, then delete the merged ones
    (only if unchanged). Readers that meet a deleted batch list again and find the merged one; a crash in between
    leaves receipts twice, which readers tolerate. Returns how many batches were merged (0: one listing)."""
    every = list(ledger._list(RECEIPT_BATCHES))
    small = [b for b in every if int(_lower(b.metadata).get("count", "0")) < full]
    if len(every) <= max_batches or len(small) < 2:
        return 0
    merged: list[Receipt] = []
    sources = []
    for b in small:
        body = ledger._read(ledger.container.get_blob_client(b.name))
        if body is not None:
            merged.extend(_parse_batch(body))
            sources.append(b)
    _write_batch(ledger, merged)
    for b in sources:
        try:
            ledger.container.get_blob_client(b.name).delete_blob(etag=b.etag,
                                                                 match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass
    return len(sources)


class ReceiptBuffer:
    """The receipts of one `sync` run, written in batches: when `size` are pending, or when the oldest has waited
    `max_age` seconds, by the worker thread that adds the last one; `flush()` writes the rest. Thread-safe.

    One batch is written at a time: the other workers queue their receipts meanwhile. A batch that cannot be
    written stays pending, and no worker tries again for `max_age` seconds (so an outage of the ledger holds up
    one worker in the SDK's retries, not all of them); what `flush` cannot write raises RelayError.
    Those versions are delivered all the same: the next sync finds each at Bane NOR (a refused create-only write
    and the relay's metadata) and records its receipt then.
    """

    def __init__(self, ledger: Ledger, size: int = 200, max_age: float = 5.0,
                 clock: Clock = time.monotonic) -> None:
        self.ledger = ledger
        self.size = size
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: list[Receipt] = []
        self._since = 0.0
        self._retry_at = 0.0  # after a failed write: no new attempt before this
        self._writing = False  # a batch write is under way: the others queue behind it
        self.writes = 0  # successful writes (a batch, or fewer than BATCH_MIN receipts one by one)

    def add(self, receipt: Receipt) -> Receipt:
        """Queue `receipt`; returns it (the delivery compares it with what was stored, as with `record_receipt`)."""
        with self._lock:
            if not self._pending:
                self._since = self.clock()
            self._pending.append(receipt)
            if not self._due(full=True):
                return receipt
            batch, self._pending, self._writing = self._pending, [], True
        self._write_or_keep(batch)
        return receipt

    def _due(self, full: bool) -> bool:
        """Under the lock: whether the pending receipts should be written now."""
        now = self.clock()
        if not self._pending or self._writing or now < self._retry_at:
            return False
        return (full and len(self._pending) >= self.size) or now - self._since >= self.max_age

    def flush_due(self) -> None:
        """Write what has waited `max_age`: `sync` calls this while it waits for copies, so the receipts of small
        exports never wait behind a long one."""
        with self._lock:
            if not self._due(full=False):
                return
            batch, self._pending, self._writing = self._pending, [], True
        self._write_or_keep(batch)

    def flush(self) -> None:
        """Write everything pending; raises RelayError (naming LEDGER_CONTAINER) if that fails."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._write(batch)
        except Exception as exc:
            raise RelayError(
                f"the receipts of {len(batch)} delivered versions could not be written to the ledger "
                f"({type(exc).__name__}: {scrub(str(exc))[:200]})",
                hint="check access to LEDGER_CONTAINER; the next sync finds these deliveries at Bane NOR and "
                     "records them",
            ) from exc

    def _write_or_keep(self, batch: list[Receipt]) -> None:
        try:
            self._write(batch)
        except Exception as exc:  # partner storage hiccup: keep them for the next batch or the final flush
            with self._lock:
                if not self._pending:
                    self._since = self.clock()
                self._pending[:0] = batch
                self._retry_at = self.clock() + self.max_age
                self._writing = False
            log.warning("receipt batch of %d not written yet (%s: %s): kept for the next one", len(batch),
                        type(exc).__name__, scrub(str(exc))[:200])

    def _write(self, batch: list[Receipt]) -> None:
        record_receipts(self.ledger, batch)
        with self._lock:
            self.writes += 1
            self._writing = False
