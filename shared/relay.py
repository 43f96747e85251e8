"""`deliver` and `sync`: the two operations both triggers and the command line use.

`deliver(name)` takes one export version end to end, idempotently: name policy -> claim -> verified copy
through Bane NOR's gateway -> receipt -> after-delivery action. `sync()` lists the export container lazily,
skips what the ledger says is done, and delivers the rest with bounded concurrency. A broken trust chain
(refused grant, refused Entra exchange, gateway 401) stops `sync` early and charges no file for it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from .copier import Copier, CopyFailed, DestinationExistsError, SourceChangedError, SourceVersion
from .errors import GatewayError, NameRejected, RelayError, scrub
from .ledger import Ledger, Receipt, ReceiptBuffer
from .naming import NamePolicy, destination_path
from .storage import gateway_error

log = logging.getLogger(__name__)

UNAUTHORIZED_RETRIES = 2  # after a gateway 401: once with a new Entra token, once more after a new Skyporten token
_REPLACE_ROUNDS = 3  # looks at a destination that keeps changing while an updated export replaces it
# A claim lasts CLAIM_TTL and is renewed every CLAIM_RENEW_SECONDS while its copy makes progress (block by block), so
# a copy of any length keeps it, and an instance that died (killed at the function timeout, say) frees it after
# at most CLAIM_TTL; the next attempt then resumes from the blocks already staged.
CLAIM_TTL = 600.0
CLAIM_RENEW_SECONDS = CLAIM_TTL / 3
META_LIMIT = 1024  # bytes per metadata value we write (Azure allows 8 KiB in all)


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
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


STATUSES = ("delivered", "already_delivered", "rejected", "failed", "poisoned", "in_progress", "missing",
            "pending", "would_deliver")


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

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "outcomes"}
        data["outcomes"] = [o.as_dict() for o in self.outcomes]
        return data

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0 and self.poisoned == 0


def _is_trust_chain(exc: BaseException) -> bool:
    """A configuration problem of the chain of trust, not of one file: the error's own flag says so."""
    return bool(getattr(exc, "trust_chain", False))


def _is_terminal(exc: BaseException) -> bool:
    """Retrying cannot help until someone acts (a destination that is never overwritten, an ACL only Bane NOR can
    grant, a request the gateway refuses): the error's own flag says so. Errors the relay did not classify (a
    connection reset inside the SDK, say) are transient."""
    return isinstance(exc, RelayError) and not exc.transient


def _modified(version: SourceVersion) -> str:
    """The source version's last-modified time, sortable, for ordering versions of one export."""
    return version.last_modified.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _meta(value: str) -> str:
    """Metadata values must be ASCII: percent-encode, bounded."""
    return quote(value, safe="/:._-@")[:META_LIMIT]


def source_digest(account: str, container: str, name: str) -> str:
    """Who owns a destination, compared in full: the readable `relay_source_name` is cut at META_LIMIT, so two
    long source paths can look alike there; this digest of the full account, container and path cannot."""
    return hashlib.sha256(f"{account}\n{container}\n{name}".encode()).hexdigest()


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


class _ClaimKeeper:
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
        from .errors import DeliveryError

        renewed = self.ledger.renew_claim(self.name, self.etag, self.owner, self.claim_etag, CLAIM_TTL)
        if renewed is None:
            raise DeliveryError(f"the claim on {self.name!r} expired during its copy and another instance took it "
                                "over; this attempt stops and leaves the delivery to it.",
                                hint="nothing to do", transient=True)
        self.claim_etag = renewed
        self.renew_at = self.clock() + CLAIM_RENEW_SECONDS


