"""Receipts of a sync's small exports, written in batches: one blob of JSON lines per up to 200 receipts.

A sync of 2,000 small files otherwise writes 2,000 receipt blobs, one request each: batching saves most of the
ledger's cost per file (bench/RESULTS.md). The same batches carry the evidence: a delivery handed over unverified
(`ReceiptBuffer.defer`) is checked with the rest of its batch against one listing of Bane NOR's directory
(`destination.ListingEvidence`) before its receipt is written and its outcome settled. Owns `ReceiptBuffer` (one
per sync run); the batches themselves are the ledger's (`Ledger.record_receipt_batch`, `compact_receipt_batches`,
under `receipt-batches/`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from .destination import ListingEvidence, Sent
from .errors import RelayError, scrub
from .ledger import Clock, Ledger, Receipt

log = logging.getLogger(__name__)

BATCH_MIN = 10  # fewer receipts than this go one by one: a batch blob would cost each reader a GET for little


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
    ledger.record_receipt_batch(receipts)


def compact_receipt_batches(ledger: Ledger, max_batches: int = 100, full: int = 1000) -> int:
    """Keep the number of batch blobs bounded (`Ledger.compact_receipt_batches`); returns how many were merged."""
    return ledger.compact_receipt_batches(max_batches, full)


@dataclass
class Unverified:
    """A delivery whose bytes the gateway acknowledged and whose evidence is still to come: what was `sent`, the
    `receipt` it gets once the destination shows it, and `settle`, which turns the verdict (None: shown as sent;
    else the error saying why not) into the delivery's outcome (recording a failure in the ledger if need be)."""

    sent: Sent
    receipt: Receipt
    settle: Callable[[BaseException | None], Any]


# Told each settled outcome, or the exception its `settle` raised (a broken chain of trust, a ledger error).
Settled = Callable[[str, Any], None]


