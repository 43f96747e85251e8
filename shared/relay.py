"""`Relay`: the entry point of both triggers, the command line, the demo and the bench.

`deliver(name)` takes one export version end to end, idempotently: name policy -> delivery strategy (claimed or
unclaimed, shared/delivery.py) -> after-delivery action. `sync()` runs the batch (shared/sync.py). What a file
at Bane NOR means is shared/destination.py's; the ledger is shared/ledger.py's.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .copier import Copier, CopyFailed, SourceVersion
from .delivery import (  # noqa: F401  (CLAIM_*, ClaimKeeper, is_*, archive_name: importable from here as before)
    CLAIM_RENEW_SECONDS,
    CLAIM_TTL,
    ClaimedDelivery,
    ClaimKeeper,
    Outcome,
    UnclaimedDelivery,
    archive_name,
    is_link_refusal,
    is_terminal,
)
from .errors import NameRejected, RelayError
from .ledger import Ledger, standing
from .links import TOKEN_LINKS, Links, iso
from .naming import NamePolicy, destination_path
from .receipts import ReceiptBuffer
from .sync import SyncSummary, run_sync

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)


class Relay:
    """Delivers exports from the partner's container to Bane NOR. Thread-safe; build once per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        exports: Any,  # ContainerClient for EXPORT_CONTAINER
        destination: Any,  # ContainerClient for BANENOR_CONTAINER behind the gateway
        ledger: Ledger,
        copier: Copier,
        archive: Any = None,  # ContainerClient for ARCHIVE_CONTAINER (AFTER_DELIVERY=archive)
        credential: Any = None,  # the Bane NOR credential, for the sync's preflight
        source_url: Callable[[Any], str] | None = None,  # read-only SAS URL of a source (archive copies)
        clock: Callable[[], float] = time.time,
        # Called where the sync's pool is made; returns its threads' initializer (shared/invocation.py).
        pool_initializer: Callable[[], Callable[[], None] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.pool_initializer = pool_initializer
        self.exports = exports
        self.destination = destination
        self.ledger = ledger
        self.copier = copier
        self.archive = archive
        self.credential = credential
        self.source_url = source_url or (lambda blob: blob.url)
        self.clock = clock
        self.owner = f"relay-{uuid.uuid4()}"
        self.links = Links(ledger, clock)
        self.policy = NamePolicy.from_settings(settings.relay)
        problems = self.policy.validate()
        if problems:
            from .errors import ConfigError

            raise ConfigError([("NAME_POLICY/DESTINATION_TEMPLATE/ALLOWED_EXTENSIONS", p) for p in problems])

    # -- one export ---------------------------------------------------------------------------------------
    def deliver(self, name: str) -> Outcome:
        """Deliver the current version of export `name` and return its outcome.

        A refusal about a link (the chain of trust, the gateway's 401, 403 RBAC/ACL or 404 container) charges no
        file: the link's state is recorded (shared/links.py) and the outcome is "held", left to the sync. Raises
        when the ledger in the partner's storage cannot be read or written (azure-core errors): then nothing is
        recorded, and the next sync (or the host's trigger retry) tries again.
        """
        started = self.clock()
        source = self.exports.get_blob_client(name)
        try:
            version = self.copier.read_source(source)
        except CopyFailed as exc:
            if exc.status == 404:
                return Outcome("missing", name, reason="the export no longer exists")
            if exc.link is not None:
                return self._finish(self._held(exc, name, None), started)
            # The version is unknown, so no attempt can be charged: report it, the next sync tries again.
            return Outcome("failed", name, reason=str(exc))
        try:
            outcome = self._deliver_version(source, version)
        except RelayError as exc:
            if exc.link is None:
                raise
            outcome = self._held(exc, name, version.etag)
        assert outcome is not None  # None only for a sync's deferred deliveries (deliver_listed)
        if outcome.status in ("delivered", "already_delivered") and self.links.known:
            self.links.working("gateway", "exports", *TOKEN_LINKS)  # a write went through: every link works
        return self._finish(outcome, started, version)

    def _held(self, exc: RelayError, name: str, etag: str | None) -> Outcome:
        """A delivery that met a broken link: the link's state is recorded once; the file waits for the sync."""
        state = self.links.broken(exc)
        return Outcome("held", name, etag, link=state.link, reason=f"{exc} (link {state.link} broken since "
                       f"{iso(state.since)}; the sync delivers it "
                       "once the link answers)")

    def deliver_listed(self, props: Any, failure: Any = None,
                       receipts: ReceiptBuffer | None = None) -> Outcome | None:
        """Deliver a version found by `sync`'s listing, which already told us it has no receipt or rejection
        and what its failure record is. A small first attempt is an UnclaimedDelivery (no claim: the create-only
        write arbitrates; its receipt goes to `receipts`, the run's batches); anything else a ClaimedDelivery.

        Returns None when the delivery was handed to `receipts` for its evidence (a buffer that `defers`): its
        outcome is settled with its batch and goes to the buffer's `settled`, logged as any other."""
        started = self.clock()
        version = SourceVersion.from_properties(props)
        source = self.exports.get_blob_client(props.name)
        outcome = self._deliver_version(source, version, listed=True, failure=failure, receipts=receipts,
                                        started=started)
        return None if outcome is None else self._finish(outcome, started, version)

    def _finish(self, outcome: Outcome, started: float, version: SourceVersion | None = None) -> Outcome:
        now = self.clock()
        outcome.seconds = round(now - started, 3)
        if outcome.status == "delivered" and version is not None and version.last_modified is not None:
            # From the export's last write to its receipt: the workbook's delivery latency.
            outcome.latency = round(now - version.last_modified.timestamp(), 3)
        self._log(outcome)
        return outcome

    def _deliver_version(self, source: Any, version: SourceVersion, listed: bool = False,
                         failure: Any = None, receipts: ReceiptBuffer | None = None,
                         started: float = 0.0) -> Outcome | None:
        name, etag = version.name, version.etag
        if not listed:  # the trigger: what the ledger holds of this version, one record at a time
            if self.ledger.delivered(name, etag):
                return Outcome("already_delivered", name, etag, size=version.size)
            rejection = self.ledger.rejection(name, etag)
            if rejection is not None:
                return Outcome("rejected", name, etag, size=version.size, reason=rejection.reason)
            failure = self.ledger.failure(name, etag)
        step = standing(False, False, failure, self.clock())  # a listed version: the sync decided the rest
        if step == "poisoned":
            return Outcome("poisoned", name, etag, reason=failure.last_error)
        if step == "pending":
            # A host retry of the trigger right after a failure: wait for the ledger's backoff, charge nothing.
            return Outcome("pending", name, etag, reason=f"next retry after {failure.next_retry_at:.0f}: "
                           f"{failure.last_error}")

        try:
            dest_path = destination_path(name, self.settings.banenor.directory, self.policy,
                                         version.last_modified)
        except NameRejected as exc:
            self.ledger.record_rejection(name, etag, str(exc))
            return Outcome("rejected", name, etag, size=version.size, reason=str(exc))

        if not (listed and UnclaimedDelivery.fits(self, version, failure)):
            return ClaimedDelivery(self).run(source, version, dest_path, failure)
        if receipts is None:
            return UnclaimedDelivery(self).run(source, version, dest_path, failure)
        # Handed over for its evidence (a buffer that defers): its outcome is timed and logged as it settles, with
        # its batch.
        return UnclaimedDelivery(self, receipts.add, receipts.defer if receipts.defers else None,
                                 finish=lambda outcome: self._finish(outcome, started, version)
                                 ).run(source, version, dest_path, failure)

    def _log(self, outcome: Outcome) -> None:
        level = logging.INFO if outcome.status in ("delivered", "already_delivered", "in_progress", "superseded") else \
            logging.WARNING
        if not log.isEnabledFor(level):
            return
        # key=value pairs: Application Insights queries parse them (traces | parse message with ...).
        log.log(level, "delivery outcome=%s correlation_id=%s source=%s version=%s destination=%s bytes=%d "
                "seconds=%.3f mode=%s%s%s", outcome.status, outcome.correlation_id, outcome.source_name,
                (outcome.source_etag or "").strip('"'), outcome.destination, outcome.size, outcome.seconds,
                outcome.mode, "" if outcome.latency is None else f" latency={outcome.latency:.3f}",
                f" reason={outcome.reason}" if outcome.reason and outcome.status != "already_delivered" else "",
                extra={"relay": outcome.as_dict()})

    def plan(self, props: Any, *, delivered: bool, rejected: bool, failure: Any, now: float) -> Outcome:
        """What `sync` would do with one listed version, and why, without writing anything (`sync --dry-run`):
        already_delivered, rejected (recorded, or by the name policy now), poisoned, pending (a failure whose
        retry is not due), failed (too big for BLOCK_SIZE), or would_deliver (new, or a due retry) with its
        destination name."""
        name, etag = props.name, props.etag
        step = standing(delivered, rejected, failure, now)
        if step == "already_delivered":
            return Outcome("already_delivered", name, etag, size=props.size, reason="its receipt is in the ledger")
        if step == "rejected":
            found = self.ledger.rejection(name, etag)
            return Outcome("rejected", name, etag, size=props.size,
                           reason=found.reason if found else "rejected earlier (recorded in the ledger)")
        if step == "poisoned":
            return Outcome("poisoned", name, etag, size=props.size, reason=failure.last_error)
        if step == "pending":
            retry_at = iso(failure.next_retry_at)
            return Outcome("pending", name, etag, size=props.size,
                           reason=f"failed {failure.attempts} time(s); next retry {retry_at}")
        try:
            dest_path = destination_path(name, self.settings.banenor.directory, self.policy,
                                         SourceVersion.from_properties(props).last_modified)
        except NameRejected as exc:
            return Outcome("rejected", name, etag, size=props.size, reason=str(exc))
        from .copier import MAX_BLOCKS

        blocks = -(-props.size // self.settings.relay.block_size)
        if blocks > MAX_BLOCKS:  # the copy would refuse it: too big for the block size (Copier.copy)
            return Outcome("failed", name, etag, destination=dest_path, size=props.size,
                           reason=f"it needs {blocks} blocks of BLOCK_SIZE; a block blob holds at most {MAX_BLOCKS}: "
                           "raise BLOCK_SIZE")
        reason = "new" if failure is None else \
            f"retry {failure.attempts + 1} of {self.settings.relay.max_attempts} (last error: {failure.last_error})"
        return Outcome("would_deliver", name, etag, destination=dest_path, size=props.size, reason=reason)

    # -- the batch ------------------------------------------------------------------------------------------
    def preflight(self) -> None:
        """One token for the storage audience: fails fast, before any file, when the chain is broken."""
        if self.credential is not None:
            self.credential.get_token(self.settings.banenor.storage_audience + "/.default")

    def sync(self, *, dry_run: bool = False, progress: Callable[[Outcome], None] | None = None) -> SyncSummary:
        """Deliver every export version not yet delivered and every due retry. Never raises for one file."""
        started = self.clock()
        summary = SyncSummary()
        try:
            broken = self.links.load() if not dry_run else {}
            if not dry_run:
                self.preflight()  # the probe of the chain of trust: one token (cached while it lasts)
                self.links.working(*TOKEN_LINKS)
            # A link recorded broken is probed with one delivery before the run goes wide.
            run_sync(self, summary, dry_run, progress, probe=bool({"gateway", "exports"} & set(broken)))
        except RelayError as exc:
            summary.error = str(exc)
            if exc.link is not None:
                summary.link = exc.link
                self.links.broken(exc)
            log.error("sync stopped: %s", exc, extra={"relay_sync_error": str(exc)})
        summary.seconds = round(self.clock() - started, 3)
        log.info("sync summary outcome=%s delivered=%d already=%d rejected=%d failed=%d poisoned=%d pending=%d "
                 "in_progress=%d bytes=%d seconds=%.1f", "ok" if summary.error is None else "error",
                 summary.delivered, summary.already_delivered, summary.rejected, summary.failed, summary.poisoned,
                 summary.pending, summary.in_progress, summary.bytes, summary.seconds,
                 extra={"relay_sync": summary.counts()})
        return summary
