"""The copy engine: moves one export's bytes from the partner's blob into Bane NOR's storage.

Owns the three ways to write (one Put Blob; staged blocks streamed through this process; staged blocks the
destination pulls from a SAS URL), the single atomic commit, create-only conditions and the source-etag pin. Every
storage error it meets becomes a `DeliveryError` that carries no secret (shared/copy_errors.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.storage.blob import BlobClient, ContentSettings

from .copy_errors import ServerRefusal, is_server_refusal, translate
from .errors import (  # noqa: F401  (the CopyFailed family: shared/errors.py; importable from here as before)
    SERVER_COPY_CODES,
    CopyFailed,
    DeliveryError,
    DestinationExistsError,
    ServerCopyRefusedError,
    SourceChangedError,
    VerificationError,
    link_of,
    scrub,
)

log = logging.getLogger(__name__)

MODES = ("stream", "server", "auto")
# Block blobs hold at most 50,000 committed blocks (the Blob service's limit).
MAX_BLOCKS = 50_000
# Put Block allows up to 4000 MiB; Bane NOR's gateway allows 100 MB per request (docs/protocol.md section 6).
MAX_BLOCK_BYTES = 4000 * 1024 * 1024
# A source SAS is re-signed once it is this old (the runtime signs each for 15 minutes): a long server copy never
# presents an expired one.
SAS_REFRESH_SECONDS = 600.0


# --- value objects ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyOptions:
    """How to copy. `validate()` lists every problem at once (empty list: usable)."""

    block_size: int = 8 * 1024 * 1024
    parallelism: int = 4
    single_put_limit: int = 8 * 1024 * 1024
    mode: str = "auto"
    max_request_bytes: int = 100 * 1000 * 1000

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.max_request_bytes < 1:
            problems.append(f"max_request_bytes must be positive, got {self.max_request_bytes}")
        if self.block_size < 1:
            problems.append(f"block_size must be positive, got {self.block_size}")
        elif self.block_size > self.max_request_bytes:
            # Bane NOR's gateway refuses requests over 100 MB (docs/protocol.md section 6).
            problems.append(
                f"block_size {self.block_size} is over the gateway's per-request limit of "
                f"{self.max_request_bytes} bytes"
            )
        elif self.block_size > MAX_BLOCK_BYTES:
            problems.append(f"block_size {self.block_size} is over Put Block's limit of {MAX_BLOCK_BYTES}")
        if self.parallelism < 1:
            problems.append(f"parallelism must be at least 1, got {self.parallelism}")
        if self.single_put_limit < 0:
            problems.append(f"single_put_limit must not be negative, got {self.single_put_limit}")
        elif self.single_put_limit > self.max_request_bytes:
            problems.append(
                f"single_put_limit {self.single_put_limit} is over the gateway's per-request limit of "
                f"{self.max_request_bytes} bytes: larger files must go as blocks"
            )
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        return problems


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
class CopyResult:
    """What was committed. `md5` is the whole file's MD5: computed from the bytes in stream mode (always
    known), the source's own Content-MD5 in server mode (None when the source has none: the bytes never
    pass through this process, and reading the destination back would defeat the point). `single_put`: the
    copy was one Put Blob (read whole, sent whole), not blocks committed with Put Block List."""

    size: int
    md5: bytes | None
    destination_etag: str
    mode: str
    blocks: int
    seconds: float
    single_put: bool


# --- the copier -----------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _WriteCondition:
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


class Copier:
    """Copies one source blob to one destination blob per `copy()` call; thread-safe.

    `source_sas(blob)` returns a short-lived read-only SAS URL for the source (server mode); None turns
    server mode off. A copy that runs longer than `sas_refresh_seconds` signs a new one for the blocks after that
    (the runtime's SAS lives 15 minutes). `clock` times copies (CopyResult.seconds) and the SAS's age.
    """

    def __init__(
        self,
        options: CopyOptions,
        source_sas: Callable[[BlobClient], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sas_refresh_seconds: float = SAS_REFRESH_SECONDS,
        # Called where a block pool is made; returns its threads' initializer (shared/invocation.py).
        pool_initializer: Callable[[], Callable[[], None] | None] | None = None,
    ) -> None:
        self._pool_initializer = pool_initializer
        problems = options.validate()
        if problems:
            raise ValueError("invalid copy options: " + "; ".join(problems))
        if options.mode == "server" and source_sas is None:
            raise ValueError("mode 'server' needs a source_sas callback")
        self._options = options
        self._source_sas = source_sas
        self._clock = clock
        self._sas_refresh = sas_refresh_seconds
        self._lock = threading.Lock()
        self.server_disabled_reason: str | None = None
        if source_sas is None and options.mode == "auto":
            self.server_disabled_reason = "no source SAS provider configured"

    def __repr__(self) -> str:
        return f"Copier(mode={self._options.mode!r}, server_disabled_reason={self.server_disabled_reason!r})"

    # -- public

    def single_put(self, size: int) -> bool:
        """Whether a version of `size` bytes goes in one Put Blob (read whole, sent whole, atomic)."""
        return size == 0 or (self._options.mode != "server" and size <= self._options.single_put_limit)

    def read_source(self, source: BlobClient) -> SourceVersion:
        """One Get Blob Properties. Raises CopyFailed (404: the export is gone, not transient)."""
        try:
            props = source.get_blob_properties()
        except AzureError as err:
            raise translate(err, blob=source.blob_name, side="source-read", action="reading") from err
        return SourceVersion.from_properties(props)

    def copy(
        self,
        source: BlobClient,
        source_version: SourceVersion,
        dest: BlobClient,
        *,
        metadata: dict[str, str],
        overwrite: bool = False,
        replace_etag: str | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> CopyResult:
        """Copy `source_version` of `source` to `dest` and commit it in one request.

        A copy in blocks resumes: block ids are derived from the source version, the destination path and the
        block size, so the blocks an earlier attempt staged for this very version (a process killed mid-copy, a
        function past its timeout) are found with one Get Block List and not sent again. `on_progress` is called
        on the calling thread after each block (a long copy renews what would expire meanwhile: the claim).

        overwrite=False makes both the Put Blob and the Put Block List create-only (If-None-Match: *);
        `replace_etag` replaces the destination only if it is still that version (If-Match), so a write that
        happened since it was read is never overwritten (DestinationExistsError, status 412).
        Raises SourceChangedError (the source's etag moved), DestinationExistsError (create-only refused),
        VerificationError (size or MD5 mismatch with the source's declaration), ServerCopyRefusedError
        (mode "server" only) or CopyFailed (any other storage error; `transient` says if a retry may help).
        """
        started = self._clock()
        size = source_version.size
        blocks = -(-size // self._options.block_size)
        if blocks > MAX_BLOCKS:
            raise CopyFailed(
                f"{source_version.name!r} needs {blocks} blocks; a block blob holds at most {MAX_BLOCKS}",
                hint="raise block_size",
                transient=False,
                blob=source_version.name,
                side="destination",
            )
        mode = self._options.mode
        condition = _WriteCondition(overwrite or replace_etag is not None, replace_etag)
        one_put = self.single_put(size)
        md5: bytes | None
        if one_put:
            md5, etag, blocks, used = self._single_put(source, source_version, dest, metadata, condition)
        elif self._server_enabled():
            try:
                md5, etag, blocks = self._server_copy(source, source_version, dest, metadata, condition,
                                                      on_progress)
                used = "server"
            except ServerRefusal as refusal:
                if mode == "server":
                    raise refusal.error from refusal.__cause__
                self._disable_server(refusal.reason)
                md5, etag, blocks = self._stream_copy(source, source_version, dest, metadata, condition,
                                                      on_progress)
                used = "stream"
        else:
            md5, etag, blocks = self._stream_copy(source, source_version, dest, metadata, condition, on_progress)
            used = "stream"
        result = CopyResult(size, md5, etag, used, blocks, self._clock() - started, single_put=one_put)
        log.info(
            "copied %s: %d bytes, mode %s, %d block(s), %.3f s",
            source_version.name, size, used, blocks, result.seconds,
        )
        return result

    # -- mode choice

    def _server_enabled(self) -> bool:
        if self._source_sas is None or self._options.mode == "stream":
            return False
        with self._lock:
            return self._options.mode == "server" or self.server_disabled_reason is None

    def _disable_server(self, reason: str) -> None:
        with self._lock:
            if self.server_disabled_reason is not None:
                return
            self.server_disabled_reason = reason
        log.warning("server-side copy refused (%s): streaming this and every later copy", reason)

    # -- shared pieces

    def _content_settings(self, version: SourceVersion, md5: bytes | None) -> ContentSettings:
        return ContentSettings(
            content_type=version.content_type,
            content_disposition=version.content_disposition,
            content_md5=bytearray(md5) if md5 else None,
        )

    def _block_ids(self, version: SourceVersion, dest: BlobClient, count: int) -> list[str]:
        # Fixed width: every block of a blob must have an id of the same length (Put Block), 18 characters as
        # always. The prefix is this version's own (source etag, destination, block size): a later attempt at the
        # same version finds the blocks an earlier one staged, and an attempt at another version (or with another
        # block size) can never commit them. The SDK base64-encodes the id on the wire.
        seed = f"{version.name}\n{version.etag}\n{dest.url.split('?')[0]}\n{self._options.block_size}"
        prefix = hashlib.sha256(seed.encode()).hexdigest()[:12]
        return [f"{prefix}{i:06d}" for i in range(count)]

    @staticmethod
    def _staged(dest: BlobClient) -> dict[str, int]:
        """The destination's uncommitted blocks (id -> size), from one Get Block List. Empty when there are none
        or they cannot be listed: then every block is sent, as on a first attempt."""
        try:
            _committed, uncommitted = dest.get_block_list("uncommitted")
        except AzureError:
            return {}
        return {block.id: block.size for block in uncommitted}

    def _read_range(self, source: BlobClient, version: SourceVersion, offset: int, length: int) -> bytes:
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

    def _check(self, version: SourceVersion, total: int, md5: bytes) -> None:
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

    def _commit(
        self,
        dest: BlobClient,
        version: SourceVersion,
        ids: list[str],
        md5: bytes | None,
        metadata: dict[str, str],
        condition: _WriteCondition,
    ) -> str:
        try:
            # One Put Block List: readers never see a partial file (docs/protocol.md section 6).
            response = dest.commit_block_list(
                ids,  # type: ignore[arg-type]  # the SDK takes block ids as strings as well as BlobBlocks
                content_settings=self._content_settings(version, md5),
                metadata=metadata,
                **condition.commit_kwargs(),
            )
        except AzureError as err:
            error = translate(err, blob=version.name, side="destination", action="committing")
            if isinstance(error, DestinationExistsError):
                self._compare_existing(dest, error, version.size, md5)
            raise error from err
        return str(response["etag"])

    @staticmethod
    def _compare_existing(
        dest: BlobClient, error: DestinationExistsError, size: int, md5: bytes | None
    ) -> None:
        # One HEAD, only after a refusal, so the caller can treat "already there, same bytes" as success.
        if md5 is None:
            return
        try:
            props = dest.get_blob_properties()
        except AzureError:
            return
        existing = props.content_settings.content_md5
        error.same_content = props.size == size and existing is not None and bytes(existing) == md5

    # -- single Put Blob

    def _single_put(
        self,
        source: BlobClient,
        version: SourceVersion,
        dest: BlobClient,
        metadata: dict[str, str],
        condition: _WriteCondition,
    ) -> tuple[bytes, str, int, str]:
        # An empty blob is never downloaded: its ranged GET answers 416 InvalidRange.
        if version.size:
            data = self._read_range(source, version, 0, version.size)
        else:
            # Nothing to read, but the copy must still be of this version: check its etag (412 if rewritten).
            try:
                source.get_blob_properties(etag=version.etag, match_condition=MatchConditions.IfNotModified)
            except AzureError as err:
                raise translate(err, blob=version.name, side="source", action="reading") from err
            data = b""
        md5 = hashlib.md5(data).digest()  # noqa: S324 - Content-MD5 is what storage speaks, not security
        self._check(version, len(data), md5)
        try:
            response = dest.upload_blob(
                data,
                length=len(data),
                **condition.put_blob_kwargs(),
                content_settings=self._content_settings(version, md5),
                metadata=metadata,
                validate_content=True,
                max_concurrency=1,
            )
        except AzureError as err:
            error = translate(err, blob=version.name, side="destination", action="writing")
            if isinstance(error, DestinationExistsError):
                self._compare_existing(dest, error, version.size, md5)
            raise error from err
        return md5, str(response["etag"]), 1, "stream"

    # -- stream mode

    def _stream_copy(
        self,
        source: BlobClient,
        version: SourceVersion,
        dest: BlobClient,
        metadata: dict[str, str],
        condition: _WriteCondition,
        on_progress: Callable[[], None] | None = None,
    ) -> tuple[bytes, str, int]:
        size, block = version.size, self._options.block_size
        ranges = [(off, min(block, size - off)) for off in range(0, size, block)]
        ids = self._block_ids(version, dest, len(ranges))
        staged = self._staged(dest)
        resumed = sum(1 for i, (_, length) in enumerate(ranges) if staged.get(ids[i]) == length)
        if resumed:
            log.info("resuming %s: %d of %d block(s) already staged", version.name, resumed, len(ranges))

        def move(index: int) -> bytes:
            offset, length = ranges[index]
            # Every block is read (the whole file's MD5 covers every byte); one an earlier attempt staged for this
            # version is not sent again.
            data = self._read_range(source, version, offset, length)
            if staged.get(ids[index]) == length:
                return data
            try:
                dest.stage_block(ids[index], data, length=length, validate_content=True)
            except AzureError as err:
                raise translate(err, blob=version.name, side="destination", action="staging") from err
            return data

        md5 = hashlib.md5()  # noqa: S324 - Content-MD5, not security
        total = 0
        # A bounded window of blocks in flight: `parallelism` workers plus one finished block waiting for
        # the hash, which needs them in order. Memory stays ~block_size x (parallelism + 1) plus the SDK's
        # transient copies, whatever the file size (bench/copy_memory.py measures it).
        window = self._options.parallelism + 1
        pool = ThreadPoolExecutor(self._options.parallelism, thread_name_prefix="copier",
                                  initializer=self._pool_initializer and self._pool_initializer())
        pending: deque[Future[bytes]] = deque()
        upcoming = iter(range(len(ranges)))
        try:
            for index in upcoming:
                pending.append(pool.submit(move, index))
                if len(pending) >= window:
                    break
            while pending:
                data = pending.popleft().result()
                md5.update(data)  # hashlib releases the GIL for large buffers: workers keep moving
                total += len(data)
                del data
                if on_progress is not None:
                    on_progress()
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append(pool.submit(move, nxt))
        finally:
            # On failure: drop blocks not yet started and wait for running ones. Staged blocks stay (uncommitted
            # blocks are kept for a week): the next attempt at this version resumes from them.
            pool.shutdown(wait=True, cancel_futures=True)
        digest = md5.digest()
        self._check(version, total, digest)
        return digest, self._commit(dest, version, ids, digest, metadata, condition), len(ids)

    # -- server mode

    def _server_copy(
        self,
        source: BlobClient,
        version: SourceVersion,
        dest: BlobClient,
        metadata: dict[str, str],
        condition: _WriteCondition,
        on_progress: Callable[[], None] | None = None,
    ) -> tuple[bytes | None, str, int]:
        assert self._source_sas is not None
        signer = _SourceUrl(self._source_sas, source, version, self._clock, self._sas_refresh)
        signer.url()  # sign before any block: a refused user delegation key means streaming instead
        size, block = version.size, self._options.block_size
        ranges = [(off, min(block, size - off)) for off in range(0, size, block)]
        ids = self._block_ids(version, dest, len(ranges))
        staged = self._staged(dest)

        def pull(index: int) -> None:
            offset, length = ranges[index]
            if staged.get(ids[index]) == length:
                return  # an earlier attempt at this version staged it
            try:
                # x-ms-source-if-match pins every block to the version read before the copy, so the staged
                # blocks all come from one version and the commit can never mix two. The SDK's wrapper has
                # no keyword for it but passes `headers` through to the request.
                dest.stage_block_from_url(
                    ids[index], signer.url(), offset, length, headers={"x-ms-source-if-match": version.etag}
                )
            except AzureError as err:
                error = translate(err, blob=version.name, side="destination", action="pulling")
                if is_server_refusal(error):
                    label = f"{error.status} {error.error_code or ''}".strip()
                    reason = f"destination cannot pull from the source URL: {label}"
                    raise ServerRefusal(reason, error) from err
                raise error from err

        with ThreadPoolExecutor(self._options.parallelism, thread_name_prefix="copier-url",
                                initializer=self._pool_initializer and self._pool_initializer()) as pool:
            futures = [pool.submit(pull, i) for i in range(len(ranges))]
            try:
                for future in futures:
                    future.result()
                    if on_progress is not None:
                        on_progress()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        md5 = version.content_md5
        return md5, self._commit(dest, version, ids, md5, metadata, condition), len(ids)


class _SourceUrl:
    """The source's SAS URL for one server copy, signed anew once it is `refresh` seconds old (thread-safe)."""

    def __init__(self, sign: Callable[[BlobClient], str], source: BlobClient, version: SourceVersion,
                 clock: Callable[[], float], refresh: float) -> None:
        self._sign, self._source, self._version = sign, source, version
        self._clock, self._refresh = clock, refresh
        self._lock = threading.Lock()
        self._url: str | None = None
        self._signed_at = 0.0

    def url(self) -> str:
        with self._lock:
            now = self._clock()
            if self._url is None or now - self._signed_at >= self._refresh:
                try:
                    self._url = self._sign(self._source)
                except AzureError as err:
                    error = translate(err, blob=self._version.name, side="source", action="signing a SAS for")
                    if error.status == 403:
                        # The partner's identity may not get a user delegation key: stream instead.
                        raise ServerRefusal(f"source SAS refused: {error.status} {error.error_code}",
                                             error) from err
                    raise error from err
                self._signed_at = now
            return self._url