class ReceiptBuffer:
    """The receipts of one `sync` run, written in batches: when `size` are pending, or when the oldest has waited
    `max_age` seconds, by the `writer` (a sync's one thread for this) or else by the worker thread that adds the
    last one; `flush()` waits for the writer and writes the rest. Thread-safe.

    One batch is written at a time: the other workers queue their receipts meanwhile. A batch that cannot be
    written stays pending, and no worker tries again for `max_age` seconds (so an outage of the ledger holds up
    one worker in the SDK's retries, not all of them); what `flush` cannot write raises RelayError.
    Those versions are delivered all the same: the next sync finds each at Bane NOR (a refused create-only write
    and the relay's metadata) and records its receipt then.

    Deliveries handed over with `defer` wait in the same batch for their evidence: the batch is checked with
    `evidence` first, each delivery settled (`Unverified.settle`, its result passed to `settled`), and only the
    receipts of those the destination shows go into the write.
    """

    def __init__(self, ledger: Ledger, size: int = 200, max_age: float = 5.0,
                 clock: Clock = time.monotonic, evidence: ListingEvidence | None = None,
                 settled: Settled | None = None, writer: Executor | None = None) -> None:
        self.ledger = ledger
        # Given (a sync): due batches are checked and written on this one thread, so no delivery worker waits for
        # a listing and a write; without it, by the thread that found the batch due.
        self.writer = writer
        self._background: list[Future] = []
        self.evidence = evidence
        self.settled = settled
        self.size = size
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: list[Receipt] = []
        self._unverified: list[Unverified] = []
        self._since = 0.0
        self._retry_at = 0.0  # after a failed write: no new attempt before this
        self._writing = False  # a batch write is under way: the others queue behind it
        self.writes = 0  # successful writes (a batch, or fewer than BATCH_MIN receipts one by one)

    @property
    def defers(self) -> bool:
        """Whether deliveries may be handed over unverified (`defer`): the buffer was given its evidence, and Bane
        NOR lets it list. Once a listing was refused, each delivery reads itself back on its own worker, in
        parallel, rather than one after another on the thread that checks the batch."""
        return self.evidence is not None and self.settled is not None and not self.evidence.listing_refused

    def add(self, receipt: Receipt) -> Receipt:
        """Queue `receipt`; returns it (the delivery compares it with what was stored, as with `record_receipt`)."""
        self._queue(receipt, deferred=False)
        return receipt

    def defer(self, delivery: Unverified) -> None:
        """Queue a delivery whose evidence is still to come; it is settled when its batch is checked."""
        self._queue(delivery, deferred=True)

    def _queue(self, item: Any, deferred: bool) -> None:
        with self._lock:
            if not self._pending and not self._unverified:
                self._since = self.clock()
            # The list is looked up under the lock: another thread may have just taken the one before (`_take`),
            # and an item put into a taken list is never settled nor written.
            (self._unverified if deferred else self._pending).append(item)
            if not self._due(full=True):
                return
            batch, unverified = self._take()
        self._hand_over(batch, unverified)

    def _take(self) -> tuple[list[Receipt], list[Unverified]]:
        """Under the lock: everything queued, and this thread now writes."""
        batch, unverified = self._pending, self._unverified
        self._pending, self._unverified, self._writing = [], [], True
        return batch, unverified

    def _due(self, full: bool) -> bool:
        """Under the lock: whether the queued receipts should be checked and written now."""
        now = self.clock()
        queued = len(self._pending) + len(self._unverified)
        if not queued or self._writing or now < self._retry_at:
            return False
        return (full and queued >= self.size) or now - self._since >= self.max_age

    def _check(self, unverified: list[Unverified]) -> list[Receipt]:
        """The evidence for a batch of deferred deliveries: settle each; returns the receipts of those shown."""
        if not unverified:
            return []
        assert self.evidence is not None and self.settled is not None
        try:
            verdicts = self.evidence([d.sent for d in unverified])
        except Exception as exc:  # the evidence reports per delivery; this is a bug's last resort: none verified
            verdicts = [exc] * len(unverified)
        shown = []
        for delivery, verdict in zip(unverified, verdicts, strict=True):
            try:
                result = delivery.settle(verdict)
            except Exception as exc:
                result = exc
            self.settled(delivery.receipt.source_name, result)
            if verdict is None:
                shown.append(delivery.receipt)
        return shown

    def flush_due(self) -> None:
        """Check and write what has waited `max_age`: `sync` calls this while it waits for copies, so small
        exports never wait behind a long one."""
        with self._lock:
            if not self._due(full=False):
                return
            batch, unverified = self._take()
        self._hand_over(batch, unverified)

    def _hand_over(self, batch: list[Receipt], unverified: list[Unverified]) -> None:
        if self.writer is None:
            self._check_and_write(batch, unverified)
            return
        future = self.writer.submit(self._check_and_write, batch, unverified)
        with self._lock:  # what a done one raised stays for `flush` to raise
            self._background = [f for f in self._background if not f.done() or f.exception() is not None] + [future]

    def flush(self) -> None:
        """Check and write everything queued, after the batches handed to the writer; raises RelayError (naming
        LEDGER_CONTAINER) if the write fails."""
        with self._lock:
            background, self._background = self._background, []
        for future in background:
            future.result()  # its own write errors are kept for this flush; what a `settled` raised, raises
        with self._lock:
            batch, unverified = self._pending, self._unverified
            self._pending, self._unverified = [], []
        batch = self._check(unverified) + batch
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

    def _check_and_write(self, batch: list[Receipt], unverified: list[Unverified]) -> None:
        try:
            shown = self._check(unverified)
        except BaseException:  # a settled callback raised (an interrupt, say): keep the receipts, stop writing
            with self._lock:
                self._pending[:0] = batch
                self._writing = False
            raise
        self._write_or_keep(shown + batch)

    def _write_or_keep(self, batch: list[Receipt]) -> None:
        if not batch:  # every deferred delivery in it failed its evidence
            with self._lock:
                self._writing = False
            return
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
