"""The batch: one pass over the export container, delivering what the ledger says is not done.

Lists lazily, skips delivered, rejected, poisoned and not-yet-due versions from three ledger listings, and
delivers the rest on SYNC_CONCURRENCY threads with a bounded number in flight; a broken trust chain stops the
pass and charges no file. Owns SyncSummary.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .delivery import Outcome, _is_trust_chain
from .destination import ListingEvidence
from .errors import RelayError, scrub
from .ledger import Ledger
from .receipts import ReceiptBuffer, compact_receipt_batches
from .storage import list_blobs

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger(__name__)


@dataclass
class SyncSummary:
    delivered: int = 0
    already_delivered: int = 0
    rejected: int = 0
    failed: int = 0
    poisoned: int = 0
    in_progress: int = 0
    missing: int = 0
    pending: int = 0  # failures waiting for their next retry time
    would_deliver: int = 0  # a dry run: new versions and due retries it would deliver
    bytes: int = 0
    seconds: float = 0.0
    listed: int = 0
    error: str | None = None
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status == "delivered":
            self.bytes += outcome.size
        if outcome.status != "already_delivered":
            self.outcomes.append(outcome)

    def counts(self) -> dict[str, Any]:
        """Every figure, without the outcomes (the summary's log line)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outcomes"}

    def as_dict(self) -> dict[str, Any]:
        return {**self.counts(), "outcomes": [o.as_dict() for o in self.outcomes]}

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0 and self.poisoned == 0


def run_sync(relay: Relay, summary: SyncSummary, dry_run: bool,
             progress: Callable[[Outcome], None] | None) -> None:
    """One pass: fills `summary`; raises the first trust-chain error."""
    options, ledger = relay.settings.relay, relay.ledger  # concurrency, prefix, suffix
    delivered = ledger.delivered_keys()
    rejected = {Ledger.key(r.source_name, r.source_etag) for r in ledger.rejections()}
    failures = {Ledger.key(f.source_name, f.source_etag): f for f in ledger.failures(delivered=delivered)}
    now = relay.clock()
    limit = options.sync_concurrency
    error: list[BaseException] = []
    lock = threading.Lock()

    def record(outcome: Outcome) -> None:
        with lock:
            summary.add(outcome)
        if progress:
            progress(outcome)

    def settled(name: str, result: Outcome | BaseException | None) -> None:
        """One delivery's end: its outcome (None: handed to the receipt batches, settled later), or what it raised."""
        if result is None:
            return
        if isinstance(result, Outcome):
            record(result)
        elif isinstance(result, RelayError) and _is_trust_chain(result):
            error.append(result)  # charges no file; a deferred delivery it caught is simply sent again
        elif isinstance(result, RelayError):
            record(Outcome("failed", name, reason=str(result)))
        elif isinstance(result, Exception):  # a ledger or listing hiccup for one file: report, keep going
            record(Outcome("failed", name, reason=f"{type(result).__name__}: {scrub(str(result))[:300]}"))
        else:
            raise result

    # Bounded: at most 2 x SYNC_CONCURRENCY deliveries submitted at a time, so a 100,000-blob container never piles
    # up work; each frees its slot as it ends.
    slots = threading.BoundedSemaphore(2 * limit)

    def run(blob: Any, failure: Any, receipts: ReceiptBuffer | None) -> None:
        try:
            if error:
                return
            try:
                result = relay.deliver_listed(blob, failure, receipts)
            except Exception as exc:
                result = exc
            settled(blob.name, result)
        finally:
            slots.release()

    # The evidence of the small deliveries comes with their receipt batches: a listing of Bane NOR's directory.
    # Checked and written on a thread of their own, so no delivery worker waits for a listing and a write.
    initializer = relay.pool_initializer and relay.pool_initializer()  # the invocation id, on every thread
    writer = None if dry_run else ThreadPoolExecutor(1, thread_name_prefix="relay-receipts", initializer=initializer)
    receipts = None if dry_run else ReceiptBuffer(ledger, evidence=ListingEvidence(relay.destination),
                                                  settled=settled, writer=writer)
    interrupted: BaseException | None = None
    try:
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="relay-sync", initializer=initializer) as pool:
            for blob in list_blobs(relay.exports, options.sync_prefix or None):  # the relay's own parse (storage.py)
                if error:
                    break
                if options.sync_suffix and not blob.name.endswith(options.sync_suffix):
                    continue
                key = Ledger.key(blob.name, blob.etag)
                failure = failures.get(key)
                if dry_run:  # the real decisions, each file with its reason; nothing written
                    with lock:
                        summary.listed += 1
                    record(relay.plan(blob, delivered=key in delivered, rejected=key in rejected,
                                      failure=failure, now=now))
                    continue
                skipped = ("already_delivered" if key in delivered else "rejected" if key in rejected
                           else "poisoned" if failure is not None and failure.poisoned
                           else "pending" if failure is not None and failure.next_retry_at > now else None)
                with lock:  # the workers update the same summary
                    summary.listed += 1
                    if skipped:
                        setattr(summary, skipped, getattr(summary, skipped) + 1)
                if skipped:
                    continue
                _take_slot(slots, receipts)
                try:
                    pool.submit(run, blob, failure, receipts)
                except BaseException:
                    slots.release()
                    raise
            for _ in range(2 * limit):  # every slot back: every delivery has ended
                _take_slot(slots, receipts)
    except BaseException as exc:
        interrupted = exc
        raise
    finally:
        if receipts is not None:
            try:
                receipts.flush()
            except RelayError as exc:
                if error or interrupted is not None:  # the first error is the one to report
                    log.error("sync: %s", exc)
                else:
                    raise
            finally:
                if writer is not None:
                    writer.shutdown(wait=True)
    if error:
        raise error[0]
    if receipts is not None and receipts.writes:
        try:
            compact_receipt_batches(ledger)
        except Exception as exc:  # housekeeping: the next sync that writes a batch tries again
            log.warning("receipt batches not compacted: %s: %s", type(exc).__name__, scrub(str(exc))[:200])


def _take_slot(slots: threading.BoundedSemaphore, receipts: ReceiptBuffer | None) -> None:
    """Wait for a free delivery slot; meanwhile check and write receipts that are due (a long copy must not hold
    the batch of the small ones back)."""
    while not slots.acquire(timeout=receipts.max_age if receipts else None):
        if receipts is not None:
            receipts.flush_due()
