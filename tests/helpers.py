"""What several test modules share besides their fixtures (those are in tests/conftest.py).

- a partner's settings without a stack (`base_env`);
- the relay on the local stack: `RelayEnv` (behind the `relay_env` fixture) and its `OffsetClock`;
- runtimes whose every dependency goes through a fault proxy, with short retry policies (`fast_runtime`);
- Azurite holding the partner's and Bane NOR's accounts for the copier and ledger tests (`Stores`, `Wire`), and
  the ledger's test records (`receipt`, `versions`).
"""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from shared.config import Settings
from shared.ledger import Ledger, Receipt
from shared.runtime import Runtime
from sim.azurite import Azurite

REPO = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- settings without a stack ------------------------------------------------------------------------------------
TENANT = "6ee535f2-3064-4ac9-81d8-4ceb2ff790c6"
CLIENT = "11111111-2222-3333-4444-555555555555"


def base_env(**overrides: str | None) -> dict[str, str]:
    """A partner's settings on paper (test environment, a Key Vault secret, a storage URI): enough for
    `Settings.load`, no stack needed. A value of None in `overrides` leaves the setting out."""
    env: dict[str, str | None] = {
        "BANENOR_ENVIRONMENT": "test",
        "MASKINPORTEN_CLIENT_ID": "a1b2c3d4-0000-0000-0000-000000000000",
        "MASKINPORTEN_KEY_ID": "partner-key-2026",
        "SIGNING_KEY_SOURCE": "keyvault-secret",
        "KEY_VAULT_URL": "https://partner-kv.vault.azure.net",
        "SIGNING_KEY_NAME": "maskinporten-key",
        "BANENOR_TENANT_ID": TENANT,
        "BANENOR_CLIENT_ID": CLIENT,
        "BANENOR_CONTAINER": "integration-dev",
        "BANENOR_DIRECTORY": "partner-987654321",
        "EXPORT_STORAGE__blobServiceUri": "https://partnerexports.blob.core.windows.net",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


# -- the relay on the local stack --------------------------------------------------------------------------------
class OffsetClock:
    """The relay's clock in stack tests: this machine's time plus `offset`, which a test moves forward to make a
    backoff or a claim's TTL pass without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class RelayEnv:
    """A Runtime on fresh containers (`rt`); `make(**overrides)` builds more with the same containers (a value of
    None keeps the stack's setting). `put` writes an export, `landed` is its blob at Bane NOR."""

    def __init__(self, stack: Any, backend: Any) -> None:
        self.stack, self.backend = stack, backend
        self.tag = tag = uuid.uuid4().hex[:8]
        self.base = dict(stack.settings, EXPORT_CONTAINER=f"exports-{tag}", LEDGER_CONTAINER=f"ledger-{tag}",
                         ARCHIVE_CONTAINER=f"archive-{tag}", DESTINATION_TEMPLATE=f"t{tag}/{{path}}")
        self.clock = OffsetClock()
        self.runtimes: list[Runtime] = []
        self.rt = self.make()
        self.rt.exports.create_container()
        self.rt.archive.create_container()
        self.dest_prefix = f"{self.rt.settings.banenor.directory}/t{tag}/"

    def make(self, **overrides: str | None) -> Runtime:
        env = {**self.base, **{k: v for k, v in overrides.items() if v is not None}}
        rt = Runtime(Settings.load(env), clock=self.clock)
        self.runtimes.append(rt)
        return rt

    def put(self, name: str, data: bytes = b"x;y\n1;2\n", **kwargs: Any) -> None:
        self.rt.exports.get_blob_client(name).upload_blob(data, overwrite=True, **kwargs)

    def landed(self, path: str) -> Any:
        return self.backend.get_blob_client(self.dest_prefix + path)

    def close(self) -> None:
        for r in self.runtimes:
            if r.built("banenor_credential"):
                r.banenor_credential.close()


# -- runtimes behind fault proxies, with short retries ---------------------------------------------------------
class Sleeps:
    """The Skyporten client's `sleep`: records each backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def short_storage_retry(retry_total: int = 4) -> Any:
    """The storage SDK's retry policy with the product's retry count (retry_total=4) but 50 ms apart instead of
    15 s, 18 s, 24 s, 42 s. One policy object per client: a pipeline links its policies, a shared one would cross
    pipelines."""
    from azure.storage.blob import LinearRetry

    return LinearRetry(backoff=0.05, retry_total=retry_total, random_jitter_range=0)


def with_short_gateway_retries(rt: Runtime, retry_total: int = 4) -> Runtime:
    """`rt` with its client for Bane NOR's gateway built anew by the product's builder, as the runtime builds it,
    but with `short_storage_retry`: a test of what a lasting 5xx ends in need not wait out the SDK's backoff."""
    from shared.storage import banenor_service_client

    s = rt.settings
    return rt.override(banenor_service=banenor_service_client(
        s.banenor, s.http, rt.banenor_credential, single_put_limit=s.relay.single_put_limit,
        block_size=s.relay.block_size, retry_policy=short_storage_retry(retry_total)))


def fast_runtime(env: RelayEnv, proxies: dict[str, Any], *, timeout: float = 10.0, **overrides: str | None) -> Any:
    """A Runtime whose every dependency goes through its proxy, built from the product's own builders with a
    short storage retry backoff and `timeout` as the read/connect timeout of each client.

    The product has no setting for client timeouts or the storage SDK's retry backoff (15 s, 18 s, 24 s...)."""
    from azure.identity import ClientAssertionCredential

    from shared.banenor_credential import BaneNorCredential
    from shared.signing import KeyVaultSource, SigningKeyProvider
    from shared.skyporten_token import client_from_settings
    from shared.storage import banenor_service_client
    from tests.faultproxy import proxied_settings

    rt = env.make(**proxied_settings(env.stack, proxies), **overrides)
    s = rt.settings
    timeouts = {"connection_timeout": timeout, "read_timeout": timeout}

    def storage() -> dict:
        return {"retry_policy": short_storage_retry(), **timeouts}

    source = KeyVaultSource(s.signing_key.vault_url, s.signing_key.name, s.signing_key.source, s.signing_key.key_id,
                            rt.partner_credential, s.http.ca_bundle, rt.clock,
                            client_kwargs={"retry_backoff_factor": 0.05, **timeouts})
    rt.override(signing_keys=SigningKeyProvider(source.load, s.signing_key.cache_seconds, rt.clock))
    rt.sleeps = Sleeps()
    skyporten = client_from_settings(s.skyporten, rt.signing_keys, clock=rt.clock, sleep=rt.sleeps, timeout=timeout,
                                     verify=s.http.verify)
    rt.override(skyporten=skyporten)

    def inner(assertion: Any) -> Any:
        return ClientAssertionCredential(
            s.banenor.tenant_id, s.banenor.client_id, lambda: skyporten.get_token().access_token,
            authority=s.banenor.authority_host, retry_total=2, retry_backoff_factor=0.05,
            connection_verify=s.http.ca_bundle, **timeouts)

    rt.override(banenor_credential=BaneNorCredential(
        s.banenor.tenant_id, s.banenor.client_id, skyporten, authority=s.banenor.authority_host,
        federation_retry_seconds=0, clock=rt.clock, ca_bundle=s.http.ca_bundle, new_inner=inner))
    return rt.override(
        banenor_service=banenor_service_client(s.banenor, s.http, rt.banenor_credential, **storage()),
        export_service=BlobServiceClient.from_connection_string(
            s.exports.connection_string, connection_verify=s.http.ca_bundle, **storage()))


def dest_blobs(env: RelayEnv) -> dict[str, Any]:
    """Every committed blob under the test's destination folder, by path below it."""
    prefix = env.dest_prefix
    return {b.name[len(prefix):]: b for b in env.backend.list_blobs(name_starts_with=prefix, include=["metadata"])}


# -- Azurite with both accounts: the copier's and the ledger's tests -------------------------------------------
MiB = 1024 * 1024
AZURITE_ACCOUNTS = ("partnerexports", "bnplmext")  # the partner's storage, Bane NOR's


@dataclass
class Request:
    side: str
    method: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Wire:
    """What the SDK sent, and how many body bytes it received, per side ("source" / "destination")."""

    requests: list[Request] = field(default_factory=list)
    bytes_received: dict[str, int] = field(default_factory=lambda: {"source": 0, "destination": 0})
    in_flight: int = 0
    max_in_flight_blocks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_request(self, side: str) -> Callable[[Any], None]:
        def hook(pipeline_request: Any) -> None:
            req = pipeline_request.http_request
            query = parse_qs(urlsplit(req.url).query)
            with self.lock:
                self.requests.append(Request(side, req.method, query, dict(req.headers)))
                if query.get("comp") == ["block"]:
                    self.in_flight += 1
                    self.max_in_flight_blocks = max(self.max_in_flight_blocks, self.in_flight)

        return hook

    def on_response(self, side: str) -> Callable[[Any], None]:
        def hook(pipeline_response: Any) -> None:
            req, resp = pipeline_response.http_request, pipeline_response.http_response
            with self.lock:
                if parse_qs(urlsplit(req.url).query).get("comp") == ["block"]:
                    self.in_flight -= 1
                if req.method == "GET" and resp.status_code in (200, 206):
                    self.bytes_received[side] += int(resp.headers.get("Content-Length", 0))

        return hook

    def of(self, side: str, comp: str | None = None, method: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.side == side
            and (comp is None or r.query.get("comp") == [comp])
            and (method is None or r.method == method)
        ]


@dataclass
class Stores:
    azurite: Azurite
    source_service: BlobServiceClient
    dest_service: BlobServiceClient
    source_container: str
    dest_container: str

    def put_source(self, name: str, data: bytes, **settings: Any) -> BlobClient:
        blob = self.source_service.get_blob_client(self.source_container, name)
        blob.upload_blob(data, overwrite=True, content_settings=ContentSettings(**settings))
        return blob

    def put_source_without_md5(self, name: str, data: bytes) -> BlobClient:
        # Put Block List stores no Content-MD5 unless told: like a partner's large, block-uploaded export.
        blob = self.source_service.get_blob_client(self.source_container, name)
        blob.stage_block("000000", data)
        blob.commit_block_list(["000000"])
        assert blob.get_blob_properties().content_settings.content_md5 is None
        return blob

    def dest(self, name: str) -> BlobClient:
        return self.dest_service.get_blob_client(self.dest_container, name)

    def source_sas(self, blob: BlobClient) -> str:
        sas = generate_blob_sas(
            blob.account_name,
            blob.container_name,
            blob.blob_name,
            account_key=self.azurite.accounts[blob.account_name],
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(minutes=10),
        )
        return f"{blob.url}?{sas}"

    def forged_sas(self, blob: BlobClient) -> str:
        # A signature Azurite cannot verify: the destination's fetch of the source gets 403, which Azurite
        # reports as 403 CannotVerifyCopySource (checked against Azurite 3.37), as Azure does for a
        # source behind network rules or with a bad SAS.
        return self.source_sas(blob).replace("sig=", "sig=AAAA")


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


NAME = "eksport/Målinger 2024_01 (rev B).csv"  # an export name of the ledger's tests
ETAG = '"0x8DC1234567890AB"'


def receipt(name: str = NAME, etag: str = ETAG, **changes: object) -> Receipt:
    fields: dict[str, object] = {
        "source_name": name,
        "source_etag": etag,
        "size": 1234,
        "md5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "destination_path": "inn/eksport/Maalinger-2024-01-rev-B.csv",
        "destination_url": "https://gw.example/payload-manager/v1/c/inn/eksport/Maalinger-2024-01-rev-B.csv",
        "destination_etag": '"0x8DCAAAA"',
        "attempts": 1,
        "first_attempt_at": 1_700_000_000.0,
        "delivered_at": 1_700_000_001.5,
        "mode": "stream",
        "original_name": name,
    }
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def versions(count: int, prefix: str = "v") -> list[Receipt]:
    return [receipt(name=f"{prefix}/{i}.csv", etag=f'"0x{i:04X}"') for i in range(count)]


def names(ledger: Ledger, prefix: str) -> list[str]:
    return [b.name for b in ledger.container.list_blobs(name_starts_with=prefix)]


class LedgerClock:
    """An injectable clock for the ledger's tests: they move time by hand instead of sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def count_bundle_reads(monkeypatch: Any) -> list[object]:
    """From now on, every CA bundle read into a TLS context (`ssl.SSLContext.load_verify_locations`, which still
    runs: a probe), with the relay's shared contexts forgotten first; the list fills as reads happen."""
    import ssl

    from shared.tls_trust import forget_contexts

    forget_contexts()
    reads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        reads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    return reads
