"""Server-side copy (shared/copier.py picks the way): Bane NOR's storage pulls each block from a short-lived,
read-only SAS URL of the source (Put Block From URL), every block pinned to the version read before the copy, then
one atomic commit. The bytes never pass through this process. When the destination cannot pull from the source
URL, `ServerRefusal` says why (mode "auto" then streams instead).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobClient

from .copy_errors import ServerRefusal, is_server_refusal, translate
from .copy_steps import SourceVersion, WriteCondition, block_ids, block_ranges, commit, staged


def server_blocks(source: BlobClient, version: SourceVersion, dest: BlobClient, metadata: dict[str, str],
                  condition: WriteCondition, *, sign: Callable[[BlobClient], str], clock: Callable[[], float],
                  sas_refresh_seconds: float, block_size: int, parallelism: int,
                  initializer: Callable[[], None] | None = None,
                  on_progress: Callable[[], None] | None = None) -> tuple[bytes | None, str, int]:
    """Every block pulled by the destination (`parallelism` at a time), then one commit: (the source's own
    Content-MD5 or None, the destination's etag, the number of blocks). `sign(source)` signs a SAS URL, anew
    once the last one is `sas_refresh_seconds` old. Raises ServerRefusal when the destination cannot pull."""
    signer = SourceUrl(sign, source, version, clock, sas_refresh_seconds)
    signer.url()  # sign before any block: a refused user delegation key means streaming instead
    ranges = block_ranges(version.size, block_size)
    ids = block_ids(version, dest, len(ranges), block_size)
    already = staged(dest)

    def pull(index: int) -> None:
        offset, length = ranges[index]
        if already.get(ids[index]) == length:
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

    with ThreadPoolExecutor(parallelism, thread_name_prefix="copier-url", initializer=initializer) as pool:
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
    return md5, commit(dest, version, ids, md5, metadata, condition), len(ids)


class SourceUrl:
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
