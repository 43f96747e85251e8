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
from typing import Any, Protocol

from .delivery import Outcome
from .destination import ListingEvidence
from .errors import LinkDown, RelayError, scrub
from .ledger import SKIPPED, Ledger, standing
from .listing import list_blobs
from .receipts import ReceiptBuffer, compact_receipt_batches

log = logging.getLogger(__name__)


class Host(Protocol):
    """What the batch needs of its orchestrator (`shared.relay.Relay` is one): the settings, the ledger and the links'
    state, the two containers, the clock, and the two decisions per listed version it hands back down (deliver it,
    or, in a dry run, plan it)."""

    settings: Any
    ledger: Ledger
    links: Any
    exports: Any
    destination: Any
    clock: Callable[[], float]
    pool_initializer: Callable[[], Callable[[], None] | None] | None

    def deliver_listed(self, props: Any, failure: Any = None, receipts: ReceiptBuffer | None = None) -> Outcome | None:
        ...

    def plan(self, props: Any, *, delivered: bool, rejected: bool, failure: Any, now: float) -> Outcome:
        ...


# The outcomes a summary keeps (with their reasons): what needs attention, and a dry run's plan.
ATTENTION = ("rejected", "failed", "poisoned", "missing", "in_progress", "held", "would_deliver")
MAX_OUTCOMES = 1000
# A window of transient failures on one link, none delivered in between, this long: the link is down for this run.
TRANSIENT_TRIP = 5


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
    held: int = 0  # met a broken link: left for the next run, nothing charged
    superseded: int = 0  # a newer version of the export came first; nothing owed for this one
    bytes: int = 0
    seconds: float = 0.0
    listed: int = 0
    error: str | None = None
    link: str | None = None  # the broken link that stopped the run (doctor's name), if one did
    outcomes_left_out: int = 0  # outcomes needing attention past MAX_OUTCOMES (counted above, not kept)
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def add(self, outcome: Outcome) -> None:
        """Count an outcome; keep it only when it needs attention, and at most MAX_OUTCOMES of them: a run's
        memory does not grow with the files it delivers."""
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status == "delivered":
            self.bytes += outcome.size
        if outcome.status in ATTENTION:
            if len(self.outcomes) < MAX_OUTCOMES:
                self.outcomes.append(outcome)
            else:
                self.outcomes_left_out += 1

    def counts(self) -> dict[str, Any]:
        """Every figure, without the outcomes (the summary's log line)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outcomes"}

    def as_dict(self) -> dict[str, Any]:
        return {**self.counts(), "outcomes": [o.as_dict() for o in self.outcomes]}

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0 and self.poisoned == 0


def run_sync(relay: Host, summary: SyncSummary, dry_run: bool,
             progress: Callable[[Outcome], None] | None, probe: bool = False) -> None:
    """One pass: fills `summary`; raises the first refusal about a link (RelayError with `link`), or LinkDown
    when TRANSIENT_TRIP transient failures on one link came in a row. `probe`: a link was recorded broken, so
    the first delivery runs alone, and the run goes wide only once it got through."""
    options, ledger = relay.settings.relay, relay.ledger  # concurrency, prefix, suffix
    delivered = ledger.delivered_keys()
    rejected = {Ledger.key(r.source_name, r.source_etag) for r in ledger.rejections()}
    failures = {Ledger.key(f.source_name, f.source_etag): f for f in ledger.failures(delivered=delivered)}
    stale: dict[str, list[Any]] = {}  # failure records by export name: closed once a newer version is delivered
    for f in failures.values():
        stale.setdefault(f.source_name, []).append(f)
    now = relay.clock()
    limit = options.sync_concurrency
    error: list[BaseException] = []
    lock = threading.Lock()

    streak: dict[str, int] = {}  # transient failures in a row, by link

    def record(outcome: Outcome) -> None:
        with lock:
            summary.add(outcome)
            if outcome.status in ("delivered", "already_delivered"):
                streak.clear()
            elif outcome.status == "failed" and outcome.link is not None:
                streak[outcome.link] = streak.get(outcome.link, 0) + 1
                if streak[outcome.link] == TRANSIENT_TRIP and not error:
                    error.append(LinkDown(outcome.link, f"{TRANSIENT_TRIP} deliveries in a row failed on the "
                                          f"{outcome.link} link (last: {outcome.reason})",
                                          hint="nothing to do if it passes: the failed files are retried with "
                                               "backoff and the next run tries the link again; if it lasts, "
                                               "run `doctor`"))
        if outcome.status in ("delivered", "already_delivered") and relay.links.known:
            relay.links.working("gateway", "exports")  # a write went through
        if progress:
            progress(outcome)

    def settled(name: str, result: Outcome | BaseException | None) -> None:
        """One delivery's end: its outcome (None: handed to the receipt batches, settled later), or what it raised."""
        if result is None:
            return
        if isinstance(result, Outcome):
            record(result)
        elif isinstance(result, RelayError) and result.link is not None:
            with lock:
                if not error:  # the first refusal is the link's state; charges no file (a deferred delivery it
                    error.append(result)  # caught is simply sent again)
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
            result: Outcome | BaseException | None
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
                if not dry_run and blob.name in stale:
                    _close_superseded(ledger, stale.pop(blob.name), blob.etag, key in delivered)
                if dry_run:  # the real decisions, each file with its reason; nothing written
                    with lock:
                        summary.listed += 1
                    record(relay.plan(blob, delivered=key in delivered, rejected=key in rejected,
                                      failure=failure, now=now))
                    continue
                step = standing(key in delivered, key in rejected, failure, now)
                with lock:  # the workers update the same summary
                    summary.listed += 1
                    if step in SKIPPED:
                        setattr(summary, step, getattr(summary, step) + 1)
                if step in SKIPPED:
                    continue
                _take_slot(slots, receipts)
                try:
                    pool.submit(run, blob, failure, receipts)
                except BaseException:
                    slots.release()
                    raise
                if probe:  # the first delivery alone: does the link recorded broken answer again?
                    _drain(slots, receipts, 2 * limit)
                    probe = False
            _drain(slots, receipts, 2 * limit)  # every slot back: every delivery has ended
    except BaseException as exc:
        interrupted = exc
        raise
    finally:
        if receipts is not None:
            try:
                receipts.flush()
            except RelayError as exc:
                if error or interrupted is not None:  # the first error is the one to report
                    log.error("sync: %s", exc, extra={"relay_sync_error": str(exc)})
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


def _close_superseded(ledger: Ledger, records: list[Any], etag: str, delivered: bool) -> None:
    """Failure records of older versions of an export whose current version (`etag`) is delivered: nothing is owed
    for them any more (the export's source versions are gone), so they are removed rather than left failed."""
    if not delivered:
        return
    for f in records:
        if f.source_etag.strip('"') != etag.strip('"'):
            try:
                ledger.clear_failure(f.source_name, f.source_etag)
            except Exception as exc:  # housekeeping: the next sync tries again
                log.info("failure record of a superseded version not removed yet: %s", type(exc).__name__)


def _drain(slots: threading.BoundedSemaphore, receipts: ReceiptBuffer | None, count: int) -> None:
    """Wait until every delivery submitted has ended (all `count` slots back), then free the slots again."""
    for _ in range(count):
        _take_slot(slots, receipts)
    for _ in range(count):
        slots.release()


def _take_slot(slots: threading.BoundedSemaphore, receipts: ReceiptBuffer | None) -> None:
    """Wait for a free delivery slot; meanwhile check and write receipts that are due (a long copy must not hold
    the batch of the small ones back)."""
    while not slots.acquire(timeout=receipts.max_age if receipts else None):
        if receipts is not None:
            receipts.flush_due()
