"""The delivery ledger: what was delivered, what failed, what was refused, what is in flight.

One small JSON blob per record in the partner's storage, every write conditional (create-only or If-Match), listing
state in metadata; a sync's receipts go many to a blob under `receipt-batches/`. See docs/ledger.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobClient, ContainerClient

from .errors import RelayError, scrub
from .record_blobs import JSON_LINES, RecordBlobs
from .records import (  # noqa: F401  (the records and `standing`: importable from here as before)
    SKIPPED,
    TO_DELIVER,
    Failure,
    LinkState,
    Receipt,
    Rejection,
    b64,
    batch_versions,
    lower_keys,
    parse_batch,
    standing,
    unb64,
)

Clock = Callable[[], float]
log = logging.getLogger(__name__)

RECEIPTS = "receipts/"
RECEIPT_BATCHES = "receipt-batches/"  # a sync's receipts, many per blob (JSON lines; shared/receipts.py batches them)
FAILURES = "failures/"
REJECTED = "rejected/"
CLAIMS = "claims/"
LINKS = "links/"  # one record per broken link (shared/links.py); none while every link works

MAX_ERROR_CHARS = 500
_SAFE_ETAG = re.compile(r"[A-Za-z0-9]{1,64}")
_CONFLICT_RETRIES = 50


class Ledger:
    """The ledger in `container` (the partner's LEDGER_CONTAINER). Thread-safe: its only local state is what the
    receipt batches hold (immutable blobs, read once each).

    `clock` returns epoch seconds; failures back off `backoff_base * 2**(attempts-1)` seconds, capped at
    `backoff_max`. Storage errors other than the expected conflicts propagate (azure.core exceptions).
    """

    def __init__(
        self,
        container: ContainerClient,
        clock: Clock = time.time,
        backoff_base: float = 60,
        backoff_max: float = 3600,
    ) -> None:
        self.container = container
        self.blobs = RecordBlobs(container)  # the conditional writes, reads and listings
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # Receipt batches never change once written (unique names; a compaction writes a new one and deletes the old),
        # so the keys each one holds are read once per process: name -> keys.
        self._batch_keys: dict[str, frozenset[str]] = {}
        self._batch_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger(container={self.container.container_name!r})"

    # -- keys and blobs --------------------------------------------------------------------
    @staticmethod
    def key(name: str, etag: str) -> str:
        """`sha256(name)[:40]-<etag>`: one key per source version, safe as a blob name segment."""
        digest = hashlib.sha256(name.encode()).hexdigest()[:40]
        bare = etag.strip('"')
        safe = bare if _SAFE_ETAG.fullmatch(bare) else "h" + hashlib.sha256(bare.encode()).hexdigest()[:32]
        return f"{digest}-{safe}"

    def _blob(self, prefix: str, key: str) -> BlobClient:
        return self.blobs.blob(f"{prefix}{key}.json")

    def ensure(self) -> None:
        """Create the ledger container if it is missing.

        An identity whose role is scoped to the container itself may be refused Create Container (403) although
        the container is there: then it is enough that the container exists (one more request, only then).
        """
        try:
            self.container.create_container()
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 403 or not self.container.exists():
                raise

    # -- receipts --------------------------------------------------------------------------
    def receipt(self, name: str, etag: str) -> Receipt | None:
        """The receipt of a version: its own record, else one in a receipt batch a `sync` wrote."""
        key = self.key(name, etag)  # an etag from a listing has no quotes, one from Get Properties has
        body = self.blobs.read(self._blob(RECEIPTS, key))
        if body is not None:
            return Receipt.from_json(body)
        for _ in range(_CONFLICT_RETRIES):
            batch = next((n for n, keys in self._batch_index().items() if key in keys), None)
            if batch is None:
                return None
            body = self.blobs.read(self.blobs.blob(batch))
            if body is not None:
                return next(r for r in parse_batch(body) if self.key(r.source_name, r.source_etag) == key)
            # merged by a compaction since the listing: look again
        raise RelayError("the ledger's receipt batches kept changing under a compaction")

    def delivered(self, name: str, etag: str) -> bool:
        """Whether a version has a receipt: its own record (one GET), else the keys of the receipt batches (one
        listing; a batch is read only the first time this process sees it)."""
        key = self.key(name, etag)
        if self.blobs.read(self._blob(RECEIPTS, key)) is not None:
            return True
        return any(key in keys for keys in self._batch_index().values())

    def record_receipt(self, receipt: Receipt) -> Receipt:
        """Write the receipt once; if one exists for this version already, return that one unchanged."""
        blob = self._blob(RECEIPTS, self.key(receipt.source_name, receipt.source_etag))
        if self.blobs.create(blob, receipt.to_json(), {"source": b64(receipt.source_name)}):
            return receipt
        existing = self.blobs.read(blob)
        if existing is None:  # deleted between the two calls: nobody deletes receipts, but be exact
            return self.record_receipt(receipt)
        return Receipt.from_json(existing)

    def record_receipt_batch(self, receipts: Sequence[Receipt]) -> None:
        """Write many receipts in one request: a blob of JSON lines under a unique name (create-only). A version may
        end up with two receipts (its own and one in a batch, after two deliverers raced): readers take the union."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        blob = self.blobs.blob(f"{RECEIPT_BATCHES}{stamp}-{uuid.uuid4().hex}.jsonl")
        body = "".join(receipt.to_json() + "\n" for receipt in receipts)
        # None (409) can only mean our own write whose answer was lost and retried: the name is a fresh uuid4.
        self.blobs.create(blob, body, {"count": str(len(receipts))}, JSON_LINES)

    def compact_receipt_batches(self, max_batches: int = 100, full: int = 1000) -> int:
        """Keep the number of batch blobs (each one a GET per process) bounded: when there are more than
        `max_batches`, merge every batch of fewer than `full` receipts into one new batch, then delete the merged
        ones (only if unchanged). Readers that meet a deleted batch list again and find the merged one; a crash in
        between leaves receipts twice, which readers tolerate. Returns how many batches were merged (0: one
        listing)."""
        every = list(self.blobs.list(RECEIPT_BATCHES))
        small = [b for b in every if int(lower_keys(b.metadata).get("count", "0")) < full]
        if len(every) <= max_batches or len(small) < 2:
            return 0
        merged: list[Receipt] = []
        sources = []
        for b in small:
            body = self.blobs.read(self.blobs.blob(b.name))
            if body is not None:
                merged.extend(parse_batch(body))
                sources.append(b)
        self.record_receipt_batch(merged)
        for b in sources:
            self.blobs.delete(self.blobs.blob(b.name), b.etag)  # unless changed since the listing
        return len(sources)

    def _batch_index(self) -> dict[str, frozenset[str]]:
        """Batch name -> the keys of its receipts, for every receipt batch: one listing, plus one GET for each
        batch this process has not read yet.

        A batch that vanishes between the listing and its GET was merged by a compaction (another sync's) into a
        batch written before the deletion, so the listing is taken again until one pass reads every batch it lists.
        """
        for _ in range(_CONFLICT_RETRIES):
            index: dict[str, frozenset[str]] = {}
            complete = True
            for b in self.blobs.list(RECEIPT_BATCHES, metadata=False):
                keys = self._batch_keys.get(b.name)
                if keys is None:
                    body = self.blobs.read(self.blobs.blob(b.name))
                    if body is None:
                        complete = False
                        continue
                    keys = frozenset(self.key(name, etag) for name, etag in batch_versions(body))
                index[b.name] = keys
            with self._batch_lock:
                self._batch_keys = {**self._batch_keys, **index} if not complete else index
            if complete:
                return index
        raise RelayError("the ledger's receipt batches kept changing under a compaction")

    def delivered_keys(self) -> set[str]:
        """Keys (see `key`) of every receipt: one listing of names, plus the receipt batches (`_batch_index`)."""
        keys = {b.name[len(RECEIPTS) : -len(".json")] for b in self.blobs.list(RECEIPTS, metadata=False)}
        for batch in self._batch_index().values():
            keys.update(batch)
        return keys

    # -- failures --------------------------------------------------------------------------
    def failure(self, name: str, etag: str) -> Failure | None:
        found = self.blobs.properties(self._blob(FAILURES, self.key(name, etag)))
        return Failure.from_metadata(found[0]) if found else None

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failure: base, 2*base, 4*base ... capped at max."""
        return min(self.backoff_max, self.backoff_base * 2 ** max(0, attempts - 1))

    def record_failure(self, name: str, etag: str, error: str, max_attempts: int, *,
                       terminal: bool = False) -> Failure:
        """Count one more failed attempt; poisoned once attempts reach `max_attempts`, or at once when `terminal`
        (retrying cannot help until someone acts: `retry` makes it due again).

        Read-modify-write under etag conditions, retried on conflict, so concurrent writers all count.
        `error` is scrubbed of JWTs and cut to 500 characters. Raises RelayError if the conflicts never end.
        """
        text = scrub(error)[:MAX_ERROR_CHARS]
        blob = self._blob(FAILURES, self.key(name, etag))
        for _ in range(_CONFLICT_RETRIES):
            now = self.clock()
            found = self.blobs.properties(blob)
            previous = Failure.from_metadata(found[0]) if found else None
            attempts = (previous.attempts if previous else 0) + 1
            failure = Failure(
                source_name=name,
                source_etag=etag,
                attempts=attempts,
                last_error=text,
                first_failed_at=previous.first_failed_at if previous else now,
                last_failed_at=now,
                next_retry_at=now + self.backoff(attempts),
                poisoned=terminal or attempts >= max_attempts,
            )
            if found is None:
                written = self.blobs.create(blob, failure.to_json(), failure.to_metadata())
            else:
                written = self.blobs.replace(blob, failure.to_json(), failure.to_metadata(), found[1])
            if written:
                return failure
        raise RelayError(f"the ledger entry for {name!r} kept changing under concurrent writers")

    def clear_failure(self, name: str, etag: str) -> None:
        """Forget the failures of a version (after its receipt is written); nothing if there are none."""
        self.blobs.delete(self._blob(FAILURES, self.key(name, etag)))

    def failures(self, delivered: set[str] | None = None) -> Iterator[Failure]:
        """Every failure record of a version not delivered since, poisoned or not; listings (and the receipt
        batches this process has not read yet).

        A version can be delivered after a failure was recorded by another worker; its stale record is skipped
        (`delivered`: the keys from `delivered_keys()`, when the caller has them already).
        """
        delivered = self.delivered_keys() if delivered is None else delivered
        for b in self.blobs.list(FAILURES):
            if b.name[len(FAILURES) : -len(".json")] not in delivered:
                yield Failure.from_metadata(lower_keys(b.metadata))

    def due_retries(self) -> Iterator[tuple[str, str]]:
        """(name, etag) of failures that are not poisoned and whose next_retry_at has come."""
        now = self.clock()
        for f in self.failures():
            if standing(False, False, f, now) == "retry":
                yield f.source_name, f.source_etag

    def _unpoison(self, match: Callable[[Failure], bool]) -> int:
        """Give each poisoned failure that `match`es a fresh attempt budget, due now."""
        count = 0
        for b in self.blobs.list(FAILURES):
            blob = self.blobs.blob(b.name)
            md, etag = lower_keys(b.metadata), b.etag
            for _ in range(_CONFLICT_RETRIES):
                f = Failure.from_metadata(md)
                if not f.poisoned or not match(f):
                    break
                # A manual retry means someone fixed the cause: reset the count so the usual backoff
                # schedule applies again (first_failed_at and last_error stay as history).
                fresh = dataclasses.replace(f, attempts=0, poisoned=False, next_retry_at=self.clock())
                if self.blobs.replace(blob, fresh.to_json(), fresh.to_metadata(), etag):
                    count += 1
                    break
                found = self.blobs.properties(blob)
                if found is None:
                    break
                md, etag = found
        return count

    def retry(self, name: str) -> int:
        """Un-poison every poisoned version of `name` (due now); returns how many."""
        return self._unpoison(lambda f: f.source_name == name)

    def retry_all_poisoned(self) -> int:
        """Un-poison every poisoned failure (due now); returns how many."""
        return self._unpoison(lambda f: True)

    # -- rejections ------------------------------------------------------------------------
    def record_rejection(self, name: str, etag: str, reason: str) -> Rejection:
        """Record that a version is refused for good; idempotent (the first record wins)."""
        rejection = Rejection(name, etag, reason[:MAX_ERROR_CHARS], self.clock())
        blob = self._blob(REJECTED, self.key(name, etag))
        if self.blobs.create(blob, rejection.to_json(), rejection.to_metadata()):
            return rejection
        return self.rejection(name, etag) or rejection

    def rejection(self, name: str, etag: str) -> Rejection | None:
        found = self.blobs.properties(self._blob(REJECTED, self.key(name, etag)))
        return Rejection.from_metadata(found[0]) if found else None

    def rejections(self) -> Iterator[Rejection]:
        for b in self.blobs.list(REJECTED):
            yield Rejection.from_metadata(lower_keys(b.metadata))

    # -- claims ----------------------------------------------------------------------------
    def try_claim(self, name: str, etag: str, owner: str, ttl: float) -> bool:
        """Claim a version for delivery for `ttl` seconds; True for exactly one of concurrent claimants."""
        return self.claim(name, etag, owner, ttl) is not None

    def claim(self, name: str, etag: str, owner: str, ttl: float) -> str | None:
        """Like `try_claim`, returning the claim record's etag (for `release_claim`), or None.

        Create-only first (one request when nobody holds it); a claim past its expiry (or one `owner` already
        holds, which is renewed) is taken over with If-Match, so two claimants racing for an expired claim
        cannot both win.
        """
        blob = self._blob(CLAIMS, self.key(name, etag))
        for _ in range(_CONFLICT_RETRIES):
            now = self.clock()
            claim = {"source": name, "etag": etag, "owner": owner, "claimed_at": now, "expires_at": now + ttl}
            md = {"owner": b64(owner), "expiresat": repr(now + ttl)}
            body = json.dumps(claim, ensure_ascii=False)
            created = self.blobs.create(blob, body, md)
            if created is not None:
                return created
            found = self.blobs.properties(blob)
            if found is None:
                continue  # released meanwhile: try to create again
            held, blob_etag = found
            if unb64(held["owner"]) != owner and float(held["expiresat"]) > now:
                return None
            # Ours to renew, or expired: take it over only if nobody changed it since we looked; if someone
            # did, look again (they may hold it now, or have released it).
            replaced = self.blobs.replace(blob, body, md, blob_etag)
            if replaced is not None:
                return replaced
        return None

    def renew_claim(self, name: str, etag: str, owner: str, claim_etag: str, ttl: float) -> str | None:
        """Extend a claim `owner` holds by `ttl` from now, only if nobody changed it since `claim_etag` (If-Match):
        a claim that expired and was taken over stays with its new owner. Returns the new etag, or None."""
        now = self.clock()
        body = json.dumps({"source": name, "etag": etag, "owner": owner, "claimed_at": now, "expires_at": now + ttl},
                          ensure_ascii=False)
        return self.blobs.replace(self._blob(CLAIMS, self.key(name, etag)), body,
                             {"owner": b64(owner), "expiresat": repr(now + ttl)}, claim_etag)

    def release_claim(self, name: str, etag: str, owner: str, claim_etag: str | None = None) -> None:
        """Delete the claim if `owner` still holds it; another owner's claim is left alone.

        With the `claim_etag` that `claim` returned, one conditional delete (If-Match) does it.
        """
        blob = self._blob(CLAIMS, self.key(name, etag))
        if claim_etag and claim_etag != "*":
            self.blobs.delete(blob, claim_etag)
            return
        found = self.blobs.properties(blob)
        if found is not None and unb64(found[0]["owner"]) == owner:
            self.blobs.delete(blob, found[1])

    # -- links -----------------------------------------------------------------------------
    def link_states(self) -> list[LinkState]:
        """The links recorded broken (one listing); empty while every link works."""
        return [LinkState.from_metadata(lower_keys(b.metadata)) for b in self.blobs.list(LINKS)]

    def record_link(self, state: LinkState) -> LinkState:
        """Record `state` unless its link is recorded broken already (create-only: concurrent runs agree on one
        broken period). Returns the record that holds: `state` when it is new, else the earlier one."""
        blob = self._blob(LINKS, state.link)
        if self.blobs.create(blob, state.to_json(), state.to_metadata()):
            return state
        found = self.blobs.properties(blob)
        return LinkState.from_metadata(found[0]) if found else self.record_link(state)

    def clear_link(self, link: str) -> bool:
        """Forget that `link` was broken; True when this call removed the record (so one run logs its end)."""
        return self.blobs.delete(self._blob(LINKS, link))

    # -- overview --------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """delivered, failed (not poisoned), poisoned and rejected versions; listings (and the receipt batches
        this process has not read yet)."""
        counts = {"delivered": 0, "failed": 0, "poisoned": 0, "rejected": 0}
        delivered = self.delivered_keys()
        counts["delivered"] = len(delivered)
        counts["rejected"] = sum(1 for _ in self.blobs.list(REJECTED, metadata=False))
        for failure in self.failures(delivered=delivered):
            counts["poisoned" if failure.poisoned else "failed"] += 1
        return counts

