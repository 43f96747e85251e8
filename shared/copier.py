"""The copy engine: moves one export's bytes from the partner's blob into Bane NOR's storage.

`Copier` chooses one of three ways to write and runs it: one Put Blob or staged blocks streamed through this process
(shared/stream_copy.py), or staged blocks the destination pulls from a SAS URL (shared/server_copy.py); the steps
they share, the source-etag pin, create-only conditions and the one atomic commit are shared/copy_steps.py's. Every
storage error it meets becomes a `DeliveryError` that carries no secret (shared/copy_errors.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobClient

from .copy_errors import ServerRefusal, translate
from .copy_steps import SourceVersion, WriteCondition
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
from .server_copy import server_blocks
from .stream_copy import put_whole, stream_blocks

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


# --- the copier ---------------------------------------------------------------------------------------


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
        condition = WriteCondition(overwrite or replace_etag is not None, replace_etag)
        one_put = self.single_put(size)
        md5: bytes | None
        if one_put:
            md5, etag = put_whole(source, source_version, dest, metadata, condition)
            blocks, used = 1, "stream"
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

    def _stream_copy(self, source: BlobClient, version: SourceVersion, dest: BlobClient, metadata: dict[str, str],
                     condition: WriteCondition, on_progress: Callable[[], None] | None) -> tuple[bytes, str, int]:
        options = self._options
        return stream_blocks(source, version, dest, metadata, condition, block_size=options.block_size,
                             parallelism=options.parallelism, initializer=self._initializer(),
                             on_progress=on_progress)

    def _server_copy(self, source: BlobClient, version: SourceVersion, dest: BlobClient, metadata: dict[str, str],
                     condition: WriteCondition,
                     on_progress: Callable[[], None] | None) -> tuple[bytes | None, str, int]:
        assert self._source_sas is not None
        options = self._options
        return server_blocks(source, version, dest, metadata, condition, sign=self._source_sas, clock=self._clock,
                             sas_refresh_seconds=self._sas_refresh, block_size=options.block_size,
                             parallelism=options.parallelism, initializer=self._initializer(),
                             on_progress=on_progress)

    def _initializer(self) -> Callable[[], None] | None:
        """The block pool's thread initializer, made on the delivering thread (shared/invocation.py)."""
        return self._pool_initializer() if self._pool_initializer is not None else None
