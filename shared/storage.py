"""The storage clients of both sides, and what Bane NOR's side answers when it refuses.

Builds the partner's BlobServiceClient (connection string, or its own identity through DefaultAzureCredential) and
Bane NOR's (the payload manager gateway: audience, API version, timeouts, retries), signs the source SAS for
server-side copy, lists Bane NOR's directory for the delivery evidence, and holds the one table of hints for errors
from Bane NOR's gateway and the storage behind it.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from xml.etree import ElementTree

from .config import DEFAULT_TRANSFER_SIZE, BanenorSettings, ExportSettings, HttpSettings
from .errors import GatewayError, RelayError, first_line

# -- connection options -----------------------------------------------------------------------------------


def storage_connection_options(http: HttpSettings) -> dict[str, Any]:
    """Options both storage clients (the partner's and Bane NOR's) share: timeouts, retries, the CA bundle, and
    whether requests reads the environment on each request.

    By default requests looks up proxy variables, CURL_CA_BUNDLE and ~/.netrc for every request, about a tenth
    of the CPU a small request costs; the relay reads the environment once (`HttpSettings.from_environment`) and
    keeps that per-request lookup only when one of those variables is set. REQUESTS_CA_BUNDLE is passed
    explicitly either way; .netrc is never wanted (every request carries a token or a key).
    """
    options: dict[str, Any] = {
        "connection_timeout": 20,
        "read_timeout": 120,
        "retry_policy": storage_retry_policy(),
        "use_env_settings": http.from_environment,
    }
    if http.ca_bundle:
        options["connection_verify"] = http.ca_bundle
    return options


def storage_retry_policy() -> Any:
    """Retries for storage requests: about 3, 5, 9 and 17 s (the SDK default starts at 15 s per retry).

    A delivery that still fails is recorded in the ledger and retried by the timer sync with its own backoff.
    """
    from azure.storage.blob import ExponentialRetry

    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=4, random_jitter_range=1)


# The command line's bound on a dead link to the partner's storage, for its first request only (the probe before the
# work: `cli.check_partner`, doctor): it is tried 3 times, 1 s apart; a connection may take 2.5 s to open and an
# answer 3 s to start. A refused connection, a failed DNS lookup or an untrusted certificate is reported in about
# 3 s, a host that never answers in about 10 s, one that accepts and then stalls in about 11 s (more on a loaded
# machine). The work after it keeps the functions' bounds, so a slow listing is not a broken link.
# docs/troubleshooting.md says so.
INTERACTIVE_CONNECT_SECONDS = 2.5
INTERACTIVE_READ_SECONDS = 3
INTERACTIVE_RETRIES = 2


def interactive_storage_options() -> dict[str, Any]:
    """Client options for the partner's storage when a person runs the command line (see above)."""
    from azure.storage.blob import LinearRetry

    return {
        "connection_timeout": INTERACTIVE_CONNECT_SECONDS,
        "read_timeout": INTERACTIVE_READ_SECONDS,
        "retry_policy": LinearRetry(backoff=1, retry_total=INTERACTIVE_RETRIES, random_jitter_range=0),
    }


# -- the partner's side -----------------------------------------------------------------------------------


def partner_credential(ca_bundle: str | None = None) -> Any:
    """The partner's own identity (managed identity in Azure; `az login` or the local stack's MSI locally)."""
    from azure.identity import DefaultAzureCredential

    kwargs: dict[str, Any] = {"exclude_interactive_browser_credential": True}
    if ca_bundle:
        kwargs["connection_verify"] = ca_bundle
    return DefaultAzureCredential(**kwargs)


def partner_service_client(exports: ExportSettings, http: HttpSettings, credential: Any, *,
                           interactive: bool = False) -> Any:
    """The BlobServiceClient for the partner's export account: from EXPORT_STORAGE's connection string, or its
    service URI with the partner's identity. `interactive`: the command line's shorter limits."""
    from azure.storage.blob import BlobServiceClient

    kwargs = storage_connection_options(http)
    if interactive:
        kwargs.update(interactive_storage_options())
    if exports.connection_string:
        return BlobServiceClient.from_connection_string(exports.connection_string, **kwargs)
    return BlobServiceClient(exports.service_uri, credential=credential, **kwargs)