class Relay:
    """Delivers exports from the partner's container to Bane NOR. Thread-safe; build once per process."""

    def __init__(
        self,
        settings: Any,
        *,
        exports: Any,  # ContainerClient for EXPORT_CONTAINER
        destination: Any,  # ContainerClient for BANENOR_CONTAINER behind the gateway
        ledger: Ledger,
        copier: Copier,
        archive: Any = None,  # ContainerClient for ARCHIVE_CONTAINER (AFTER_DELIVERY=archive)
        credential: Any = None,  # the Bane NOR credential, for the sync's preflight
        source_url: Callable[[Any], str] | None = None,  # read-only SAS URL of a source (archive copies)
        on_unauthorized: Callable[[BaseException], None] | None = None,  # drop the refused token after a 401
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
        self.on_unauthorized = on_unauthorized
        self.clock = clock
        self.owner = f"relay-{uuid.uuid4()}"
        self.policy = NamePolicy(
            mode=settings.name_policy,
            allowed_extensions=settings.allowed_extensions,
            folders=settings.folder_mode,
            template=settings.destination_template,
        )
        problems = self.policy.validate()
        if problems:
            from .errors import ConfigError

            raise ConfigError([("NAME_POLICY/DESTINATION_TEMPLATE/ALLOWED_EXTENSIONS", p) for p in problems])

    # -- one export ---------------------------------------------------------------------------------------
    def deliver(self, name: str) -> Outcome:
        """Deliver the current version of export `name` and return its outcome.

        Raises for a broken chain of trust (TokenError, SigningKeyError, a gateway 401) and when the ledger in the
        partner's storage cannot be read or written (azure-core errors): then nothing is recorded, and the next
        sync (or the host's trigger retry) tries again.
        """
        started = self.clock()
        source = self.exports.get_blob_client(name)
        try:
            version = self.copier.read_source(source)
        except CopyFailed as exc:
            if exc.status == 404:
                return Outcome("missing", name, reason="the export no longer exists")
            # The version is unknown, so no attempt can be charged: report it, the next sync tries again.
            return Outcome("failed", name, reason=str(exc))
        return self._finish(self._deliver_version(source, version), started)

    def deliver_listed(self, props: Any, failure: Any = None, receipts: ReceiptBuffer | None = None) -> Outcome:
        """Deliver a version found by `sync`'s listing, which already told us it has no receipt or rejection
        and what its failure record is. With `receipts` (the sync run's buffer), a small export is delivered
        without a claim and its receipt is written in a batch: see `_copy_and_record`."""
        started = self.clock()
        version = SourceVersion.from_properties(props)
        source = self.exports.get_blob_client(props.name)
        return self._finish(self._deliver_version(source, version, listed=True, failure=failure,
                                                  receipts=receipts), started)

    def _finish(self, outcome: Outcome, started: float) -> Outcome:
        outcome.seconds = round(self.clock() - started, 3)
        self._log(outcome)
        return outcome

    def _deliver_version(self, source: Any, version: SourceVersion, listed: bool = False,
                         failure: Any = None, receipts: ReceiptBuffer | None = None) -> Outcome:
        name, etag = version.name, version.etag
        if not listed:
            if self.ledger.delivered(name, etag):
                return Outcome("already_delivered", name, etag, size=version.size)
            rejection = self.ledger.rejection(name, etag)
            if rejection is not None:
                return Outcome("rejected", name, etag, reason=rejection.reason)
            failure = self.ledger.failure(name, etag)
        if failure is not None and failure.poisoned:
            return Outcome("poisoned", name, etag, reason=failure.last_error)
        if failure is not None and failure.next_retry_at > self.clock():
            # A host retry of the trigger right after a failure: wait for the ledger's backoff, charge nothing.
            return Outcome("pending", name, etag, reason=f"next retry after {failure.next_retry_at:.0f}: "
                           f"{failure.last_error}")

        try:
            dest_path = destination_path(name, self.settings.banenor_directory, self.policy,
                                         version.last_modified)
        except NameRejected as exc:
            self.ledger.record_rejection(name, etag, str(exc))
            return Outcome("rejected", name, etag, reason=str(exc))

        if (receipts is not None and failure is None and self.settings.after_delivery == "keep"
                and self.copier.single_put(version.size)):
            return self._copy_and_record(source, version, dest_path, None, record=receipts.add)

        claimant = f"{self.owner}/{uuid.uuid4().hex[:12]}"  # one owner per attempt, also within a process
        claim = self.ledger.claim(name, etag, claimant, CLAIM_TTL)
        if claim is None:
            return Outcome("in_progress", name, etag, destination=dest_path,
                           reason="another instance is delivering this version")
        outcome = None
        keeper = _ClaimKeeper(self.ledger, name, etag, claimant, claim, self.clock)
        try:
            # A claim we could create means no claimed delivery of this version finished within CLAIM_TTL (a
            # delivered version keeps its claim), so the receipt needs no second look; a delivery that slipped in
            # unclaimed (sync's small exports) is met by the create-only commit.
            outcome = self._copy_and_record(source, version, dest_path, failure, on_progress=keeper)
            return outcome
        finally:
            # Once the receipt exists nobody claims this version again (the receipt is checked first), so a
            # delivered version keeps its claim record and saves a request; the ledger's lifecycle rule removes
            # old claims. Anything else releases the claim for the next attempt.
            if outcome is None or outcome.status not in ("delivered", "already_delivered"):
                self.ledger.release_claim(name, etag, claimant, keeper.claim_etag)

    def _copy_and_record(self, source: Any, version: SourceVersion, dest_path: str, failure: Any,
                         record: Callable[[Receipt], Receipt] | None = None,
                         on_progress: Callable[[], None] | None = None,
                         unauthorized_retries: int = UNAUTHORIZED_RETRIES,
                         metadata: dict[str, str] | None = None) -> Outcome:
        """Copy, verify, write the receipt (`record`: the ledger's own by default), then the after-delivery step.

        Without a claim (sync's small exports, `record` = the run's ReceiptBuffer) the create-only Put Blob is the
        arbiter: a second deliverer of the same version gets 409 and finds the first one's file by the relay's
        metadata, so nothing is ever written twice at Bane NOR; a race costs at most one refused upload of at
        most SINGLE_PUT_LIMIT bytes, where a claim would cost a request for every file. AFTER_DELIVERY=keep only:
        a source is never removed before its receipt is durable.
        """
        name, etag = version.name, version.etag
        dest = self.destination.get_blob_client(dest_path)
        metadata = metadata or self._metadata(version)  # a retry after a 401 is the same attempt: same attempt id
        first_attempt_at = self.clock()
        attempts = failure.attempts if failure is not None else 0
        try:
            try:
                result = self.copier.copy(source, version, dest, metadata=metadata, overwrite=False,
                                          on_progress=on_progress)
                size, md5, dest_etag, mode = result.size, result.md5, result.destination_etag, result.mode
            except DestinationExistsError:
                try:
                    size, md5, dest_etag, mode = self._adopt_or_replace(source, version, dest, metadata,
                                                                        on_progress)
                except NameRejected as exc:
                    self.ledger.record_rejection(name, etag, exc.reason)
                    return Outcome("rejected", name, etag, destination=dest_path, reason=exc.reason)
            # No receipt on the gateway's word alone: the destination itself must show these bytes.
            self._verify(dest, version, size, md5, None if mode == "existing" else metadata["relay_attempt"])
        except Exception as exc:
            if _is_trust_chain(exc):
                if getattr(exc, "status", None) == 401 and self.on_unauthorized is not None:
                    # A token refused before its expiry (revoked, say): drop it (once for every delivery in flight)
                    # and try again at once with one Entra issued anew; the credential also fetches a new Skyporten
                    # token when a fresh one is refused again. Only then does the delivery fail.
                    self.on_unauthorized(exc)
                    if unauthorized_retries > 0:
                        return self._copy_and_record(source, version, dest_path, failure, record, on_progress,
                                                     unauthorized_retries - 1, metadata)
                raise
            return self._record_failure(version, exc, dest_path)

        receipt = Receipt(
            source_name=name, source_etag=etag, size=size,
            md5=base64.b64encode(md5).decode() if md5 else "",
            destination_path=dest_path, destination_url=dest.url.split("?")[0], destination_etag=dest_etag,
            attempts=attempts + 1, first_attempt_at=first_attempt_at, delivered_at=self.clock(), mode=mode,
            original_name=name,
        )
        stored = (record or self.ledger.record_receipt)(receipt)
        if failure is not None:
            self.ledger.clear_failure(name, etag)
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

    def _adopt_or_replace(self, source: Any, version: SourceVersion, dest: Any, metadata: dict[str, str],
                          on_progress: Callable[[], None] | None = None) -> tuple[int, bytes | None, str, str]:
        """The destination exists: adopt it when it holds this very version; replace it when it holds an earlier
        version of the same export, but only as it was read (If-Match), so a version written meanwhile (perhaps a
        newer one) is looked at again first. Returns (size, md5, destination etag, mode). Raises NameRejected
        (another export's file, or a newer version) and DeliveryError (it kept changing)."""
        from .errors import DeliveryError

        for _ in range(_REPLACE_ROUNDS):
            existing, seen_etag = self._existing_delivery(dest, version, metadata)
            if existing is not None:
                return existing
            try:
                result = self.copier.copy(source, version, dest, metadata=metadata, replace_etag=seen_etag,
                                          on_progress=on_progress)
            except DestinationExistsError:
                continue  # changed since we looked: look again
            return result.size, result.md5, result.destination_etag, result.mode
        raise DeliveryError(f"{dest.blob_name!r} kept changing at Bane NOR while it was replaced.",
                            hint="it will be retried", transient=True)

    def _metadata(self, version: SourceVersion) -> dict[str, str]:
        # Recorded on the destination so Bane NOR (and we) can trace every file back to its source version.
        md = {
            "relay_source_account": _meta(getattr(self.exports, "account_name", "") or ""),
            "relay_source_container": _meta(self.settings.export_container),
            "relay_source_name": _meta(version.name),
            "relay_source_digest": source_digest(getattr(self.exports, "account_name", "") or "",
                                                 self.settings.export_container, version.name),
            "relay_source_etag": _meta(version.etag.strip('"')),
            "relay_source_size": str(version.size),
            "relay_source_modified": _modified(version),
            "relay_delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
            "relay_attempt": uuid.uuid4().hex,  # which attempt wrote it: tells a lost answer from a race
        }
        if version.content_md5:
            md["relay_source_md5"] = base64.b64encode(version.content_md5).decode()
        return md

    def _existing_delivery(self, dest: Any, version: SourceVersion,
                           ours: dict[str, str]) -> tuple[tuple[int, bytes | None, str, str] | None, str]:
        """What the destination already holds, by the relay's metadata on it, and the etag it was read at.

        Returns the facts of this very version (this attempt's own write whose answer was lost, another
        deliverer's, or an attempt that stopped after its commit), or None for an older version of the same export
        (to be replaced). Raises NameRejected when it belongs to another export or when a newer
        version of this export is already there, and DeliveryError for a file the relay did not write.
        """
        from .errors import DeliveryError

        props = self._destination_properties(dest)
        md = {k.lower(): v for k, v in (props.metadata or {}).items()}
        owner = md.get("relay_source_name")
        if owner is None:
            raise DeliveryError(
                f"Bane NOR already has a different file at {dest.blob_name!r} (not written by this relay from "
                f"{version.name!r}); it is never overwritten.",
                hint="rename the export, or ask Bane NOR to remove the file (Bane NOR deletes files after 8 days)",
                transient=False,
            )
        if "relay_source_digest" in md:
            same_export = md["relay_source_digest"] == ours["relay_source_digest"]
        else:
            # Written before the digest existed: the readable fields decide, unless the name was cut (then two
            # exports could look alike, and the file stays with the one that has it).
            same_export = len(owner) < META_LIMIT and all(
                md.get(k) == ours[k] for k in ("relay_source_account", "relay_source_container",
                                               "relay_source_name"))
        if not same_export:
            # Two exports (or two relays sharing Bane NOR's container) that map to one destination name:
            # the first one keeps it.
            where = f"{unquote(md.get('relay_source_container', '?'))}/{unquote(owner)}"
            raise NameRejected(version.name, (
                f"it would land on {dest.blob_name!r}, which already belongs to export {unquote(owner)!r} "
                f"({where} in account {unquote(md.get('relay_source_account', '?'))!r}); the name policy maps "
                "both to the same name: rename one of them"))
        if md.get("relay_source_etag") == ours["relay_source_etag"] and props.size == version.size:
            md5 = props.content_settings.content_md5
            # "copied": this attempt's own write, whose answer was lost and whose retry was refused; "existing":
            # another attempt's.
            mine = md.get("relay_attempt") == ours["relay_attempt"]
            return (props.size, bytes(md5) if md5 else None, props.etag, "copied" if mine else "existing"), props.etag
        if md.get("relay_source_modified", "") > ours["relay_source_modified"]:
            # A newer version of this export is already delivered: never replace it with an older one.
            raise NameRejected(version.name, (
                f"a newer version of this export (modified {md['relay_source_modified']}) is already at "
                f"{dest.blob_name!r}; this older version is not delivered"), hint="nothing to do")
        return None, props.etag

    @staticmethod
    def _destination_properties(dest: Any) -> Any:
        try:
            return dest.get_blob_properties()
        except Exception as exc:
            raise gateway_error(exc, dest.blob_name) from exc

    def _verify(self, dest: Any, version: SourceVersion, size: int, md5: bytes | None,
                attempt: str | None) -> None:
        """The delivery invariant: a receipt rests on Bane NOR's storage showing, through the gateway, a blob of
        the export's size whose Content-MD5 is the MD5 of the bytes sent (and, for this attempt's own write, the
        attempt id it was written with). An acknowledgement alone is not evidence: a gateway that answers 201
        and stores nothing (a mocked API, a misrouted policy) would turn files into receipts never sent again.
        Raises DeliveryError (transient: the next run sends it again)."""
        from .errors import DeliveryError

        try:
            props = self._destination_properties(dest)
        except GatewayError as exc:
            if exc.status != 404:
                raise
            props = None
        stored_md5 = props.content_settings.content_md5 if props is not None else None
        md = {k.lower(): v for k, v in ((props.metadata if props is not None else None) or {}).items()}
        if props is None:
            problem = "no such blob"
        elif props.size != version.size or size != version.size:
            problem = f"{props.size} bytes where the export has {version.size}"
        elif md5 and not stored_md5:
            problem = "no Content-MD5 for the bytes"
        elif md5 and bytes(stored_md5) != md5:
            problem = "a Content-MD5 that differs from the bytes sent"
        elif attempt is not None and md.get("relay_attempt") != attempt:
            problem = "a blob that this write did not produce"
        else:
            return
        raise DeliveryError(
            f"the gateway acknowledged {dest.blob_name!r}, but Bane NOR's storage does not hold it as sent "
            f"({problem}); no receipt is written.",
            hint="it will be sent again; if this repeats, ask Bane NOR to check the payload manager gateway "
                 "(BANENOR_STORAGE_URL) stores what it acknowledges", transient=True)

    def _record_failure(self, version: SourceVersion, exc: BaseException, dest_path: str) -> Outcome:
        reason = str(exc) if isinstance(exc, RelayError) else f"{type(exc).__name__}: {scrub(str(exc))}"
        if isinstance(exc, SourceChangedError):
            # The export was rewritten or deleted while copying: no attempt is charged; a new version gets its
            # own delivery, a deleted one is simply gone.
            try:
                gone = not self.exports.get_blob_client(version.name).exists()
            except Exception:
                gone = False
            status = "missing" if gone else "failed"
            return Outcome(status, version.name, version.etag, destination=dest_path, reason=reason)
        failure = self.ledger.record_failure(version.name, version.etag, reason, self.settings.max_attempts,
                                             terminal=_is_terminal(exc))
        status = "poisoned" if failure.poisoned else "failed"
        return Outcome(status, version.name, version.etag, destination=dest_path, reason=failure.last_error)

    def _after_delivery(self, version: SourceVersion) -> None:
        """keep | archive | delete, only after the receipt is written, and only for the delivered etag."""
        action = self.settings.after_delivery
        if action == "keep" or (action == "archive" and self.archive is None):
            return
        from azure.core import MatchConditions

        source = self.exports.get_blob_client(version.name)
        try:
            if action == "archive" and self.archive is not None and not self._archive(source, version):
                return
            source.delete_blob(etag=version.etag, match_condition=MatchConditions.IfNotModified)
        except Exception as exc:  # the delivery stands; the source stays for an operator
            log.warning("after-delivery %s of %r not done: %s", action, version.name, type(exc).__name__)

    def _archive(self, source: Any, version: SourceVersion) -> bool:
        """Copy this version to a name of its own in the archive, create-only: an archive never overwrites an
        archive. True when the archive holds this version (now, or from an earlier attempt)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        target = self.archive.get_blob_client(archive_name(version))
        metadata = {"relay_source_name": _meta(version.name), "relay_source_etag": _meta(version.etag.strip('"')),
                    "relay_source_modified": _modified(version)}
        try:
            # Copy Blob From URL (synchronous) needs the source readable by URL: a read-only SAS.
            target.start_copy_from_url(self.source_url(source), metadata=metadata, requires_sync=True,
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

    def _log(self, outcome: Outcome) -> None:
        level = logging.INFO if outcome.status in ("delivered", "already_delivered", "in_progress") else \
            logging.WARNING
        if not log.isEnabledFor(level):
            return
        # key=value pairs: Application Insights queries parse them (traces | parse message with ...).
        log.log(level, "delivery outcome=%s correlation_id=%s source=%s version=%s destination=%s bytes=%d "
                "seconds=%.3f mode=%s%s", outcome.status, outcome.correlation_id, outcome.source_name,
                (outcome.source_etag or "").strip('"'), outcome.destination, outcome.size, outcome.seconds,
                outcome.mode,
                f" reason={outcome.reason}" if outcome.reason and outcome.status != "already_delivered" else "",
                extra={"relay": outcome.as_dict()})

    def plan(self, props: Any, *, delivered: bool, rejected: bool, failure: Any, now: float) -> Outcome:
        """What `sync` would do with one listed version, and why, without writing anything (`sync --dry-run`):
        already_delivered, rejected (recorded, or by the name policy now), poisoned, pending (a failure whose
        retry is not due), failed (too big for BLOCK_SIZE), or would_deliver (new, or a due retry) with its
        destination name."""
        name, etag = props.name, props.etag
        if delivered:
            return Outcome("already_delivered", name, etag, size=props.size, reason="its receipt is in the ledger")
        if rejected:
            found = self.ledger.rejection(name, etag)
            return Outcome("rejected", name, etag, size=props.size,
                           reason=found.reason if found else "rejected earlier (recorded in the ledger)")
        if failure is not None and failure.poisoned:
            return Outcome("poisoned", name, etag, size=props.size, reason=failure.last_error)
        if failure is not None and failure.next_retry_at > now:
            retry_at = dt.datetime.fromtimestamp(failure.next_retry_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return Outcome("pending", name, etag, size=props.size,
                           reason=f"failed {failure.attempts} time(s); next retry {retry_at}")
        try:
            dest_path = destination_path(name, self.settings.banenor_directory, self.policy,
                                         SourceVersion.from_properties(props).last_modified)
        except NameRejected as exc:
            return Outcome("rejected", name, etag, size=props.size, reason=str(exc))
        from .copier import MAX_BLOCKS

        blocks = -(-props.size // self.settings.block_size)
        if blocks > MAX_BLOCKS:  # the copy would refuse it: too big for the block size (Copier.copy)
            return Outcome("failed", name, etag, destination=dest_path, size=props.size,
                           reason=f"it needs {blocks} blocks of BLOCK_SIZE; a block blob holds at most {MAX_BLOCKS}: "
                           "raise BLOCK_SIZE")
        reason = "new" if failure is None else \
            f"retry {failure.attempts + 1} of {self.settings.max_attempts} (last error: {failure.last_error})"
        return Outcome("would_deliver", name, etag, destination=dest_path, size=props.size, reason=reason)

    # -- the batch ------------------------------------------------------------------------------------------
    def preflight(self) -> None:
        """One token for the storage audience: fails fast, before any file, when the chain is broken."""
        if self.credential is not None:
            self.credential.get_token(self.settings.banenor_storage_audience + "/.default")

    def sync(self, *, dry_run: bool = False, progress: Callable[[Outcome], None] | None = None) -> SyncSummary:
        """Deliver every export version not yet delivered and every due retry. Never raises for one file."""
        started = self.clock()
        summary = SyncSummary()
        try:
            if not dry_run:
                self.preflight()
            self._sync(summary, dry_run, progress)
        except RelayError as exc:
            summary.error = str(exc)
            log.error("sync stopped: %s", exc)
        summary.seconds = round(self.clock() - started, 3)
        log.info("sync summary outcome=%s delivered=%d already=%d rejected=%d failed=%d poisoned=%d pending=%d "
                 "in_progress=%d bytes=%d seconds=%.1f", "ok" if summary.error is None else "error",
                 summary.delivered, summary.already_delivered, summary.rejected, summary.failed, summary.poisoned,
                 summary.pending, summary.in_progress, summary.bytes, summary.seconds,
                 extra={"relay_sync": {k: v for k, v in summary.as_dict().items() if k != "outcomes"}})
        return summary

    @staticmethod
    def _wait_for_one(in_flight: set[Future], receipts: ReceiptBuffer | None) -> set[Future]:
        """Wait until one delivery finishes; meanwhile write receipts that are due (a long copy must not hold
        the batch of the small ones back)."""
        while True:
            done, pending = wait(in_flight, timeout=receipts.max_age if receipts else None,
                                 return_when=FIRST_COMPLETED)
            if receipts is not None:
                receipts.flush_due()
            if done:
                return pending

    def _sync(self, summary: SyncSummary, dry_run: bool, progress: Callable[[Outcome], None] | None) -> None:
        delivered = self.ledger.delivered_keys()
        rejected = {Ledger.key(r.source_name, r.source_etag) for r in self.ledger.rejections()}
        failures = {Ledger.key(f.source_name, f.source_etag): f for f in self.ledger.failures(delivered=delivered)}
        now = self.clock()
        limit = self.settings.sync_concurrency
        error: list[BaseException] = []
        lock = threading.Lock()

        def record(outcome: Outcome) -> None:
            with lock:
                summary.add(outcome)
            if progress:
                progress(outcome)

        def run(blob: Any, failure: Any, receipts: ReceiptBuffer | None) -> None:
            name = blob.name
            if error:
                return
            try:
                record(self.deliver_listed(blob, failure, receipts))
            except RelayError as exc:
                if _is_trust_chain(exc):
                    error.append(exc)
                else:
                    record(Outcome("failed", name, reason=str(exc)))
            except Exception as exc:  # a ledger or listing hiccup for one file: report, keep going
                record(Outcome("failed", name, reason=f"{type(exc).__name__}: {scrub(str(exc))[:300]}"))

        receipts = None if dry_run else ReceiptBuffer(self.ledger)
        in_flight: set[Future] = set()
        interrupted: BaseException | None = None
        try:
            with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="relay-sync",
                                    initializer=self.pool_initializer and self.pool_initializer()) as pool:
                for blob in self.exports.list_blobs(name_starts_with=self.settings.sync_prefix or None):
                    if error:
                        break
                    if self.settings.sync_suffix and not blob.name.endswith(self.settings.sync_suffix):
                        continue
                    key = Ledger.key(blob.name, blob.etag)
                    failure = failures.get(key)
                    if dry_run:  # the real decisions, each file with its reason; nothing written
                        with lock:
                            summary.listed += 1
                        record(self.plan(blob, delivered=key in delivered, rejected=key in rejected,
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
                    in_flight.add(pool.submit(run, blob, failure, receipts))
                    if len(in_flight) >= 2 * limit:  # bounded: a 100,000-blob container never piles up futures
                        in_flight = self._wait_for_one(in_flight, receipts)
                while in_flight:
                    in_flight = self._wait_for_one(in_flight, receipts)
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
        if error:
            raise error[0]
        if receipts is not None and receipts.writes:
            try:
                self.ledger.compact_receipt_batches()
            except Exception as exc:  # housekeeping: the next sync that writes a batch tries again
                log.warning("receipt batches not compacted: %s: %s", type(exc).__name__, scrub(str(exc))[:200])
