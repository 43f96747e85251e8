"""Listing a container, page by page, with the relay's own parse of the List Blobs answer, and a bound on pages.

A sync lists every export and the ledger's records, and checks each batch of small deliveries against a listing of
Bane NOR's directory: the SDK's generic deserializer would cost about a tenth of a small-file sync, so the answer is
parsed here with ElementTree (the SDK's own listing is the fallback where its raw-request method is missing). A
listing whose continuation marker keeps coming with empty pages ends after MAX_EMPTY_PAGES (ListingError).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, cast
from xml.etree import ElementTree

from .errors import ListingError


@dataclass(frozen=True, slots=True)
class ListedBlob:
    """One blob of a listing: what the delivery evidence compares (size, Content-MD5, metadata) and what a sync
    reads of an export's version (etag, last modified, content type and disposition)."""

    name: str
    size: int
    content_md5: bytes | None
    metadata: Mapping[str, str]
    etag: str = ""
    last_modified: dt.datetime | None = None
    content_type: str | None = None
    content_disposition: str | None = None


def list_blobs(container: Any, prefix: str | None = None, *, metadata: bool = False,
               page_size: int = 5000) -> Iterator[ListedBlob]:
    """Every blob under `prefix`, in name order, lazily (`list_blob_pages`, flattened). Each page is let go entry by
    entry as it is read, so the next one is asked for and parsed with nothing of it held: a 5,000-entry page is about
    2.3 MiB, and a sync over 10,000 exports held two at once, 4 MiB above one over 1,500 (issue 30)."""
    for page in list_blob_pages(container, prefix or "", page_size, metadata=metadata):
        page.reverse()
        while page:
            yield page.pop()


def list_blob_pages(container: Any, prefix: str, page_size: int, *,
                    metadata: bool = True) -> Iterator[list[ListedBlob]]:
    """List Blobs (with metadata, unless told otherwise) under `prefix`, page by page, in name order, through
    `container`'s own pipeline (its credential, retry policy, timeouts and TLS options; the client's x-ms-version).
    Raises azure-core's HttpResponseError (with the storage `error_code`) for a refusal.

    The SDK's `list_blobs` turns each entry into its models with a generic deserializer that costs about 0.2 ms of
    CPU per blob: a sync lists every export, and checks every small delivery against a listing of Bane NOR's
    directory, so that cost alone was about a tenth of a sync of 2,000 small files and most of a timer run over a
    large container (bench/RESULTS.md). The same XML parsed with ElementTree costs a tenth of that. The request goes
    through the generated client's documented raw-request method (`_send_request`); where a future SDK lacks it,
    the SDK's own listing is used.
    """
    send = getattr(getattr(container, "_client", None), "_send_request", None)
    if send is None:
        yield from _sdk_pages(container, prefix, page_size, metadata)
        return
    from azure.core.rest import HttpRequest

    marker = ""
    empty = 0
    while True:
        query = {"restype": "container", "comp": "list", "maxresults": str(page_size),
                 **({"include": "metadata"} if metadata else {}), **({"prefix": prefix} if prefix else {}),
                 **({"marker": marker} if marker else {})}
        page, marker = _read_page(send, HttpRequest("GET", container.url, params=query,
                                                    headers={"x-ms-version": container.api_version}))
        empty = _count_empty(page, marker, empty, container)
        yield page
        if not marker:
            return


# A page's answer is read as it arrives (`stream=True`), so the client's retry policy covers the request up to the
# answer's headers only; an answer cut off in its body is asked for again here, at most this many times more.
PAGE_READ_RETRIES = 3


def _read_page(send: Any, request: Any) -> tuple[list[ListedBlob], str]:
    """(entries, NextMarker) of one List Blobs request, its answer parsed while it arrives: a 5,000-entry answer
    (about 5 MB) is never held whole, nor copied, so a sync's peak memory does not depend on how many exports it
    lists (issue 26). Raises the storage error for a refusal, and the transport's error once the answer was cut off
    PAGE_READ_RETRIES + 1 times."""
    from azure.core.exceptions import AzureError

    for attempt in range(PAGE_READ_RETRIES + 1):
        response = send(request, stream=True)
        try:
            if response.status_code != 200:
                response.read()  # the error's text, as the SDK's own listing gives it
                raise _listing_error(response)
            return _parse_page(response.iter_bytes())
        except AzureError as exc:
            if getattr(exc, "response", None) is response or attempt == PAGE_READ_RETRIES:
                raise  # a refusal (status, code) is not a cut-off answer
        finally:
            response.close()
    raise AssertionError("unreachable")


