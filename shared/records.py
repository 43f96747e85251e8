"""The ledger's records: what one blob of the ledger holds (a receipt, a failure, a rejection, a broken link), as
frozen dataclasses with their JSON body and the metadata a listing reads; and `standing`, the one decision on a
listed export version that these records make. Pure: no storage here (shared/ledger.py reads and writes them).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def b64(text: str) -> str:
    # Blob metadata values must be ASCII: names and error texts go base64url-encoded.
    return base64.urlsafe_b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text.encode()).decode()


def parse_batch(body: bytes) -> list[Receipt]:
    return [Receipt.from_json(line) for line in body.splitlines() if line.strip()]


def batch_versions(body: bytes) -> Iterator[tuple[str, str]]:
    """(source name, source etag) of each receipt in a batch, without building the receipts: a sync reads every
    batch this way (half the CPU of `parse_batch`; 100 batches of 1,000 receipts in a ledger of 100,000)."""
    for line in body.splitlines():
        if line.strip():
            data = json.loads(line)
            yield data["source_name"], data["source_etag"]


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


class _Record:
    """to_json/from_json for the frozen record dataclasses; unknown fields in stored JSON are ignored."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], text: str | bytes) -> T:
        data = json.loads(text)
        names = _field_names(cls)  # type: ignore[arg-type]  # a class is hashable
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Receipt(_Record):
    """One export version delivered: where it went and what Bane NOR's storage answered."""

    source_name: str
    source_etag: str
    size: int
    md5: str  # base64, as in Content-MD5
    destination_path: str
    destination_url: str
    destination_etag: str
    attempts: int
    first_attempt_at: float
    delivered_at: float
    mode: str  # how it got there: "stream", "server", "copied" (this attempt's, answer lost), "existing" (adopted)
    original_name: str  # the source name, as source_name (kept: readers of every version expect the field)


@dataclass(frozen=True)
class Failure(_Record):
    """One export version that failed: how often, the last error, and when it is due again."""

    source_name: str
    source_etag: str
    attempts: int
    last_error: str
    first_failed_at: float
    last_failed_at: float
    next_retry_at: float
    poisoned: bool

    def to_metadata(self) -> dict[str, str]:
        return {
            "source": b64(self.source_name),
            "etag": b64(self.source_etag),
            "attempts": str(self.attempts),
            "error": b64(self.last_error),
            "firstfailedat": repr(self.first_failed_at),
            "lastfailedat": repr(self.last_failed_at),
            "nextretryat": repr(self.next_retry_at),
            "poisoned": "1" if self.poisoned else "0",
        }

    @classmethod
    def from_metadata(cls, md: dict[str, str]) -> Failure:
        return cls(
            source_name=unb64(md["source"]),
            source_etag=unb64(md["etag"]),
            attempts=int(md["attempts"]),
            last_error=unb64(md["error"]),
            first_failed_at=float(md["firstfailedat"]),
            last_failed_at=float(md["lastfailedat"]),
            next_retry_at=float(md["nextretryat"]),
            poisoned=md["poisoned"] == "1",
        )


@dataclass(frozen=True)
class Rejection(_Record):
    """One export version refused for good (its name or extension); never retried."""

    source_name: str
    source_etag: str
    reason: str
    rejected_at: float

    def to_metadata(self) -> dict[str, str]:
        return {
            "source": b64(self.source_name),
            "etag": b64(self.source_etag),
            "reason": b64(self.reason),
            "rejectedat": repr(self.rejected_at),
        }

    @classmethod
    def from_metadata(cls, md: dict[str, str]) -> Rejection:
        return cls(
            source_name=unb64(md["source"]),
            source_etag=unb64(md["etag"]),
            reason=unb64(md["reason"]),
            rejected_at=float(md["rejectedat"]),
        )


@dataclass(frozen=True)
class LinkState(_Record):
    """A link that is broken: which (doctor's name), since when, the refusal (HTTP status and error code where
    there is one), the cause in one sentence and the fix; `transient` when the link did not refuse but stopped
    answering (every request of a window failed)."""

    link: str
    since: float
    cause: str
    fix: str
    status: int | None = None
    code: str | None = None
    transient: bool = False

    def to_metadata(self) -> dict[str, str]:
        return {"link": self.link, "since": repr(self.since), "cause": b64(self.cause), "fix": b64(self.fix),
                "status": str(self.status or ""), "code": b64(self.code or ""),
                "transient": "1" if self.transient else "0"}

    @classmethod
    def from_metadata(cls, md: dict[str, str]) -> LinkState:
        return cls(link=md["link"], since=float(md["since"]), cause=unb64(md["cause"]), fix=unb64(md["fix"]),
                   status=int(md["status"]) if md.get("status") else None, code=unb64(md.get("code", "")) or None,
                   transient=md.get("transient") == "1")


# What to do with one listed export version, from what the ledger holds of it (`standing`).
SKIPPED = ("already_delivered", "rejected", "poisoned", "pending")  # nothing to do now
TO_DELIVER = ("new", "retry")  # deliver it: for the first time, or a failure whose retry is due


def standing(delivered: bool, rejected: bool, failure: Failure | None, now: float) -> str:
    """The one decision on a listed version, used by the trigger's delivery, the sync, the dry run and `due_retries`:
    already_delivered (it has a receipt), rejected (refused for good), poisoned (waits for `retry`), pending (a
    failure whose next retry has not come), retry (a failure due again) or new."""
    if delivered:
        return "already_delivered"
    if rejected:
        return "rejected"
    if failure is None:
        return "new"
    if failure.poisoned:
        return "poisoned"
    return "pending" if failure.next_retry_at > now else "retry"


def lower_keys(md: dict[str, str] | None) -> dict[str, str]:
    # Metadata names are case-insensitive in Azure; compare them lower-cased.
    return {k.lower(): v for k, v in (md or {}).items()}
