"""The batch: one pass over the export container, delivering what the ledger says is not done.

Lists lazily, skips delivered, rejected, poisoned and not-yet-due versions from three ledger listings, and
delivers the rest on SYNC_CONCURRENCY threads with a bounded number in flight, of which only a few exports above
SINGLE_PUT_LIMIT at once (their blocks are the memory); a broken trust chain stops the pass and charges no file.
Owns SyncSummary.
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
from .pace import Pace
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
# Deliveries in flight until the first one gets through Bane NOR's gateway: a link that is broken when a run starts
# costs at most this many refused writes, not one per thread (issue 26); then the run goes SYNC_CONCURRENCY wide.
START_WINDOW = 4


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
    width: int = 0  # small deliveries in flight when the run ended (found while it ran: shared.pace)
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
    when TRANSIENT_TRIP transient failures on one link came in a row. The run starts START_WINDOW deliveries wide
    and, once one got through, keeps as many small ones in flight as deliver most per second (`Pace`); `probe`: a
    link was recorded broken, so it starts with one delivery."""
    _Pass(relay, summary, dry_run, progress, probe).run()


class _Pass:
    """One sync pass: the ledger read once (receipts, rejections, failures), every listed version decided
    (`standing`), the rest delivered on SYNC_CONCURRENCY threads, each delivery's end settled here."""

    def __init__(self, relay: Host, summary: SyncSummary, dry_run: bool,
                 progress: Callable[[Outcome], None] | None, probe: bool = False) -> None:
        self.relay, self.summary, self.dry_run, self.progress = relay, summary, dry_run, progress
        self.options, self.ledger = relay.settings.relay, relay.ledger  # concurrency, prefix, suffix
        ledger = self.ledger
        self.delivered = ledger.delivered_keys()
        self.rejected = {Ledger.key(r.source_name, r.source_etag) for r in ledger.rejections()}
        self.failures = {Ledger.key(f.source_name, f.source_etag): f
                         for f in ledger.failures(delivered=self.delivered)}
        self.stale: dict[str, list[Any]] = {}  # failure records by export name: closed once a newer version is in
        for f in self.failures.values():
            self.stale.setdefault(f.source_name, []).append(f)
        self.now = relay.clock()
        self.limit = self.options.sync_concurrency
        self.error: list[BaseException] = []
        self.lock = threading.Lock()
        self.streak: dict[str, int] = {}  # transient failures in a row, by link
        # Bounded: at most 2 x SYNC_CONCURRENCY deliveries submitted at a time, so a 100,000-blob container never
        # piles up work; each frees its slot as it ends. Fewer until one delivery got through (`Window`), then as
        # many small ones as deliver most per second (`Pace`: measured while the run goes).
        # A link recorded broken (`probe`): one delivery alone, large or small, tells whether it answers again.
        pace = Pace(2 * self.limit)
        self.slots = (Window(1, 2 * self.limit, pace, large_too=True) if probe
                      else Window(START_WINDOW, 2 * self.limit, pace))
        # Exports above SINGLE_PUT_LIMIT each hold BLOCK_SIZE x (PARALLELISM + 1) while they copy: a few at a time
        # (`large_in_flight`), taken on the worker, so the listing goes on and the small exports keep the pool.
        self.large = threading.BoundedSemaphore(self.options.large_in_flight)

    # -- each delivery's end ---------------------------------------------------------------------------------
    def record(self, outcome: Outcome) -> None:
        if outcome.status in GOT_THROUGH:
            self.slots.widen()
        with self.lock:
            self.summary.add(outcome)
            if outcome.status in ("delivered", "already_delivered"):
                self.streak.clear()
            elif outcome.status == "failed" and outcome.link is not None:
                self._count_transient(outcome)
        if outcome.status in ("delivered", "already_delivered") and self.relay.links.known:
            self.relay.links.working("gateway", "exports")  # a write went through
        if self.progress:
            self.progress(outcome)

    def _count_transient(self, outcome: Outcome) -> None:
        """Under the lock: one more transient failure on the outcome's link; TRANSIENT_TRIP in a row stop the run."""
        link = outcome.link
        assert link is not None
        self.streak[link] = self.streak.get(link, 0) + 1
        if self.streak[link] == TRANSIENT_TRIP and not self.error:
            self.error.append(LinkDown(link, f"{TRANSIENT_TRIP} deliveries in a row failed on the {link} link "
                                       f"(last: {outcome.reason})",
                                       hint="nothing to do if it passes: the failed files are retried with backoff "
                                            "and the next run tries the link again; if it lasts, run `doctor`"))

    def settled(self, name: str, result: Outcome | BaseException | None) -> None:
        """One delivery's end: its outcome (None: handed to the receipt batches, settled later), or what it raised."""
        if result is None:
            self.slots.widen()  # written; its evidence comes with its receipt batch
            return
        if isinstance(result, Outcome):
            self.record(result)
        elif isinstance(result, RelayError) and result.link is not None:
            with self.lock:
                if not self.error:  # the first refusal is the link's state; charges no file (a deferred delivery
                    self.error.append(result)  # it caught is simply sent again)
        elif isinstance(result, RelayError):
            self.record(Outcome("failed", name, reason=str(result)))
        elif isinstance(result, Exception):  # a ledger or listing hiccup for one file: report, keep going
            self.record(Outcome("failed", name, reason=f"{type(result).__name__}: {scrub(str(result))[:300]}"))
        else:
            raise result

    def deliver(self, blob: Any, failure: Any, receipts: ReceiptBuffer | None) -> None:
        """On a pool thread: one listed version's delivery, settled; frees its slot."""
        large = blob.size > self.options.single_put_limit  # a block copy: waits for one of the large turns
        try:
            if self.error:
                return
            result: Outcome | BaseException | None
            if large:
                with self.large:
                    if self.error:
                        return
                    result = self._delivered(blob, failure, receipts)
            else:
                result = self._delivered(blob, failure, receipts)
            self.settled(blob.name, result)
        finally:
            self.slots.release(large)

    def _delivered(self, blob: Any, failure: Any, receipts: ReceiptBuffer | None) -> Outcome | BaseException | None:
        try:
            return self.relay.deliver_listed(blob, failure, receipts)
        except Exception as exc:
            return exc

    # -- the listing -----------------------------------------------------------------------------------------
    def decide(self, blob: Any) -> tuple[bool, Any]:
        """A listed version: counted, then planned (a dry run) or skipped, or to be delivered: (deliver it?, its
        failure record, None for a new version)."""
        key = Ledger.key(blob.name, blob.etag)
        failure = self.failures.get(key)
        if not self.dry_run and blob.name in self.stale:
            _close_superseded(self.ledger, self.stale.pop(blob.name), blob.etag, key in self.delivered)
        if self.dry_run:  # the real decisions, each file with its reason; nothing written
            with self.lock:
                self.summary.listed += 1
            self.record(self.relay.plan(blob, delivered=key in self.delivered, rejected=key in self.rejected,
                                        failure=failure, now=self.now))
            return False, None
        step = standing(key in self.delivered, key in self.rejected, failure, self.now)
        with self.lock:  # the workers update the same summary
            self.summary.listed += 1
            if step in SKIPPED:
                setattr(self.summary, step, getattr(self.summary, step) + 1)
        return step not in SKIPPED, failure

    def run(self) -> None:
        relay, options, limit = self.relay, self.options, self.limit
        # The evidence of the small deliveries comes with their receipt batches: a listing of Bane NOR's directory.
        # Checked and written on a thread of their own, so no delivery worker waits for a listing and a write.
        initializer = relay.pool_initializer and relay.pool_initializer()  # the invocation id, on every thread
        writer = None if self.dry_run else ThreadPoolExecutor(1, thread_name_prefix="relay-receipts",
                                                              initializer=initializer)
        receipts = None if self.dry_run else ReceiptBuffer(self.ledger, evidence=ListingEvidence(relay.destination),
                                                           settled=self.settled, writer=writer)
        interrupted: BaseException | None = None
        try:
            with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="relay-sync",
                                    initializer=initializer) as pool:
                for blob in list_blobs(relay.exports, options.sync_prefix or None):  # the relay's own parse
                    if self.error:
                        break
                    if options.sync_suffix and not blob.name.endswith(options.sync_suffix):
                        continue
                    deliver, failure = self.decide(blob)
                    if not deliver:
                        continue
                    large = blob.size > options.single_put_limit
                    _take_slot(self.slots, receipts, large)
                    try:
                        pool.submit(self.deliver, blob, failure, receipts)
                    except BaseException:
                        self.slots.release(large)
                        raise
                _drain(self.slots, receipts)  # every slot back: every delivery has ended
        except BaseException as exc:
            interrupted = exc
            raise
        finally:
            self.summary.width = self.slots.width
            self._flush(receipts, writer, interrupted)
        if self.error:
            raise self.error[0]
        if receipts is not None and receipts.writes:
            try:
                compact_receipt_batches(self.ledger)
            except Exception as exc:  # housekeeping: the next sync that writes a batch tries again
                log.warning("receipt batches not compacted: %s: %s", type(exc).__name__, scrub(str(exc))[:200])

    def _flush(self, receipts: ReceiptBuffer | None, writer: ThreadPoolExecutor | None,
               interrupted: BaseException | None) -> None:
        """The last receipts checked and written; a write that fails raises, unless an earlier error is the one
        to report."""
        if receipts is None:
            return
        try:
            receipts.flush()
        except RelayError as exc:
            if self.error or interrupted is not None:  # the first error is the one to report
                log.error("sync: %s", exc, extra={"relay_sync_error": str(exc)})
            else:
                raise
        finally:
            if writer is not None:
                writer.shutdown(wait=True)


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