class SourceSas:
    """Signs read-only SAS URLs for source exports, valid 15 minutes, for server-side copy.

    With a connection string (Azurite) an account-key SAS; with the managed identity a user delegation SAS (needs
    Storage Blob Delegator on the partner's account), its key fetched once and renewed 30 minutes before expiry.
    """

    def __init__(self, service: Callable[[], Any], clock: Callable[[], float] = time.time) -> None:
        self._service = service  # called on use: the runtime builds the partner's client lazily
        self._clock = clock
        self._lock = threading.Lock()
        self._delegation_key: Any = None
        self._delegation_expiry = 0.0

    def __call__(self, blob: Any) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        expiry = now + dt.timedelta(minutes=15)
        service = self._service()
        kwargs: dict[str, Any] = {}
        key = getattr(service.credential, "account_key", None)
        if key:
            kwargs["account_key"] = key
        else:
            kwargs["user_delegation_key"] = self._user_delegation_key(service, now)
        sas = generate_blob_sas(
            service.account_name, blob.container_name, blob.blob_name, permission=BlobSasPermissions(read=True),
            expiry=expiry, start=now - dt.timedelta(minutes=5), **kwargs,
        )
        return f"{blob.url}?{sas}"

    def _user_delegation_key(self, service: Any, now: dt.datetime) -> Any:
        with self._lock:
            if self._delegation_key is None or self._clock() > self._delegation_expiry - 1800:
                expiry = now + dt.timedelta(hours=2)
                self._delegation_key = service.get_user_delegation_key(now - dt.timedelta(minutes=5), expiry)
                self._delegation_expiry = expiry.timestamp()
            return self._delegation_key


# -- Bane NOR's side, through the payload manager gateway -------------------------------------------------


def banenor_service_client(banenor: BanenorSettings, http: HttpSettings, credential: Any, *,
                           single_put_limit: int = DEFAULT_TRANSFER_SIZE, block_size: int = DEFAULT_TRANSFER_SIZE,
                           **overrides: Any) -> Any:
    """The BlobServiceClient for Bane NOR: gateway base URL, audience, pinned API version, timeouts, retries.

    The SDK keeps the base path (`<base>/<container>/<path>`); `audience` makes it ask its credential for
    `<storage audience>/.default`, which the gateway routes on (docs/protocol.md sections 2 and 6).
    `single_put_limit` and `block_size` are SINGLE_PUT_LIMIT and BLOCK_SIZE (the relay's section).
    """
    from azure.storage.blob import BlobServiceClient

    kwargs: dict[str, Any] = {
        **storage_connection_options(http),
        "audience": banenor.storage_audience,
        "api_version": banenor.api_version,
        "max_single_put_size": max(single_put_limit, 1),  # one Put Blob up to SINGLE_PUT_LIMIT
        "max_block_size": block_size,
    }
    kwargs.update(overrides)
    return BlobServiceClient(account_url=banenor.storage_url, credential=credential, **kwargs)


# -- listing Bane NOR's directory, for the evidence --------------------------------------------------------


@dataclass(frozen=True)
class ListedBlob:
    """One blob of a listing: what the delivery evidence compares (size, Content-MD5, metadata) and what a sync
    reads of an export's version (etag, last modified, content type and disposition)."""

    name: str
    size: int
    content_md5: bytes | None
    metadata: dict[str, str]
    etag: str = ""
    last_modified: dt.datetime | None = None
    content_type: str | None = None
    content_disposition: str | None = None