def _parse_page(chunks: Iterable[bytes]) -> tuple[list[ListedBlob], str]:
    """(entries, NextMarker) of one List Blobs answer, from its body's chunks as they arrive. The parser
    azure-storage-blob itself uses on these answers (expat resolves no external entity and, 2.4.1 and later, bundled
    with Python 3.11, bounds entity expansion); each `<Blob>` is turned into a ListedBlob and cleared as soon as it
    ends: the whole tree of a 5,000-entry page took 16.7 MiB at once (bench/RESULTS.md, issue 30)."""
    parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(events=("end",))
    page: list[ListedBlob] = []
    marker = ""
    for chunk in chunks:
        parser.feed(chunk)
        for _, found in parser.read_events():  # type: ignore[misc]  # ("end", Element): the only event asked for
            element = cast(ElementTree.Element, found)
            if element.tag == "Blob":
                page.append(_listed(element))
                element.clear()
            elif element.tag == "NextMarker":
                marker = element.text or ""
    parser.close()
    return page, marker


# Azure may answer a page with no entries and a NextMarker (a listing that ran out of time on the server side); a
# server that keeps doing so would keep a listing going for ever: stop after this many empty pages in a row.
MAX_EMPTY_PAGES = 50


def _count_empty(page: list[Any], marker: str, empty: int, container: Any) -> int:
    """Empty pages in a row so far; raises ListingError past MAX_EMPTY_PAGES."""
    if page or not marker:
        return 0
    if empty + 1 >= MAX_EMPTY_PAGES:
        raise ListingError(f"listing container {getattr(container, 'container_name', '?')!r} answered "
                           f"{MAX_EMPTY_PAGES} empty pages in a row, each with a NextMarker; stopped",
                           hint="a storage or gateway fault: the next run lists again; if it repeats, report it to "
                                "the owner of that storage (Bane NOR for its gateway)")
    return empty + 1


def _listing_error(response: Any) -> Exception:
    """The error the SDK's own listing raises for this answer (its type by storage error code, then by status; the
    code on `error_code`), so callers catch the same ones."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    code = response.headers.get("x-ms-error-code")
    if code in ("ContainerNotFound", "ResourceNotFound") or response.status_code == 404:
        kind: type[HttpResponseError] = ResourceNotFoundError
    elif code in ("AuthenticationFailed", "InvalidAuthenticationInfo") or response.status_code == 401:
        kind = ClientAuthenticationError
    else:
        kind = HttpResponseError
    error = kind(response=response)
    error.error_code = code  # type: ignore[attr-defined]  # the SDK's own errors carry it the same way
    return error


# What most entries of a page have alike is held once, not once an entry (a 5,000-entry page is 2.3 MiB): no
# metadata (read-only, shared), and the same content type.
NO_METADATA: Mapping[str, str] = MappingProxyType({})


def _shared(text: str | None) -> str | None:
    return sys.intern(text) if text else None


def _listed(blob: Any) -> ListedBlob:
    """One `<Blob>` element: each child read in one pass (a sync parses every export's entry)."""
    name, props, metadata = "", {}, None
    for child in blob:
        if child.tag == "Name":
            name = child.text or ""
        elif child.tag == "Properties":
            props = {p.tag: p.text for p in child}
        elif child.tag == "Metadata":
            metadata = {m.tag: m.text or "" for m in child}
    md5, modified = props.get("Content-MD5"), props.get("Last-Modified")
    return ListedBlob(
        name=name,
        size=int(props.get("Content-Length") or 0),
        content_md5=base64.b64decode(md5) if md5 else None,
        metadata=metadata if metadata else NO_METADATA,
        etag=props.get("Etag") or "",
        last_modified=_http_date(modified) if modified else None,
        content_type=_shared(props.get("Content-Type")),
        content_disposition=_shared(props.get("Content-Disposition")),
    )


@functools.lru_cache(maxsize=1024)
def _http_date(text: str) -> dt.datetime:
    """An RFC 1123 date (one second's resolution: exports written together share it, so each is parsed once)."""
    return parsedate_to_datetime(text)


def _sdk_pages(container: Any, prefix: str, page_size: int, metadata: bool) -> Iterator[list[ListedBlob]]:
    pages = container.list_blobs(name_starts_with=prefix or None, include=["metadata"] if metadata else None,
                                 results_per_page=page_size)
    empty = 0
    by_page = pages.by_page()
    for page in by_page:
        entries = list(page)
        empty = _count_empty(entries, getattr(by_page, "continuation_token", None) or "", empty, container)
        yield [ListedBlob(b.name, b.size, bytes(b.content_settings.content_md5) if b.content_settings.content_md5
                          else None, dict(b.metadata or {}), b.etag, b.last_modified, b.content_settings.content_type,
                          b.content_settings.content_disposition) for b in entries]