# What shows that Bane NOR's side takes writes: a delivery's end with one of these, or handed to its receipt batch.
GOT_THROUGH = ("delivered", "already_delivered", "superseded")


class Window:
    """The deliveries a sync has submitted and not yet ended: at most `wide`, and at most `narrow` small ones until
    `widen()` (a delivery got through); from then on as many small ones as `pace` finds best (`shared.pace`). Large
    ones have their own bound (`large_in_flight`), and a copy that takes minutes must not hold the small ones back;
    with `large_too` (a probe of a link recorded broken) they count against `narrow` as well, until it widens.
    `acquire`/`release` as a semaphore's; `idle` waits until none is left."""

    def __init__(self, narrow: int, wide: int, pace: Pace, large_too: bool = False) -> None:
        self._changed = threading.Condition()
        self._busy = 0
        self._narrowed = 0  # in flight and counted against `_small`
        self._large_counted = 0  # of those, large ones (`large_too`)
        self._small = min(narrow, wide)
        self._wide = wide
        self._large_too = large_too
        self._pace = pace
        self._paced = False  # widened: `_small` is the pace's

    def _counts(self, large: bool) -> bool:
        return self._large_too or not large

    def _free(self, large: bool) -> bool:
        return self._busy < self._wide and (not self._counts(large) or self._narrowed < self._small)

    def acquire(self, timeout: float | None = None, large: bool = False) -> bool:
        with self._changed:
            if not self._changed.wait_for(lambda: self._free(large), timeout):
                return False
            self._busy += 1
            if self._counts(large):
                self._narrowed += 1
                self._large_counted += large
            return True

    def release(self, large: bool = False) -> None:
        with self._changed:
            self._busy -= 1
            if not large:
                self._narrowed -= 1
            elif self._large_counted:  # large ones are alike: any that ends frees a counted one's place
                self._large_counted -= 1
                self._narrowed -= 1
            if self._paced and not large:
                width = self._pace.ended()
                if width is not None:
                    self._small = width
                    log.debug("sync: %d small deliveries in flight from now on", width)
            self._changed.notify_all()

    def widen(self) -> None:
        with self._changed:
            if not self._paced:
                self._paced = True
                self._small = self._pace.width
                self._large_too = False  # large ones in flight stay counted until they end
                self._changed.notify_all()

    @property
    def width(self) -> int:
        """Small deliveries allowed in flight now."""
        return self._small

    def idle(self, timeout: float | None = None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout)


def _drain(slots: Window, receipts: ReceiptBuffer | None) -> None:
    """Wait until every delivery submitted has ended; meanwhile check and write receipts that are due."""
    while not slots.idle(timeout=receipts.max_age if receipts else None):
        if receipts is not None:
            receipts.flush_due()


def _take_slot(slots: Window, receipts: ReceiptBuffer | None, large: bool = False) -> None:
    """Wait for a free delivery slot; meanwhile check and write receipts that are due (a long copy must not hold
    the batch of the small ones back)."""
    while not slots.acquire(timeout=receipts.max_age if receipts else None, large=large):
        if receipts is not None:
            receipts.flush_due()
