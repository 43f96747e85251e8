"""Writing an export's bytes through this process (shared/copier.py picks the way): one Put Blob for a small file,
or staged blocks read and sent in a bounded window, resumed from the blocks an earlier attempt staged, then one
atomic commit. The MD5 of the bytes sent is computed on the way and checked against the source before the commit.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.storage.blob import BlobClient

from .copy_errors import translate
from .copy_steps import (
    SourceVersion,
    WriteCondition,
    block_ids,
    block_ranges,
    check,
    commit,
    compare_existing,
    content_settings,
    read_range,
    staged,
)
from .errors import DestinationExistsError

log = logging.getLogger(__name__)


def put_whole(source: BlobClient, version: SourceVersion, dest: BlobClient, metadata: dict[str, str],
               condition: WriteCondition) -> tuple[bytes, str]:
    """The whole file read, checked, and written in one Put Blob: (its MD5, the destination's etag)."""
    # An empty blob is never downloaded: its ranged GET answers 416 InvalidRange.
    if version.size:
        data = read_range(source, version, 0, version.size)
    else:
        # Nothing to read, but the copy must still be of this version: check its etag (412 if rewritten).
        try:
            source.get_blob_properties(etag=version.etag, match_condition=MatchConditions.IfNotModified)
        except AzureError as err:
            raise translate(err, blob=version.name, side="source", action="reading") from err
        data = b""
    md5 = hashlib.md5(data).digest()  # noqa: S324 - Content-MD5 is what storage speaks, not security
    check(version, len(data), md5)
    try:
        response = dest.upload_blob(
            data,
            length=len(data),
            **condition.put_blob_kwargs(),
            content_settings=content_settings(version, md5),
            metadata=metadata,
            validate_content=True,
            max_concurrency=1,
        )
    except AzureError as err:
        error = translate(err, blob=version.name, side="destination", action="writing")
        if isinstance(error, DestinationExistsError):
            compare_existing(dest, error, version.size, md5)
        raise error from err
    return md5, str(response["etag"])


def stream_blocks(source: BlobClient, version: SourceVersion, dest: BlobClient, metadata: dict[str, str],
                  condition: WriteCondition, *, block_size: int, parallelism: int,
                  initializer: Callable[[], None] | None = None,
                  on_progress: Callable[[], None] | None = None) -> tuple[bytes, str, int]:
    """Every block read and (unless an earlier attempt staged it) staged, `parallelism` at a time, the whole
    file's MD5 checked, then one commit: (the MD5, the destination's etag, the number of blocks). `on_progress`
    is called on the calling thread after each block; `initializer` runs on each pool thread."""
    ranges = block_ranges(version.size, block_size)
    ids = block_ids(version, dest, len(ranges), block_size)
    already = staged(dest)
    resumed = sum(1 for i, (_, length) in enumerate(ranges) if already.get(ids[i]) == length)
    if resumed:
        log.info("resuming %s: %d of %d block(s) already staged", version.name, resumed, len(ranges))

    def move(index: int) -> bytes:
        offset, length = ranges[index]
        # Every block is read (the whole file's MD5 covers every byte); one an earlier attempt staged for this
        # version is not sent again.
        data = read_range(source, version, offset, length)
        if already.get(ids[index]) == length:
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
    window = parallelism + 1
    pool = ThreadPoolExecutor(parallelism, thread_name_prefix="copier", initializer=initializer)
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
    check(version, total, digest)
    return digest, commit(dest, version, ids, digest, metadata, condition), len(ids)
