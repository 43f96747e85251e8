"""One export version's delivery, as one of two named strategies, and the steps both share.

`ClaimedDelivery` (the trigger, retries, large files) holds a claim in the ledger for the whole copy;
`UnclaimedDelivery` (small first attempts in a sync) takes none: the create-only write at Bane NOR arbitrates.
Both copy, verify, write the receipt, then do the after-delivery action.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

from . import destination
from .copier import DestinationExistsError, SourceChangedError, SourceVersion
from .errors import DeliveryError, GatewayError, NameRejected, RelayError, kind_of, scrub
from .ledger import Ledger, Receipt
from .receipts import Unverified

log = logging.getLogger(__name__)


class Context(Protocol):
    """What a delivery works with, handed down by the orchestrator (`shared.relay.Relay` is one): the clients of both
    sides, the ledger, the copier, the settings, the clock. A delivery never reaches back up for anything else."""

    settings: Any
    exports: Any  # ContainerClient for EXPORT_CONTAINER
    destination: Any  # ContainerClient for BANENOR_CONTAINER behind the gateway
    ledger: Ledger
    copier: Any
    archive: Any
    source_url: Callable[[Any], str]
    clock: Callable[[], float]
    owner: str

# A claim lasts CLAIM_TTL and is renewed every CLAIM_RENEW_SECONDS while its copy makes progress (block by block), so
# a copy of any length keeps it, and an instance that died (killed at the function timeout, say) frees it after
# at most CLAIM_TTL; the next attempt then resumes from the blocks already staged.
CLAIM_TTL = 600.0
CLAIM_RENEW_SECONDS = CLAIM_TTL / 3


@dataclass
class Outcome:
    """What happened to one export version. `status` is one of STATUSES."""

    status: str
    source_name: str
    source_etag: str | None = None
    destination: str | None = None
    size: int = 0
    seconds: float = 0.0
    reason: str | None = None
    mode: str | None = None
    md5: str | None = None
    latency: float | None = None  # seconds from the export's last modification to its receipt (delivered only)
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    link: str | None = None  # a failure on this link's side (gateway, exports): what a window of failures counts

    def as_dict(self) -> dict[str, Any]:
        # Every field is a plain value: a shallow dict is what dataclasses.asdict would build, without its deep
        # copies (a sync of 2,000 files spent 6% of its time there).
        return {name: getattr(self, name) for name in _OUTCOME_FIELDS}


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))
STATUSES = ("delivered", "already_delivered", "rejected", "failed", "poisoned", "in_progress", "missing",
            "pending", "would_deliver", "held", "superseded")


def is_link_refusal(exc: BaseException) -> bool:
    """A refusal about a link (the chain of trust, the gateway's 401, 403 RBAC/ACL, 404 container), not about one
    file: `errors.kind_of` says so from the error's own attributes."""
    return kind_of(exc) == "link"


def is_terminal(exc: BaseException) -> bool:
    """Retrying cannot help until someone acts on this file (a destination that is never overwritten, a request
    the gateway refuses for its name or size): `errors.kind_of` says so. Errors the relay did not classify (a
    connection reset inside the SDK, say) are transient."""
    return kind_of(exc) == "file"


def _side_link(exc: BaseException) -> str | None:
    """The link on whose side a transient failure happened (Bane NOR's gateway, or the partner's exports)."""
    side = getattr(exc, "side", None)
    if side is not None:
        return {"destination": "gateway", "source": "exports"}.get(side)
    return "gateway" if isinstance(exc, GatewayError) else None


def archive_name(version: SourceVersion) -> str:
    """Where AFTER_DELIVERY=archive keeps one version of an export: its path with the version's UTC modification
    time and etag before the extension (`in/report.csv` -> `in/report.20261101T063001Z.0x8DC1.csv`), so each
    version has a name of its own, versions of one export sort by time, and the extension still says the type."""
    folder, _, base = version.name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:  # no extension, or a leading-dot name such as ".env"
        stem, ext = base, ""
    stamp = version.last_modified.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = version.etag.strip('"')
    return f"{folder}/" * bool(folder) + f"{stem}.{stamp}.{tag}" + (f".{ext}" if ext else "")


class ClaimKeeper:
    """Renews a delivery's claim while its copy makes progress (called after each block, on the delivering thread),
    at most once per CLAIM_RENEW_SECONDS. Raises DeliveryError (transient) when the claim expired meanwhile and
    another instance took it over: that one delivers, this attempt stops."""

    def __init__(self, ledger: Ledger, name: str, etag: str, owner: str, claim_etag: str,
                 clock: Callable[[], float]) -> None:
        self.ledger, self.name, self.etag, self.owner, self.claim_etag = ledger, name, etag, owner, claim_etag
        self.clock = clock
        self.renew_at = clock() + CLAIM_RENEW_SECONDS

    def __call__(self) -> None:
        if self.clock() < self.renew_at:
            return
        renewed = self.ledger.renew_claim(self.name, self.etag, self.owner, self.claim_etag, CLAIM_TTL)
        if renewed is None:
            raise DeliveryError(f"the claim on {self.name!r} expired during its copy and another instance took it "
                                "over; this attempt stops and leaves the delivery to it.",
                                hint="nothing to do", transient=True)
        self.claim_etag = renewed
        self.renew_at = self.clock() + CLAIM_RENEW_SECONDS


class Delivery:
    """The steps every delivery takes, on the relay's clients: copy create-only (adopting or replacing what is
    there), verify at Bane NOR, write the receipt, then the after-delivery action. A strategy decides what
    guards the attempt (`run`)."""

    def __init__(self, relay: Context, record: Callable[[Receipt], Receipt] | None = None,
                 defer: Callable[[Unverified], None] | None = None,
                 finish: Callable[[Outcome], Outcome] | None = None) -> None:
        self.relay = relay
        # What a deferred delivery's outcome goes through as it settles (the orchestrator times and logs it).
        self.finish = finish or (lambda outcome: outcome)
        # Where the receipt goes: the ledger at once, or (a sync's unclaimed deliveries) the run's ReceiptBuffer.
        self.record = record or relay.ledger.record_receipt
        # Set (a sync's unclaimed deliveries): the evidence and the receipt are left to the batch; see _settle.
        self.defer = defer

    def run(self, source: Any, version: SourceVersion, dest_path: str, failure: Any) -> Outcome | None:
        raise NotImplementedError

    def _copy_and_record(self, source: Any, version: SourceVersion, dest_path: str, failure: Any,
                         on_progress: Callable[[], None] | None = None) -> Outcome | None:
        """Copy, verify, write the receipt, then the after-delivery step. A failure is recorded in the ledger
        (charged, unless the source changed); a refusal about a link is raised (a gateway 401 reaches here only
        after Bane NOR's client sent the request again with new tokens: `refused_token.RefusedTokenPolicy`).
        With `defer` set, the evidence is left to the sync's batch: the delivery is handed over and None
        returned."""
        relay = self.relay
        name, etag = version.name, version.etag
        dest = relay.destination.get_blob_client(dest_path)
        metadata = destination.relay_metadata(version, getattr(relay.exports, "account_name", "") or "",
                                                          relay.settings.exports.container, relay.clock())
        first_attempt_at = relay.clock()
        attempts = failure.attempts if failure is not None else 0
        try:
            try:
                result = relay.copier.copy(source, version, dest, metadata=metadata, overwrite=False,
                                           on_progress=on_progress)
                size, md5, dest_etag, mode = result.size, result.md5, result.destination_etag, result.mode
            except DestinationExistsError:
                try:
                    size, md5, dest_etag, mode = destination.adopt_or_replace(relay.copier, source, version, dest,
                                                                              metadata, on_progress)
                except NameRejected as exc:
                    relay.ledger.record_rejection(name, etag, exc.reason)
                    return Outcome("rejected", name, etag, destination=dest_path, reason=exc.reason)
            sent = destination.Sent(dest_path, version, size, md5,
                                    None if mode == "existing" else metadata["relay_attempt"])
            if self.defer is None:
                # No receipt on the gateway's word alone: the destination itself must show these bytes.
                destination.verify(dest, version, size, md5, sent.attempt)
        except Exception as exc:
            if is_link_refusal(exc):
                raise
            return self._record_failure(version, exc, dest_path)

        receipt = Receipt(
            source_name=name, source_etag=etag, size=size,
            md5=base64.b64encode(md5).decode() if md5 else "",
            destination_path=dest_path, destination_url=dest.url.split("?")[0], destination_etag=dest_etag,
            attempts=attempts + 1, first_attempt_at=first_attempt_at, delivered_at=relay.clock(), mode=mode,
            original_name=name,
        )
        if self.defer is not None:
            self.defer(Unverified(sent, receipt,
                                  lambda verdict: self.finish(self._settle(receipt, version, failure, verdict))))
            return None
        return self._recorded(receipt, self.record(receipt), version, failure)

    def _settle(self, receipt: Receipt, version: SourceVersion, failure: Any,
                verdict: BaseException | None) -> Outcome:
        """A deferred delivery's outcome once its batch was checked: delivered (its receipt goes into the batch's
        write), or the failure the evidence showed, recorded as any other; a broken chain of trust is raised,
        charging nothing."""
        if verdict is None:
            return self._recorded(receipt, receipt, version, failure)
        if is_link_refusal(verdict):
            raise verdict
        current = self._current_etag(version.name)
        if current is not None and current != version.etag.strip('"'):
            # A newer version of the export was written (and delivered over this one) before this one's check:
            # nothing is owed for this version any more, so no failure is recorded against it.
            return Outcome("superseded", version.name, version.etag, destination=receipt.destination_path,
                           reason="a newer version of this export replaced it before its delivery was checked; "
                                  "the newer version is delivered on its own")
        return self._record_failure(version, verdict, receipt.destination_path)

    def _current_etag(self, name: str) -> str | None:
        """The export's current etag (unquoted); None when it cannot be read (gone, or the read failed)."""
        try:
            return str(self.relay.exports.get_blob_client(name).get_blob_properties().etag).strip('"')
        except Exception:
            return None

    def _recorded(self, receipt: Receipt, stored: Receipt, version: SourceVersion, failure: Any) -> Outcome:
        """The outcome once the receipt is recorded (`stored`: the one the ledger holds), after the
        after-delivery step."""
        relay = self.relay
        name, etag, dest_path, size, mode = (version.name, version.etag, receipt.destination_path, receipt.size,
                                             receipt.mode)
        if failure is not None:
            relay.ledger.clear_failure(name, etag)
        if stored != receipt and mode != "existing" and stored.mode == "existing":
            # These bytes are ours, and another deliverer (a trigger racing a sync's unclaimed delivery) adopted
            # them and wrote its receipt first: the delivery is ours; the after-delivery step was its.
            return Outcome("delivered", name, etag, destination=dest_path, size=size, mode=mode,
                           md5=receipt.md5 or None)
        if stored != receipt:  # another worker wrote the receipt first: its delivery, not ours
            return Outcome("already_delivered", name, etag, destination=dest_path, size=size)
        self._after_delivery(version)
        if mode == "existing":
            # Bane NOR already had this version from another attempt: another deliverer's (which reports it
            # "delivered"), or one that stopped between its commit and its receipt. It was not sent now.
            return Outcome("already_delivered", name, etag, destination=dest_path, size=size, mode=mode,
                           reason="Bane NOR already had this version; its receipt is now recorded")
        return Outcome("delivered", name, etag, destination=dest_path, size=size, mode=mode,
                       md5=receipt.md5 or None)

    def _record_failure(self, version: SourceVersion, exc: BaseException, dest_path: str) -> Outcome:
        relay = self.relay
        reason = str(exc) if isinstance(exc, RelayError) else f"{type(exc).__name__}: {scrub(str(exc))}"
        if isinstance(exc, SourceChangedError):
            # The export was rewritten or deleted while copying: no attempt is charged; a new version gets its
            # own delivery, a deleted one is simply gone.
            try:
                gone = not relay.exports.get_blob_client(version.name).exists()
            except Exception:
                gone = False
            status = "missing" if gone else "failed"
            return Outcome(status, version.name, version.etag, destination=dest_path, reason=reason)
        terminal = is_terminal(exc)
        failure = relay.ledger.record_failure(version.name, version.etag, reason, relay.settings.relay.max_attempts,
                                              terminal=terminal)
        status = "poisoned" if failure.poisoned else "failed"
        return Outcome(status, version.name, version.etag, destination=dest_path, reason=failure.last_error,
                       link=None if terminal else _side_link(exc))

    def _after_delivery(self, version: SourceVersion) -> None:
        """keep | archive | delete, only after the receipt is written, and only for the delivered etag."""
        relay = self.relay
        action = relay.settings.relay.after_delivery
        if action == "keep" or (action == "archive" and relay.archive is None):
            return
        source = relay.exports.get_blob_client(version.name)
        try:
            if action == "archive" and relay.archive is not None and not self._archive(source, version):
                return
            source.delete_blob(etag=version.etag, match_condition=MatchConditions.IfNotModified)
        except Exception as exc:  # the delivery stands; the source stays for an operator
            log.warning("after-delivery %s of %r not done: %s", action, version.name, type(exc).__name__)

    def _archive(self, source: Any, version: SourceVersion) -> bool:
        """Copy this version to a name of its own in the archive, create-only: an archive never overwrites an
        archive. True when the archive holds this version (now, or from an earlier attempt)."""
        relay = self.relay
        target = relay.archive.get_blob_client(archive_name(version))
        metadata = {"relay_source_name": destination.meta(version.name),
                    "relay_source_etag": destination.meta(version.etag.strip('"')),
                    "relay_source_modified": destination.modified(version)}
        try:
            # Copy Blob From URL (synchronous) needs the source readable by URL: a read-only SAS.
            target.start_copy_from_url(relay.source_url(source), metadata=metadata, requires_sync=True,
                                       source_etag=version.etag,
                                       source_match_condition=MatchConditions.IfNotModified,
                                       match_condition=MatchConditions.IfMissing)
            return True
        except (ResourceExistsError, ResourceModifiedError):
            props = target.get_blob_properties()
            md = {k.lower(): v for k, v in (props.metadata or {}).items()}
            if md.get("relay_source_etag") == metadata["relay_source_etag"] and props.size == version.size:
                return True  # an earlier attempt archived this version and stopped before removing the source
            log.warning("after-delivery archive of %r not done: %r is taken by another file; the source stays",
                        version.name, target.blob_name)
            return False


class ClaimedDelivery(Delivery):
    """The trigger's delivery, and every retry or large file in a sync: a claim in the ledger for the whole copy
    (renewed as blocks go), the receipt written at once."""

    def run(self, source: Any, version: SourceVersion, dest_path: str, failure: Any) -> Outcome:
        relay = self.relay
        name, etag = version.name, version.etag
        claimant = f"{relay.owner}/{uuid.uuid4().hex[:12]}"  # one owner per attempt, also within a process
        claim = relay.ledger.claim(name, etag, claimant, CLAIM_TTL)
        if claim is None:
            return Outcome("in_progress", name, etag, destination=dest_path,
                           reason="another instance is delivering this version")
        outcome = None
        keeper = ClaimKeeper(relay.ledger, name, etag, claimant, claim, relay.clock)
        try:
            # A claim we could create means no claimed delivery of this version finished within CLAIM_TTL (a
            # delivered version keeps its claim), so the receipt needs no second look; a delivery that slipped in
            # unclaimed (sync's small exports) is met by the create-only commit.
            outcome = self._copy_and_record(source, version, dest_path, failure, on_progress=keeper)
            assert outcome is not None  # a claimed delivery never hands its evidence over (no `defer`)
            return outcome
        finally:
            # Once the receipt exists nobody claims this version again (the receipt is checked first), so a
            # delivered version keeps its claim record and saves a request; the ledger's lifecycle rule removes
            # old claims. Anything else releases the claim for the next attempt.
            if outcome is None or outcome.status not in ("delivered", "already_delivered"):
                relay.ledger.release_claim(name, etag, claimant, keeper.claim_etag)


class UnclaimedDelivery(Delivery):
    """A small export's first attempt in a sync (AFTER_DELIVERY=keep): no claim; the create-only Put Blob is the
    arbiter. A second deliverer of the same version gets 409 and finds the first one's file by the relay's
    metadata, so nothing is ever written twice at Bane NOR; a race costs at most one refused upload of at most
    SINGLE_PUT_LIMIT bytes, where a claim would cost a request for every file. Used with AFTER_DELIVERY=keep only
    (it came with receipts written in batches, which must not trail a removed source); with archive or delete
    every delivery is claimed."""

    @staticmethod
    def fits(relay: Context, version: SourceVersion, failure: Any) -> bool:
        """Whether this strategy may deliver `version`: a first attempt, sources kept, one Put Blob."""
        return (failure is None and relay.settings.relay.after_delivery == "keep"
                and relay.copier.single_put(version.size))

    def run(self, source: Any, version: SourceVersion, dest_path: str, failure: Any) -> Outcome | None:
        """The outcome, or None when the delivery was handed over for its evidence (`defer`)."""
        return self._copy_and_record(source, version, dest_path, failure)
