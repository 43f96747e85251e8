"""The ledger's blob operations: small records written only under a condition, read, listed and deleted.

Every write is conditional: create-only (If-None-Match: *) or replace-if-unchanged (If-Match), so concurrent
writers never overwrite each other; each answers with the new etag, or None when the condition did not hold.
The ledger (shared/ledger.py) decides what the records mean; this module only moves them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContainerClient, ContentSettings

from .records import lower_keys

JSON = ContentSettings(content_type="application/json")
JSON_LINES = ContentSettings(content_type="application/x-ndjson")


class RecordBlobs:
    """The records in `container` (the partner's LEDGER_CONTAINER)."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    def blob(self, name: str) -> BlobClient:
        return self.container.get_blob_client(name)

    def create(self, blob: BlobClient, body: str, metadata: dict[str, str],
               content_settings: ContentSettings = JSON) -> str | None:
        """Create-only write (If-None-Match: *); the new blob's etag, or None when it already exists. Any other
        409 (a full store, a lease) is raised: taken for "exists", it would pass for another instance's claim."""
        try:
            response = blob.upload_blob(body.encode(), overwrite=False, metadata=metadata,
                                        content_settings=content_settings)
        except ResourceExistsError as exc:
            if getattr(exc, "error_code", None) not in ("BlobAlreadyExists", None):
                raise
            return None
        return str(response.get("etag") or "*")

    def replace(self, blob: BlobClient, body: str, metadata: dict[str, str], etag: str) -> str | None:
        """Overwrite only if unchanged since `etag` was read (If-Match); the new etag, or None if someone got
        there first."""
        try:
            response = blob.upload_blob(
                body.encode(),
                overwrite=True,
                metadata=metadata,
                content_settings=JSON,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return str(response.get("etag") or "*")

    def read(self, blob: BlobClient) -> bytes | None:
        """The record's body, or None when there is none."""
        try:
            return blob.download_blob().readall()  # a record is a few hundred bytes
        except ResourceNotFoundError:
            return None

    def properties(self, blob: BlobClient) -> tuple[dict[str, str], str] | None:
        """(metadata with lower-case keys, etag), or None when there is no record."""
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return lower_keys(props.metadata), props.etag

    def list(self, prefix: str, metadata: bool = True) -> Iterator[Any]:
        """The records under `prefix`, with their metadata (`listing.list_blobs`: the relay's own parse of the
        listing, a tenth of the SDK's CPU; a timer run lists every receipt)."""
        from .listing import list_blobs

        return list_blobs(self.container, prefix, metadata=metadata)

    def delete(self, blob: BlobClient, etag: str | None = None) -> bool:
        """Delete the record, only if unchanged since `etag` when one is given; False when it was gone or changed."""
        try:
            if etag is None:
                blob.delete_blob()
            else:
                blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True
