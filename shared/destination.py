"""What a file at Bane NOR means: the relay's metadata on each destination blob and what it decides.

Owns the metadata the relay writes (source account, container, name, digest, etag, attempt id), reading it back
to adopt a destination that already holds this version, replace an earlier version or refuse another export's
file, and the delivery invariant: no receipt until Bane NOR's storage shows the bytes that were sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from .copier import Copier, DestinationExistsError, SourceVersion
from .errors import DeliveryError, GatewayError, NameRejected
from .listing import ListedBlob, list_blob_pages
from .storage import gateway_error

log = logging.getLogger(__name__)

META_LIMIT = 1024  # bytes per metadata value we write (Azure allows 8 KiB in all)
_REPLACE_ROUNDS = 3  # looks at a destination that keeps changing while an updated export replaces it
# ListingEvidence: a page holds a batch and some neighbours; a listing scans at most FACTOR entries per write
# plus EXTRA (other files between the prefix's start and the batch), then reads the rest back one by one.
LISTING_PAGE_MAX = 5000  # the service's own maximum
LISTING_SCAN_FACTOR = 2
LISTING_SCAN_EXTRA = 200
LISTINGS_PER_DIRECTORY = 8  # a batch's names in one directory are split into at most this many listings

# (size, md5, destination etag, mode) of what the destination holds for this version
Facts = tuple[int, bytes | None, str, str]


def modified(version: SourceVersion) -> str:
    """The source version's last-modified time, sortable, for ordering versions of one export."""
    return version.last_modified.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def meta(value: str) -> str:
    """Metadata values must be ASCII: percent-encode, bounded."""
    return quote(value, safe="/:._-@")[:META_LIMIT]


def source_digest(account: str, container: str, name: str) -> str:
    """Who owns a destination, compared in full: the readable `relay_source_name` is cut at META_LIMIT, so two
    long source paths can look alike there; this digest of the full account, container and path cannot."""
    return hashlib.sha256(f"{account}\n{container}\n{name}".encode()).hexdigest()


def relay_metadata(version: SourceVersion, account: str, container: str, now: float) -> dict[str, str]:
    """Recorded on the destination so Bane NOR (and we) can trace every file back to its source version; a new
    `relay_attempt` id each call (which attempt wrote it: tells a lost answer from a race)."""
    md = {
        "relay_source_account": meta(account),
        "relay_source_container": meta(container),
        "relay_source_name": meta(version.name),
        "relay_source_digest": source_digest(account, container, version.name),
        "relay_source_etag": meta(version.etag.strip('"')),
        "relay_source_size": str(version.size),
        "relay_source_modified": modified(version),
        "relay_delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "relay_attempt": uuid.uuid4().hex,
    }
    if version.content_md5:
        md["relay_source_md5"] = base64.b64encode(version.content_md5).decode()
    return md


def properties(dest: Any) -> Any:
    """Get Blob Properties of the destination through the gateway; its errors translated (GatewayError)."""
    try:
        return dest.get_blob_properties()
    except Exception as exc:
        raise gateway_error(exc, dest.blob_name) from exc


def existing_delivery(dest: Any, version: SourceVersion, ours: dict[str, str]) -> tuple[Facts | None, str]:
    """What the destination already holds, by the relay's metadata on it, and the etag it was read at.

    Returns the facts of this very version (this attempt's own write whose answer was lost, another
    deliverer's, or an attempt that stopped after its commit), or None for an older version of the same export
    (to be replaced). Raises NameRejected when it belongs to another export or when a newer
    version of this export is already there, and DeliveryError for a file the relay did not write.
    """
    props = properties(dest)
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


