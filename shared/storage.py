"""The storage clients of both sides.

Builds the partner's BlobServiceClient (connection string, or its own identity through DefaultAzureCredential) and
Bane NOR's (the payload manager gateway: audience, API version, timeouts, retries, the recovery after a refused
token), and signs the source SAS for server-side copy. Listing a container is shared/listing.py's, what Bane NOR's
side answers shared/gateway_answers.py's (both re-exported here).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import DEFAULT_TRANSFER_SIZE, BanenorSettings, ExportSettings, HttpSettings, RelaySettings
from .gateway_answers import (  # noqa: F401  (importable from here as before)
    BANENOR_HINTS,
    banenor_answer,
    banenor_hint,
    gateway_error,
    request_method,
)
from .listing import ListedBlob, list_blob_pages, list_blobs  # noqa: F401  (importable from here as before)

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


# The blob trigger's invocations at once on one instance (host.json: extensions.blobs.maxDegreeOfParallelism).
TRIGGER_INVOCATIONS = 8
# What azure-core's RequestsTransport reads from a client's options (its ConnectionConfiguration, and
# use_env_settings): a client handed a transport builds none from them, so `pooled_transport` passes them on.
TRANSPORT_OPTIONS = ("connection_timeout", "read_timeout", "connection_verify", "connection_cert",
                     "connection_data_block_size", "use_env_settings")


def connection_pool_size(relay: RelaySettings) -> int:
    """Connections each storage client keeps open per host: one for every thread of the relay that may send at
    once: the sync's SYNC_CONCURRENCY workers, the blocks of its large copies (`large_in_flight` x PARALLELISM), its
    listing and its receipt writer, and the blob trigger's invocations (41 with the defaults).

    requests keeps 10 per host unless told otherwise; above that, a thread that finds the pool empty opens a new
    TCP and TLS connection, and the pool drops one when it is full again (bench: 384 new connections over 10,000
    small exports on 16 threads, instead of 16).
    """
    return relay.sync_concurrency + relay.large_in_flight * relay.parallelism + 2 + TRIGGER_INVOCATIONS


def pooled_transport(options: dict[str, Any], pool_size: int) -> Any:
    """azure-core's requests transport (its public `session=` argument) with a connection pool of `pool_size` per
    host, configured from the client's `options` as the SDK configures the transport it builds itself: timeouts,
    `connection_verify` (sent with each request), `use_env_settings` (the session's `trust_env`), and urllib3's
    own retries off (the client's retry policy retries). Its HTTPS connections share one TLS context per trust
    store (`shared.tls_trust`), not one per connection."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from urllib3.util.retry import Retry

    from .tls_trust import SharedTrustAdapter

    session = requests.Session()
    session.trust_env = options.get("use_env_settings", True)
    retries = Retry(total=False, redirect=False, raise_on_status=False)
    adapter = SharedTrustAdapter(pool_maxsize=pool_size, max_retries=retries)
    for scheme in ("https://", "http://"):
        session.mount(scheme, adapter)
    return RequestsTransport(session=session, session_owner=True,
                             **{k: options[k] for k in TRANSPORT_OPTIONS if k in options})


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
                           interactive: bool = False, pool_size: int | None = None) -> Any:
    """The BlobServiceClient for the partner's export account: from EXPORT_STORAGE's connection string, or its
    service URI with the partner's identity. `interactive`: the command line's shorter limits; `pool_size`:
    connections kept per host (`connection_pool_size`; None: the SDK's own transport, 10)."""
    from azure.storage.blob import BlobServiceClient

    kwargs = storage_connection_options(http)
    if interactive:
        kwargs.update(interactive_storage_options())
    if pool_size is not None:
        kwargs["transport"] = pooled_transport(kwargs, pool_size)
    if exports.connection_string:
        return BlobServiceClient.from_connection_string(exports.connection_string, **kwargs)
    assert exports.service_uri is not None  # config requires EXPORT_STORAGE or EXPORT_STORAGE__blobServiceUri
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
                           pool_size: int | None = None, **overrides: Any) -> Any:
    """The BlobServiceClient for Bane NOR: gateway base URL, audience, pinned API version, timeouts, retries.

    The SDK keeps the base path (`<base>/<container>/<path>`); `audience` makes it ask its credential for
    `<storage audience>/.default`, which the gateway routes on (docs/protocol.md sections 2 and 6).
    `single_put_limit` and `block_size` are SINGLE_PUT_LIMIT and BLOCK_SIZE (the relay's section). A credential
    that can be told a token was refused (`BaneNorCredential`) gets its `RefusedTokenPolicy` around the retries:
    after a gateway 401 every request of this client is sent again with a token Entra issues anew.
    `pool_size`: connections kept per host (`connection_pool_size`; None: the SDK's own transport, 10).
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
    if hasattr(credential, "invalidate"):
        from .refused_token import RefusedTokenPolicy

        kwargs["retry_policy"] = RefusedTokenPolicy(kwargs["retry_policy"], credential)
    if pool_size is not None and "transport" not in kwargs:
        kwargs["transport"] = pooled_transport(kwargs, pool_size)
    return BlobServiceClient(account_url=banenor.storage_url, credential=credential, **kwargs)
