"""The settings' types: the modes as enums, Bane NOR's named environments, and one frozen section per concern
(signing key, Skyporten, Bane NOR, exports, relay behaviour, HTTP). Values only: `settings_table` reads and
validates them, `config.Settings` holds one of each."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .naming import FolderMode, NameMode

DEFAULT_SCOPE = "banenor:payloadmanager.storage"
DEFAULT_API_VERSION = "2025-01-05"  # Bane NOR's examples and API description pin it (docs/protocol.md, section 6)
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_TRANSFER_SIZE = 8 * 1024 * 1024  # BLOCK_SIZE's and SINGLE_PUT_LIMIT's default
MAX_REQUEST_BYTES = 100 * 1000 * 1000  # the gateway's limit is "100 MB per request" (docs/protocol.md, section 6)
MIB = 1024 * 1024
# What one sync may hold for its exports above SINGLE_PUT_LIMIT, at BLOCK_SIZE x (PARALLELISM + 1) each: 4 of them with
# the defaults (RelaySettings.large_in_flight; docs/operations.md's memory figures).
LARGE_SYNC_MEMORY = 160 * MIB


class BanenorEnvironment(StrEnum):
    """BANENOR_ENVIRONMENT: which of Bane NOR's environments (and so which preset) the relay delivers to."""

    DEV = "dev"
    TEST = "test"
    PROD = "prod"


class SigningKeySource(StrEnum):
    """SIGNING_KEY_SOURCE: where the key that signs the Skyporten grant lives."""

    KEYVAULT_SECRET = "keyvault-secret"
    KEYVAULT_CERTIFICATE = "keyvault-certificate"
    KEYVAULT_KEY = "keyvault-key"
    FILE = "file"

    @property
    def in_key_vault(self) -> bool:
        return self is not SigningKeySource.FILE


class ResourceForm(StrEnum):
    """MASKINPORTEN_RESOURCE_FORM: the grant's resource claim as a string or as a one-element array."""

    STRING = "string"
    ARRAY = "array"


class CopyMode(StrEnum):
    """COPY_MODE: how the bytes go (auto: Bane NOR's storage reads from ours where it can, else streamed)."""

    AUTO = "auto"
    STREAM = "stream"
    SERVER = "server"


class AfterDelivery(StrEnum):
    """AFTER_DELIVERY: what becomes of an export once it is delivered."""

    KEEP = "keep"
    ARCHIVE = "archive"
    DELETE = "delete"


class BlobTriggerSource(StrEnum):
    """BLOB_TRIGGER_SOURCE: EventGrid (Azure; required on Flex Consumption) or LogsAndContainerScan (local)."""

    EVENT_GRID = "EventGrid"
    LOGS_AND_CONTAINER_SCAN = "LogsAndContainerScan"


@dataclass(frozen=True)
class Environment:
    """One of Bane NOR's environments and the Skyporten environment it pairs with (docs/protocol.md, section 2)."""

    name: str
    skyporten_issuer: str
    gateway_url: str
    storage_audience: str


# The Skyporten issuers have no trailing slash (unlike ordinary Maskinporten): docs/protocol.md section 2.
_SKY_TEST = "https://test.sky.maskinporten.no"
_SKY_PROD = "https://sky.maskinporten.no"
# Keyed by the StrEnum, which hashes as its value: a plain string finds its entry too.
ENVIRONMENTS: dict[str, Environment] = {
    # dev pairs with Skyporten test: open in docs/protocol.md, so MASKINPORTEN_ISSUER can override it.
    BanenorEnvironment.DEV: Environment(
        "dev", _SKY_TEST, "https://dev.api.apps.banenor.no/payload-manager/v1",
        "https://bnplmextnwestdev.blob.core.windows.net",
    ),
    BanenorEnvironment.TEST: Environment(
        "test", _SKY_TEST, "https://test.api.apps.banenor.no/payload-manager/v1",
        "https://bnplmextnwesttest.blob.core.windows.net",
    ),
    BanenorEnvironment.PROD: Environment(
        "prod", _SKY_PROD, "https://api.banenor.no/payload-manager/v1",
        "https://bnplmextnwestprod.blob.core.windows.net",
    ),
}

@dataclass(frozen=True)
class SigningKeySettings:
    """The key that signs the Skyporten grant: where it is read from and which kid Skyporten knows it by."""

    source: SigningKeySource
    vault_url: str | None
    name: str | None
    file: str | None
    key_id: str | None
    cache_seconds: int


@dataclass(frozen=True)
class SkyportenSettings:
    """The Skyporten (Maskinporten) integration: issuer, token endpoint, client id, scope and resource."""

    issuer: str
    token_endpoint: str
    client_id: str
    scope: str
    resource: str | None
    resource_form: ResourceForm


@dataclass(frozen=True)
class BanenorSettings:
    """Bane NOR's side: the environment, Entra (tenant, managed identity) and the gateway with its container."""

    environment: BanenorEnvironment
    storage_url: str
    storage_audience: str
    tenant_id: str
    client_id: str
    authority_host: str
    container: str
    directory: str
    api_version: str
    federation_retry_seconds: int


@dataclass(frozen=True)
class ExportSettings:
    """The partner's storage: how to reach it and its export, ledger and archive containers."""

    connection_string: str | None = field(repr=False)  # may hold an AccountKey or SAS
    service_uri: str | None
    container: str
    ledger_container: str
    archive_container: str


@dataclass(frozen=True)
class HttpSettings:
    """What every HTTP client of the relay shares: the CA bundle, and whether requests reads the environment."""

    ca_bundle: str | None  # REQUESTS_CA_BUNDLE
    # A proxy variable (HTTPS_PROXY, NO_PROXY, ...) or CURL_CA_BUNDLE is set: the storage clients then read the
    # environment on every request, as requests does by default; without one they skip that work
    # (storage.storage_connection_options).
    from_environment: bool = False

    @property
    def verify(self) -> str | bool:
        """For requests' `verify`: the CA bundle, or the system's trust store."""
        return self.ca_bundle or True


@dataclass(frozen=True)
class RelaySettings:
    """How the relay behaves: copy mode, what follows a delivery, naming, sizes and concurrency."""

    copy_mode: CopyMode
    after_delivery: AfterDelivery
    max_attempts: int
    name_policy: NameMode
    allowed_extensions: frozenset[str]
    folder_mode: FolderMode
    destination_template: str
    block_size: int
    parallelism: int
    single_put_limit: int
    sync_concurrency: int
    sync_prefix: str
    sync_suffix: str

    @property
    def large_in_flight(self) -> int:
        """How many exports above SINGLE_PUT_LIMIT one sync copies at once: as many as LARGE_SYNC_MEMORY holds at
        BLOCK_SIZE x (PARALLELISM + 1) each (4 with the defaults), at least 1, at most SYNC_CONCURRENCY. Small
        exports use the whole pool; so a backlog of large ones does not multiply the memory by SYNC_CONCURRENCY."""
        per_file = self.block_size * (self.parallelism + 1)
        return max(1, min(self.sync_concurrency, LARGE_SYNC_MEMORY // per_file))