def list_blobs(container: Any, prefix: str | None = None, *, metadata: bool = False,
               page_size: int = 5000) -> Iterator[ListedBlob]:
    """Every blob under `prefix`, in name order, lazily (`list_blob_pages`, flattened)."""
    for page in list_blob_pages(container, prefix or "", page_size, metadata=metadata):
        yield from page


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
        response = send(HttpRequest("GET", container.url, params=query,
                                    headers={"x-ms-version": container.api_version}))
        if response.status_code != 200:
            raise _listing_error(response)
        page, marker = _parse_page(response.read())
        empty = _count_empty(page, marker, empty, container)
        yield page
        if not marker:
            return


# Bytes of a listing's answer handed to the parser at a time: each entry is parsed and dropped before the next chunk.
_PARSE_CHUNK = 64 * 1024


def _parse_page(body: bytes) -> tuple[list[ListedBlob], str]:
    """(entries, NextMarker) of one List Blobs answer. The parser azure-storage-blob itself uses on these answers
    (expat resolves no external entity and, 2.4.1 and later, bundled with Python 3.11, bounds entity expansion), fed
    in chunks, each `<Blob>` turned into a ListedBlob and cleared as soon as it ends: the whole tree of a 5,000-entry
    page (about 25 elements per blob) took about 35 MiB at once, and made a sync's peak memory depend on how many
    exports it lists (bench/RESULTS.md, issue 30)."""
    parser = ElementTree.XMLPullParser(events=("end",))
    page: list[ListedBlob] = []
    marker = ""
    for offset in range(0, len(body) or 1, _PARSE_CHUNK):
        parser.feed(body[offset:offset + _PARSE_CHUNK])
        for _, element in parser.read_events():
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
        from .errors import ListingError

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
    error.error_code = code
    return error


def _listed(blob: Any) -> ListedBlob:
    props = blob.find("Properties")
    if props is None:
        props = ElementTree.Element("Properties")
    md5 = props.findtext("Content-MD5")
    modified = props.findtext("Last-Modified")
    metadata = blob.find("Metadata")
    return ListedBlob(
        name=blob.findtext("Name") or "",
        size=int(props.findtext("Content-Length") or 0),
        content_md5=base64.b64decode(md5) if md5 else None,
        metadata={m.tag: m.text or "" for m in metadata} if metadata is not None else {},
        etag=props.findtext("Etag") or "",
        last_modified=parsedate_to_datetime(modified) if modified else None,
        content_type=props.findtext("Content-Type") or None,
        content_disposition=props.findtext("Content-Disposition") or None,
    )


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


# -- what Bane NOR's side answers ---------------------------------------------------------------------------

# The one table of hints for refusals from Bane NOR's gateway and the storage behind it, by storage error code
# first, then by HTTP status. The copier (writing exports) and the gateway probes (doctor, the relay's checks)
# both read it.
BANENOR_HINTS: dict[int | str, str] = {
    401: "the gateway refused the storage token: BANENOR_STORAGE_AUDIENCE must be Bane NOR's external account URL "
         "for this environment, and BANENOR_ENVIRONMENT must match it; run `doctor` to check the trust chain",
    "AuthorizationPermissionMismatch": "only Bane NOR can fix this: ask them to grant the identity RBAC "
    "and ACL (-wx on the directory, --x on every parent) for this path",
    403: "the managed identity lacks RBAC or ACL rights on this path: only Bane NOR can grant them; report "
         "the container and directory shown (and check BANENOR_DIRECTORY)",
    "ContainerNotFound": "the container does not exist: check BANENOR_CONTAINER with Bane NOR",
    404: "the container does not exist: check BANENOR_CONTAINER with Bane NOR",
    400: "Bane NOR's gateway or storage refused the request (name, extension or API version): see docs/gateway.md",
    413: "a request was over the gateway's 100 MB limit: lower BLOCK_SIZE / SINGLE_PUT_LIMIT",
    409: "the destination already exists",
}
# What the gateway itself answers without a storage error code (token, request size, policy); any other answer
# without one is not from storage at all (a proxy's or a firewall's page).
GATEWAY_OWN_STATUSES = (400, 401, 413)
NOT_STORAGE_HINT = "the answer was not a storage error: check BANENOR_STORAGE_URL (Bane NOR's gateway)"


