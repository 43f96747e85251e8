"""The steps every way of writing an export shares (shared/copier.py picks the way): the source version every read is
pinned to, reading a range of it, checking size and MD5 before anything is committed, the destination's write
condition (create-only, or replace one version), block ids and the blocks already staged, and the one atomic commit.
Every storage error becomes a `DeliveryError` that carries no secret (shared/copy_errors.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.storage.blob import BlobClient, ContentSettings

from .copy_errors import translate
from .errors import DestinationExistsError, VerificationError


@dataclass(frozen=True)
class SourceVersion:
    """The source export as read once before copying; every later read is pinned to `etag`."""

    name: str
    etag: str
    size: int
    content_type: str | None
    content_disposition: str | None
    content_md5: bytes | None
    last_modified: datetime

    @classmethod
    def from_properties(cls, props: Any) -> SourceVersion:
        """From BlobProperties (Get Blob Properties' answer, or an item of the SDK's listing), or from a
        `storage.ListedBlob` (the relay's own listing: the same fields, without `content_settings`)."""
        settings = getattr(props, "content_settings", props)
        md5 = settings.content_md5
        return cls(name=props.name, etag=props.etag, size=props.size, content_type=settings.content_type,
                   content_disposition=settings.content_disposition, content_md5=bytes(md5) if md5 else None,
                   last_modified=props.last_modified)


@dataclass(frozen=True)
class WriteCondition:
    """How the destination's commit is conditioned: create-only (If-None-Match: *), replace whatever is there, or
    replace only the version read before (If-Match: `etag`)."""

    overwrite: bool
    etag: str | None = None

    def put_blob_kwargs(self) -> dict[str, Any]:
        # overwrite=False makes the SDK send If-None-Match: * on Put Blob.
        if self.etag:
            return {"overwrite": True, "etag": self.etag, "match_condition": MatchConditions.IfNotModified}
        return {"overwrite": self.overwrite}

    def commit_kwargs(self) -> dict[str, Any]:
        # Put Block List. Pass match_condition alone for create-only: azure-storage-blob 12.31 does not pop
        # `etag` for IfMissing and hands it on to requests (TypeError).
        if self.etag:
            return {"etag": self.etag, "match_condition": MatchConditions.IfNotModified}
        return {} if self.overwrite else {"match_condition": MatchConditions.IfMissing}


class _Pieces:
    """A write-only sink for StorageStreamDownloader.readinto that keeps the SDK's own bytes objects.

    readall() copies every block twice more (into a BytesIO, then out of a slice); with one GET per
    block this keeps the response's bytes as they are, which lowers peak memory per worker by ~2 blocks.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def value(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def read_range(source: BlobClient, version: SourceVersion, offset: int, length: int) -> bytes:
    """`length` bytes of the source from `offset`, of this version only. Raises SourceChangedError (rewritten
    meanwhile), VerificationError (fewer bytes than asked) or CopyFailed."""
    try:
        # Pinned to the etag (If-Match): a rewrite mid-copy answers 412 instead of mixing versions.
        # Per-range MD5 (x-ms-range-get-content-md5) only when the source declares no Content-MD5:
        # otherwise the whole-file MD5 checked before the commit covers every byte end to end, and the
        # per-range check would cost 4 MiB GETs and a 3-4x slower read (bench/copy_memory.py).
        downloader = source.download_blob(
            offset,
            length,
            etag=version.etag,
            match_condition=MatchConditions.IfNotModified,
            validate_content=version.content_md5 is None,
            max_concurrency=1,
        )
        sink = _Pieces()
        downloader.readinto(sink)  # type: ignore[arg-type]  # a write-only sink is all readinto uses
        data = sink.value()
    except AzureError as err:
        raise translate(err, blob=version.name, side="source", action="reading") from err
    if len(data) != length:
        raise VerificationError(
            f"reading {version.name!r}: got {len(data)} bytes at offset {offset}, expected {length}",
            blob=version.name,
            side="source",
        )
    return data


def check(version: SourceVersion, total: int, md5: bytes) -> None:
    """Raises VerificationError unless the bytes read are the size and the Content-MD5 the source declared."""
    if total != version.size:
        raise VerificationError(
            f"{version.name!r}: read {total} bytes, the source declared {version.size}; "
            "nothing committed",
            blob=version.name,
            side="source",
        )
    if version.content_md5 and version.content_md5 != md5:
        raise VerificationError(
            f"{version.name!r}: the bytes' MD5 differs from the source's Content-MD5; nothing committed",
            hint="the export may be corrupt at the partner's side; the next run retries it",
            blob=version.name,
            side="source",
        )


def content_settings(version: SourceVersion, md5: bytes | None) -> ContentSettings:
    return ContentSettings(
        content_type=version.content_type,
        content_disposition=version.content_disposition,
        content_md5=bytearray(md5) if md5 else None,
    )


def block_ids(version: SourceVersion, dest: BlobClient, count: int, block_size: int) -> list[str]:
    # Fixed width: every block of a blob must have an id of the same length (Put Block), 18 characters as
    # always. The prefix is this version's own (source etag, destination, block size): a later attempt at the
    # same version finds the blocks an earlier one staged, and an attempt at another version (or with another
    # block size) can never commit them. The SDK base64-encodes the id on the wire.
    seed = f"{version.name}\n{version.etag}\n{dest.url.split('?')[0]}\n{block_size}"
    prefix = hashlib.sha256(seed.encode()).hexdigest()[:12]
    return [f"{prefix}{i:06d}" for i in range(count)]


def block_ranges(size: int, block_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each block of a file of `size` bytes."""
    return [(off, min(block_size, size - off)) for off in range(0, size, block_size)]


def staged(dest: BlobClient) -> dict[str, int]:
    """The destination's uncommitted blocks (id -> size), from one Get Block List. Empty when there are none
    or they cannot be listed: then every block is sent, as on a first attempt."""
    try:
        _committed, uncommitted = dest.get_block_list("uncommitted")
    except AzureError:
        return {}
    return {block.id: block.size for block in uncommitted}


def commit(dest: BlobClient, version: SourceVersion, ids: list[str], md5: bytes | None, metadata: dict[str, str],
           condition: WriteCondition) -> str:
    """One Put Block List of `ids`: readers never see a partial file (docs/protocol.md section 6). The new etag.
    Raises DestinationExistsError (the condition refused it; `same_content` told when it can be) or CopyFailed."""
    try:
        response = dest.commit_block_list(
            ids,  # type: ignore[arg-type]  # the SDK takes block ids as strings as well as BlobBlocks
            content_settings=content_settings(version, md5),
            metadata=metadata,
            **condition.commit_kwargs(),
        )
    except AzureError as err:
        error = translate(err, blob=version.name, side="destination", action="committing")
        if isinstance(error, DestinationExistsError):
            compare_existing(dest, error, version.size, md5)
        raise error from err
    return str(response["etag"])


def compare_existing(dest: BlobClient, error: DestinationExistsError, size: int, md5: bytes | None) -> None:
    """Sets `error.same_content`: one HEAD, only after a refusal, so the caller can treat "already there, same
    bytes" as success."""
    if md5 is None:
        return
    try:
        props = dest.get_blob_properties()
    except AzureError:
        return
    existing = props.content_settings.content_md5
    error.same_content = props.size == size and existing is not None and bytes(existing) == md5