def adopt_or_replace(copier: Copier, source: Any, version: SourceVersion, dest: Any, metadata: dict[str, str],
                     on_progress: Callable[[], None] | None = None) -> Facts:
    """The destination exists: adopt it when it holds this very version; replace it when it holds an earlier
    version of the same export, but only as it was read (If-Match), so a version written meanwhile (perhaps a
    newer one) is looked at again first. Returns (size, md5, destination etag, mode). Raises NameRejected
    (another export's file, or a newer version) and DeliveryError (it kept changing)."""
    for _ in range(_REPLACE_ROUNDS):
        existing, seen_etag = existing_delivery(dest, version, metadata)
        if existing is not None:
            return existing
        try:
            result = copier.copy(source, version, dest, metadata=metadata, replace_etag=seen_etag,
                                 on_progress=on_progress)
        except DestinationExistsError:
            continue  # changed since we looked: look again
        return result.size, result.md5, result.destination_etag, result.mode
    raise DeliveryError(f"{dest.blob_name!r} kept changing at Bane NOR while it was replaced.",
                        hint="it will be retried", transient=True)


@dataclass(frozen=True)
class Sent:
    """What one write sent to Bane NOR, for the evidence: the destination path, the export version, the size and
    MD5 of the bytes sent, and the attempt id they were written with (None: an earlier attempt's file, adopted)."""

    path: str
    version: SourceVersion
    size: int
    md5: bytes | None
    attempt: str | None


def _problem(found: ListedBlob | None, sent: Sent) -> str | None:
    """Why `found` (what a Get Blob Properties or a listing shows; None: not there) is not evidence of `sent`."""
    if found is None:
        return "no such blob"
    stored_md5 = found.content_md5
    md = {k.lower(): v for k, v in found.metadata.items()}
    if found.size != sent.version.size or sent.size != sent.version.size:
        return f"{found.size} bytes where the export has {sent.version.size}"
    if sent.md5 and not stored_md5:
        return "no Content-MD5 for the bytes"
    if sent.md5 and bytes(stored_md5 or b"") != sent.md5:
        return "a Content-MD5 that differs from the bytes sent"
    if sent.attempt is not None and md.get("relay_attempt") != sent.attempt:
        return "a blob that this write did not produce"
    return None


def _not_held(path: str, problem: str) -> DeliveryError:
    return DeliveryError(
        f"the gateway acknowledged {path!r}, but Bane NOR's storage does not hold it as sent "
        f"({problem}); no receipt is written.",
        hint="it will be sent again; if this repeats, ask Bane NOR to check the payload manager gateway "
             "(BANENOR_STORAGE_URL) stores what it acknowledges", transient=True)


def verify(dest: Any, version: SourceVersion, size: int, md5: bytes | None, attempt: str | None) -> None:
    """The delivery invariant: a receipt rests on Bane NOR's storage showing, through the gateway, a blob of
    the export's size whose Content-MD5 is the MD5 of the bytes sent (and, for this attempt's own write, the
    attempt id it was written with). An acknowledgement alone is not evidence: a gateway that answers 201
    and stores nothing (a mocked API, a misrouted policy) would turn files into receipts never sent again.
    Raises DeliveryError (transient: the next run sends it again). One Get Blob Properties; a sync's small
    deliveries use `ListingEvidence` instead (one listing per batch)."""
    try:
        props = properties(dest)
    except GatewayError as exc:
        if exc.status != 404:
            raise
        found = None
    else:
        stored_md5 = props.content_settings.content_md5
        found = ListedBlob(dest.blob_name, props.size, bytes(stored_md5) if stored_md5 else None,
                           dict(props.metadata or {}))
    problem = _problem(found, Sent(dest.blob_name, version, size, md5, attempt))
    if problem is not None:
        raise _not_held(dest.blob_name, problem)