def banenor_hint(status: int | None, code: str | None) -> str | None:
    """The hint for a refusal from Bane NOR's side (None: the table has none)."""
    return BANENOR_HINTS.get(code or "") or BANENOR_HINTS.get(status or 0)


# Server-side copy: storage answers CannotVerifyCopySource with the status it met reading the source (403 or 404:
# the source URL is not reachable for Bane NOR's storage; 5xx: the partner's storage was busy, transient).
SERVER_COPY_CODES = ("CannotVerifyCopySource",)


def banenor_link_refusal(status: int, code: str | None, method: str | None = None) -> bool:
    """Whether an answer from Bane NOR's side refuses the link rather than one file: the token (401), the
    identity's RBAC or ACL on the directory (403, a role or ACL still propagating after onboarding), the container
    (404 ContainerNotFound, or a 404 to a write: Bane NOR redeploying). Nothing a file could change; every write
    would meet it."""
    if code in SERVER_COPY_CODES:
        return False
    if status in (401, 403):
        return True
    return status == 404 and (code == "ContainerNotFound" or method not in (None, "GET", "HEAD"))


def banenor_answer(status: int, code: str | None, *, has_body: bool = True) -> tuple[bool, str]:
    """(transient, hint) for an HTTP error answer from Bane NOR's gateway or the storage behind it: the one reading
    of such answers, whichever component met it (the copier's writes, the read-back, `doctor`'s probes).

    What may pass without anyone acting is transient: server trouble, throttling, a lease a reader holds for a
    moment, and an answer that is not a storage error at all (a proxy's or a firewall's page). A storage error
    with a meaning (403 ACL, 404 container, 400/413 policy) needs someone to act: terminal. Storage names its
    error in every answer with a body; `has_body=False` (a HEAD) carries no code to tell a proxy's page by.
    """
    not_storage = has_body and code is None
    transient = (status >= 500 or status in (408, 429) or (code or "").startswith("Lease")
                 or (not_storage and status not in (400, 401, 403, 404, 409, 412, 413)))
    if not_storage and status < 500 and status not in GATEWAY_OWN_STATUSES:
        return transient, f"{NOT_STORAGE_HINT}; the next run retries it"
    if transient:
        return True, "transient: the next run retries it"
    return False, banenor_hint(status, code) or (NOT_STORAGE_HINT if has_body else "retry later")


def gateway_error(exc: Exception, blob: str | None) -> RelayError:
    """Translate a storage SDK error from Bane NOR's side into a GatewayError (SAS and tokens never quoted)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return GatewayError(f"Bane NOR's gateway could not be reached writing {blob!r} ({type(exc).__name__}).",
                            hint="check BANENOR_STORAGE_URL and outbound network access", blob=blob,
                            transient=True)
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    if isinstance(exc, HttpResponseError) and status is not None:
        text = f"Bane NOR's gateway answered HTTP {status}{f' {code}' if code else ''} for {blob!r}"
        reason = first_line(getattr(exc, "reason", "") or "")
        if reason:
            text += f" ({reason})"
        method = request_method(exc)
        transient, hint = banenor_answer(status, _code_text(code), has_body=method != "HEAD")
        return GatewayError(text + ".", hint=hint, status=status, error_code=code, blob=blob, transient=transient,
                            trust_chain=banenor_link_refusal(status, _code_text(code), method))
    return GatewayError(f"Writing {blob!r} to Bane NOR failed ({type(exc).__name__}).", hint="retry later",
                        blob=blob, transient=True)


def _code_text(code: Any) -> str | None:
    return None if code is None else str(getattr(code, "value", code))


def request_method(exc: Exception) -> str | None:
    """The HTTP method of the request an azure-core error answers (None: not known)."""
    request = getattr(getattr(exc, "response", None), "request", None)
    return getattr(request, "method", None)