class ListingEvidence:
    """The same invariant as `verify` for a batch of writes, from listings of Bane NOR's directories instead of
    one read-back each: the writes are grouped by directory, each group's common name prefix is listed (with
    metadata) in name order from its first name to its last, and each write is judged by its entry. A write
    the listing does not show (not there, or past the scan's bound) is read back on its own, so the verdict is
    `verify`'s; an identity that may not list (403: an ACL without r on the directory) is read back file by file
    for the rest of the run. One per sync run; thread-safe (one batch is checked at a time)."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.listing_refused = False
        self.listings = 0  # List Blobs pages read

    def __call__(self, writes: Sequence[Sent]) -> list[BaseException | None]:
        """None for each write the destination shows as sent, else the error (`verify`'s) that says why not."""
        entries = {} if self.listing_refused else self._list({w.path for w in writes})
        verdicts: list[BaseException | None] = []
        for write in writes:
            entry = entries.get(write.path)
            if entry is None:
                try:
                    verify(self.container.get_blob_client(write.path), write.version, write.size, write.md5,
                           write.attempt)
                except Exception as exc:
                    verdicts.append(exc)
                else:
                    verdicts.append(None)
                continue
            problem = _problem(entry, write)
            verdicts.append(None if problem is None else _not_held(write.path, problem))
        return verdicts

    def _list(self, paths: set[str]) -> dict[str, ListedBlob]:
        found: dict[str, ListedBlob] = {}
        folders: dict[str, list[str]] = {}
        for path in sorted(paths):
            folders.setdefault(path.rpartition("/")[0], []).append(path)
        for names in folders.values():
            for group in listing_groups(names):
                try:
                    self._list_group(group, paths, found)
                except Exception as exc:
                    error = gateway_error(exc, None)
                    if getattr(error, "status", None) == 403:
                        self.listing_refused = True
                        log.info("listing Bane NOR's directory is not allowed (%s); each delivery is read back on "
                                 "its own, one request more per file", getattr(error, "error_code", None) or 403)
                        return found
                    log.warning("listing Bane NOR's directory for the evidence failed (%s); those deliveries are "
                                "read back one by one", error)
        return found

    def _list_group(self, names: list[str], wanted: set[str], found: dict[str, ListedBlob]) -> None:
        """List from the group's common prefix up to its last name (names come in order), scanning at most a
        bounded number of entries: past the bound the rest is read back one by one."""
        prefix, last = _common_prefix(names[0], names[-1]), names[-1]
        budget = LISTING_SCAN_FACTOR * len(names) + LISTING_SCAN_EXTRA
        page = min(LISTING_PAGE_MAX, len(names) + LISTING_SCAN_EXTRA)
        for entries in list_blob_pages(self.container, prefix, page):
            self.listings += 1
            budget -= not entries  # an empty page costs too: a marker that keeps coming ends within the budget
            if budget < 0:
                return
            for entry in entries:
                budget -= 1
                if entry.name > last or budget < 0:
                    return
                if entry.name in wanted:
                    found[entry.name] = entry


def _common_prefix(first: str, last: str) -> str:
    common = 0
    while common < min(len(first), len(last)) and first[common] == last[common]:
        common += 1
    return first[:common]


def listing_groups(names: list[str]) -> list[list[str]]:
    """Sorted names of one directory -> the groups to list, each from its own common prefix.

    A listing starts at the first blob with its prefix, so a batch of numbered files `file-00150` .. `file-00349`
    (prefix `file-00`) would scan `file-00000` .. `file-00149` first. Split by the character after the common
    prefix (`file-001`, `file-002`, `file-003`): only the first group can still start before its first name (the
    others start at a boundary that the batch's contiguous names cross), so it is split again, as long as the
    batch stays within LISTINGS_PER_DIRECTORY listings. Names with nothing in common stay one bounded listing."""
    done: list[list[str]] = []
    first = names
    while len(first) > 1:
        depth = len(_common_prefix(first[0], first[-1]))
        split: dict[str, list[str]] = {}
        for name in first:
            split.setdefault(name[depth:depth + 1], []).append(name)
        if len(done) + len(split) > LISTINGS_PER_DIRECTORY:
            break
        head, *rest = split.values()
        done[:0] = rest
        first = head
    return [first, *done]
