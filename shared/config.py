"""The settings: read every app setting once, validate, explain; typed per concern.

`Settings.load()` reads the environment (Azure app settings, `local.settings.json` under `func start`, or
`.local/settings.env` from the local stack), applies the Bane NOR environment preset, parses each mode into its
enum and reports *all* problems at once as a `ConfigError`, each naming the setting and the fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError, scrub
from .naming import BANENOR_EXTENSIONS, FolderMode, NameMode

DEFAULT_SCOPE = "banenor:payloadmanager.storage"
DEFAULT_API_VERSION = "2025-01-05"  # Bane NOR's examples and API description pin it (docs/protocol.md, section 6)
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_TRANSFER_SIZE = 8 * 1024 * 1024  # BLOCK_SIZE's and SINGLE_PUT_LIMIT's default
MAX_REQUEST_BYTES = 100 * 1000 * 1000  # the gateway's limit is "100 MB per request" (docs/protocol.md, section 6)
MIB = 1024 * 1024


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
ENVIRONMENTS: dict[BanenorEnvironment, Environment] = {
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

# What requests reads from the environment on every request (besides REQUESTS_CA_BUNDLE, which is a setting).
HTTP_ENV_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "curl_ca_bundle"})
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:.")  # RFC 3986 section 3.1: scheme ":" and more


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


# What `describe` lists, in order: each app setting's field name, its section (None: the http section's CA
# bundle) and the field there.
_DESCRIBED: tuple[tuple[str, str, str], ...] = (
    ("environment", "banenor", "environment"),
    ("maskinporten_issuer", "skyporten", "issuer"),
    ("maskinporten_token_endpoint", "skyporten", "token_endpoint"),
    ("banenor_storage_url", "banenor", "storage_url"),
    ("banenor_storage_audience", "banenor", "storage_audience"),
    ("maskinporten_client_id", "skyporten", "client_id"),
    ("maskinporten_scope", "skyporten", "scope"),
    ("maskinporten_resource", "skyporten", "resource"),
    ("maskinporten_resource_form", "skyporten", "resource_form"),
    ("maskinporten_key_id", "signing_key", "key_id"),
    ("signing_key_source", "signing_key", "source"),
    ("key_vault_url", "signing_key", "vault_url"),
    ("signing_key_name", "signing_key", "name"),
    ("signing_key_file", "signing_key", "file"),
    ("banenor_tenant_id", "banenor", "tenant_id"),
    ("banenor_client_id", "banenor", "client_id"),
    ("banenor_authority_host", "banenor", "authority_host"),
    ("banenor_container", "banenor", "container"),
    ("banenor_directory", "banenor", "directory"),
    ("banenor_storage_api_version", "banenor", "api_version"),
    ("export_storage_connection_string", "exports", "connection_string"),
    ("export_storage_service_uri", "exports", "service_uri"),
    ("export_container", "exports", "container"),
    ("ledger_container", "exports", "ledger_container"),
    ("archive_container", "exports", "archive_container"),
    ("copy_mode", "relay", "copy_mode"),
    ("after_delivery", "relay", "after_delivery"),
    ("max_attempts", "relay", "max_attempts"),
    ("name_policy", "relay", "name_policy"),
    ("allowed_extensions", "relay", "allowed_extensions"),
    ("folder_mode", "relay", "folder_mode"),
    ("destination_template", "relay", "destination_template"),
    ("block_size", "relay", "block_size"),
    ("parallelism", "relay", "parallelism"),
    ("single_put_limit", "relay", "single_put_limit"),
    ("sync_concurrency", "relay", "sync_concurrency"),
    ("sync_prefix", "relay", "sync_prefix"),
    ("sync_suffix", "relay", "sync_suffix"),
    ("ca_bundle", "http", "ca_bundle"),
    ("key_cache_seconds", "signing_key", "cache_seconds"),
    ("federation_retry_seconds", "banenor", "federation_retry_seconds"),
)


@dataclass(frozen=True)
class Settings:
    """Every setting the relay uses, validated, in one section per concern (`settings.skyporten`, ...)."""

    signing_key: SigningKeySettings
    skyporten: SkyportenSettings
    banenor: BanenorSettings
    exports: ExportSettings
    relay: RelaySettings
    http: HttpSettings
    # Which settings each value came from (preset, default or set), for `doctor`.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate; raises `ConfigError` listing every problem."""
        return _Reader(os.environ if env is None else env).read()

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value, origin) rows for display, by app setting name; values here are never secret."""
        rows = []
        for flat, section, attribute in _DESCRIBED:
            value = getattr(getattr(self, section), attribute)
            if isinstance(value, frozenset):
                value = ",".join(sorted(value))
            name = _SETTING_NAMES.get(flat, flat.upper())
            # scrub: account keys (any case), SAS signatures and URL query strings, in every value
            rows.append((name, "" if value is None else scrub(str(value)), self.origins.get(name.lower(), "")))
        return rows


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Fields whose app setting has another name (the rest are the field name in upper case).
_SETTING_NAMES = {
    "environment": "BANENOR_ENVIRONMENT",
    "export_storage_connection_string": "EXPORT_STORAGE",
    "export_storage_service_uri": "EXPORT_STORAGE__blobServiceUri",
    "ca_bundle": "REQUESTS_CA_BUNDLE",
    "key_cache_seconds": "SIGNING_KEY_CACHE_SECONDS",
}


_Mode = TypeVar("_Mode", bound=StrEnum)


class _Reader:
    """Collects problems while reading so that all of them are reported in one error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[tuple[str, str]] = []
        self.origins: dict[str, str] = {}

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def problem(self, name: str, text: str) -> None:
        self.problems.append((name, text))

    def text(self, name: str, default: str | None = None, required: bool = False, hint: str = "") -> str | None:
        value = self.raw(name)
        self.origins[name.lower()] = "set" if value is not None else "default"
        if value is None and required:
            self.problem(name, f"is required. {hint}".strip())
        return value if value is not None else default

    def choice(self, name: str, default: _Mode) -> _Mode:
        """One of the values of `default`'s enum, parsed once here."""
        modes = type(default)
        value = self.text(name, default) or default
        if value not in tuple(modes):
            self.problem(name, f"is {value!r}; use one of {', '.join(modes)}.")
            return default
        return modes(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problem(name, f"is {value!r}; use a whole number from {low} to {high}.")
            return default
        if not low <= number <= high:
            self.problem(name, f"is {number}; use a whole number from {low} to {high}.")
            return default
        return number

    def size(self, name: str, default: int, low: int, high: int) -> int:
        """A byte size given as bytes or with a MiB suffix (`8MiB`)."""
        value = self.text(name)
        if value is None:
            return default
        m = re.fullmatch(r"(\d+)\s*(MiB|KiB|B)?", value)
        if not m:
            self.problem(name, f"is {value!r}; use bytes or a size like 8MiB.")
            return default
        number = int(m.group(1)) * {"MiB": MIB, "KiB": 1024, "B": 1, None: 1}[m.group(2)]
        if not low <= number <= high:
            self.problem(name, f"is {number} bytes; use {low} to {high} bytes (the gateway takes 100 MB per request).")
            return default
        return number

    def url(self, name: str, value: str | None) -> str | None:
        """HTTPS everywhere; plain HTTP only for loopback hosts (the local stack)."""
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            self.problem(name, f"is {value!r}, not an absolute URL; use https://host/...")
        elif parts.scheme == "http" and not is_loopback(parts.hostname):
            self.problem(name, f"uses plain http to {parts.hostname}; only https is allowed outside loopback.")
        return value

    def resource(self, name: str, value: str | None) -> str | None:
        """An absolute URI as RFC 8707 section 2 defines a resource indicator: a scheme, no fragment.

        Not only https URLs: `api://AzureADTokenExchange` (Entra's default federated-credential audience) is one.
        """
        if value is None:
            return None
        parts = urlsplit(value)
        if (not _URI_SCHEME.match(value) or parts.fragment or "#" in value or any(c.isspace() for c in value)
                or (parts.scheme in ("http", "https") and not parts.netloc)):
            self.problem(name, f"is {value!r}, not an absolute URI (RFC 8707: a scheme, no fragment). Use the "
                         "value Bane NOR gave you, e.g. api://AzureADTokenExchange or https://skyporten.<domain>; "
                         "leave it unset when Bane NOR gave none.")
        return value

    def connection_string(self, name: str, value: str | None) -> str | None:
        """A storage connection string: its blob endpoint follows the https-or-loopback rule of `url`."""
        if value is None:
            return None
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (part.partition("=") for part in value.split(";") if part.strip())}
        if fields.get("usedevelopmentstorage", "").lower() == "true":
            return value  # Azurite on http://127.0.0.1:10000
        endpoint = fields.get("blobendpoint")
        if endpoint:
            parts = urlsplit(endpoint)
            scheme, host = parts.scheme.lower(), parts.hostname
        else:
            scheme = fields.get("defaultendpointsprotocol", "https").lower()
            host = f"{fields.get('accountname', '<account>')}.blob.{fields.get('endpointsuffix', 'core.windows.net')}"
        if scheme == "http" and not is_loopback(host):
            self.problem(name, f"uses plain http to {host}; only https is allowed outside loopback: set "
                         "DefaultEndpointsProtocol=https (and an https BlobEndpoint), or use "
                         f"{name}__blobServiceUri=https://<account>.blob.core.windows.net.")
        return value

    def connection_string_format(self, name: str, value: str) -> None:
        """`Name=value` parts separated by `;` (as the storage SDK parses them: an empty part is malformed), with a
        blob endpoint or an account name. The value itself is never repeated: it holds a key."""
        parts = value.strip().rstrip(";").split(";")
        names = {p.split("=", 1)[0].strip().lower() for p in parts if "=" in p}
        if any("=" not in p for p in parts):
            self.problem(name, "is not a storage connection string: every part is Name=value, separated by one ';' "
                         "(an empty or broken part is refused). Copy it whole (portal: Storage account > Access "
                         "keys), or use EXPORT_STORAGE__blobServiceUri in Azure.")
        elif not names & {"blobendpoint", "accountname", "usedevelopmentstorage"}:
            self.problem(name, "is not a storage connection string: it has neither AccountName nor BlobEndpoint.")

    def guid(self, name: str, value: str | None, what: str) -> None:
        if value is not None and not _GUID.match(value):
            self.problem(name, f"is {value!r}, not a GUID; {what}")

    def read(self) -> Settings:
        env_name = self.text("BANENOR_ENVIRONMENT", required=True, hint="Use dev, test or prod.")
        preset = ENVIRONMENTS.get(env_name or "")
        if env_name is not None and preset is None:
            self.problem("BANENOR_ENVIRONMENT", f"is {env_name!r}; use dev, test or prod.")
        preset = preset or ENVIRONMENTS[BanenorEnvironment.TEST]

        def preset_value(name: str, value: str) -> str:
            override = self.raw(name)
            self.origins[name.lower()] = "set" if override else f"preset {preset.name}"
            return override or value

        issuer = self.url("MASKINPORTEN_ISSUER", preset_value("MASKINPORTEN_ISSUER", preset.skyporten_issuer))
        if issuer and issuer.endswith("/"):
            self.problem(
                "MASKINPORTEN_ISSUER",
                f"is {issuer!r}: the Skyporten issuer has no trailing slash; Skyporten refuses the grant "
                "with MP-110 'Invalid JWT claim aud'. Remove the slash.",
            )
        default_endpoint = (issuer or preset.skyporten_issuer).rstrip("/") + "/token"
        token_endpoint = self.url(
            "MASKINPORTEN_TOKEN_ENDPOINT", preset_value("MASKINPORTEN_TOKEN_ENDPOINT", default_endpoint)
        )
        storage_url = self.url("BANENOR_STORAGE_URL", preset_value("BANENOR_STORAGE_URL", preset.gateway_url))
        audience = preset_value("BANENOR_STORAGE_AUDIENCE", preset.storage_audience).rstrip("/")
        self.url("BANENOR_STORAGE_AUDIENCE", audience)
        if urlsplit(audience).hostname == "storage.azure.com":
            self.problem(
                "BANENOR_STORAGE_AUDIENCE",
                "is https://storage.azure.com: Bane NOR's gateway routes on the token audience and needs the "
                "external account itself, e.g. https://bnplmextnwesttest.blob.core.windows.net.",
            )

        client_id = self.text(
            "MASKINPORTEN_CLIENT_ID", required=True,
            hint="The client id of your Maskinporten integration in Samarbeidsportalen (test and prod differ).",
        )
        scope = self.text("MASKINPORTEN_SCOPE", DEFAULT_SCOPE) or DEFAULT_SCOPE
        if len(scope.split()) != 1 or "," in scope:
            self.problem(
                "MASKINPORTEN_SCOPE",
                f"is {scope!r}: send exactly one scope ({DEFAULT_SCOPE}); Skyporten appends the scope to the "
                "token's subject, and Bane NOR's federated credential matches that one scope only.",
            )
        resource = self.resource("MASKINPORTEN_RESOURCE", self.text("MASKINPORTEN_RESOURCE"))
        resource_form = self.choice("MASKINPORTEN_RESOURCE_FORM", ResourceForm.STRING)
        key_id = self.text("MASKINPORTEN_KEY_ID")

        source = self.choice("SIGNING_KEY_SOURCE", SigningKeySource.KEYVAULT_SECRET)
        vault_url = self.url("KEY_VAULT_URL", self.text("KEY_VAULT_URL"))
        key_name = self.text("SIGNING_KEY_NAME")
        key_file = self.text("SIGNING_KEY_FILE")
        if source.in_key_vault:
            if vault_url is None:
                self.problem("KEY_VAULT_URL", f"is required with SIGNING_KEY_SOURCE={source}; "
                             "use https://<vault-name>.vault.azure.net.")
            if key_name is None:
                self.problem("SIGNING_KEY_NAME", f"is required with SIGNING_KEY_SOURCE={source}: the name of "
                             "the secret, certificate or key in Key Vault.")
        elif key_file is None:
            self.problem("SIGNING_KEY_FILE", "is required with SIGNING_KEY_SOURCE=file (development only).")
        elif not Path(key_file).is_file():
            self.problem("SIGNING_KEY_FILE", f"{key_file!r} does not exist or is not a file.")
        if source is not SigningKeySource.KEYVAULT_CERTIFICATE and key_id is None:
            self.problem(
                "MASKINPORTEN_KEY_ID",
                "is required: the kid of the key registered on your Maskinporten integration "
                "(Samarbeidsportalen > your integration > Keys). Only an enterprise certificate "
                "(SIGNING_KEY_SOURCE=keyvault-certificate) goes without one.",
            )

        tenant = self.text("BANENOR_TENANT_ID", required=True, hint="Bane NOR gives you its tenant id.")
        self.guid("BANENOR_TENANT_ID", tenant, "ask Bane NOR for its Entra tenant id.")
        mi_client = self.text(
            "BANENOR_CLIENT_ID", required=True,
            hint="The client id of the managed identity Bane NOR created for your organisation.",
        )
        self.guid(
            "BANENOR_CLIENT_ID", mi_client,
            "use the managed identity's client id (not its object/principal id) from Bane NOR.",
        )
        authority = self.url(
            "BANENOR_AUTHORITY_HOST", self.text("BANENOR_AUTHORITY_HOST", DEFAULT_AUTHORITY)
        ) or DEFAULT_AUTHORITY
        container = self.text(
            "BANENOR_CONTAINER", required=True, hint="The container Bane NOR gave you, e.g. integration-dev."
        )
        if container is not None and not _CONTAINER.match(container):
            self.problem("BANENOR_CONTAINER", f"is {container!r}, not a valid container name.")
        directory = (self.text("BANENOR_DIRECTORY", "") or "").strip("/")
        api_version = self.text("BANENOR_STORAGE_API_VERSION", DEFAULT_API_VERSION) or DEFAULT_API_VERSION

        export_conn = self.connection_string("EXPORT_STORAGE", self.text("EXPORT_STORAGE"))
        export_uri = self.url("EXPORT_STORAGE__blobServiceUri", self.text("EXPORT_STORAGE__blobServiceUri"))
        if export_conn is None and export_uri is None:
            self.problem(
                "EXPORT_STORAGE",
                "is required: set EXPORT_STORAGE__blobServiceUri=https://<account>.blob.core.windows.net "
                "(identity-based, Azure) or EXPORT_STORAGE to a connection string (local stack).",
            )
        if export_conn is not None and export_uri is None:
            self.connection_string_format("EXPORT_STORAGE", export_conn)
        export_container = self.text("EXPORT_CONTAINER", "exports") or "exports"
        ledger_container = self.text("LEDGER_CONTAINER", "relay-ledger") or "relay-ledger"
        archive_container = self.text("ARCHIVE_CONTAINER", "exports-archive") or "exports-archive"
        for name, value in (("EXPORT_CONTAINER", export_container), ("LEDGER_CONTAINER", ledger_container),
                            ("ARCHIVE_CONTAINER", archive_container)):
            if not _CONTAINER.match(value):
                self.problem(name, f"is {value!r}, not a valid container name (3-63 of a-z, 0-9, -).")
        for name, value in (("LEDGER_CONTAINER", ledger_container), ("ARCHIVE_CONTAINER", archive_container)):
            if value == export_container:
                self.problem(name, f"is {value!r}, the same as EXPORT_CONTAINER: its own records would be "
                             "delivered as exports. Use a container of its own.")

        copy_mode = self.choice("COPY_MODE", CopyMode.AUTO)
        after = self.choice("AFTER_DELIVERY", AfterDelivery.KEEP)
        max_attempts = self.integer("MAX_ATTEMPTS", 5, 1, 100)
        name_policy = self.choice("NAME_POLICY", NameMode.SANITIZE)
        folder_mode = self.choice("FOLDER_MODE", FolderMode.KEEP)
        template = self.text("DESTINATION_TEMPLATE", "{path}") or "{path}"
        ext_raw = self.text("ALLOWED_EXTENSIONS")
        if ext_raw is None:
            extensions = frozenset(BANENOR_EXTENSIONS)
        else:
            extensions = frozenset(e.strip().lstrip(".").lower() for e in ext_raw.split(",") if e.strip())
            if not extensions:
                self.problem("ALLOWED_EXTENSIONS", "is empty; leave it unset for Bane NOR's list.")
        block_size = self.size("BLOCK_SIZE", DEFAULT_TRANSFER_SIZE, 256 * 1024, MAX_REQUEST_BYTES)
        parallelism = self.integer("PARALLELISM", 4, 1, 32)
        single_put = self.size("SINGLE_PUT_LIMIT", DEFAULT_TRANSFER_SIZE, 0, MAX_REQUEST_BYTES)
        sync_concurrency = self.integer("SYNC_CONCURRENCY", 16, 1, 64)
        ca_bundle = self.text("REQUESTS_CA_BUNDLE")
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            self.problem("REQUESTS_CA_BUNDLE", f"{ca_bundle!r} does not exist; unset it in Azure.")

        if self.problems:
            raise ConfigError(self.problems)
        assert env_name and client_id and tenant and mi_client and container and issuer and token_endpoint
        assert storage_url
        return Settings(
            signing_key=SigningKeySettings(
                source=source,
                vault_url=vault_url,
                name=key_name,
                file=key_file,
                key_id=key_id,
                cache_seconds=self.integer("SIGNING_KEY_CACHE_SECONDS", 300, 0, 86400),
            ),
            skyporten=SkyportenSettings(
                issuer=issuer,
                token_endpoint=token_endpoint,
                client_id=client_id,
                scope=scope,
                resource=resource,
                resource_form=resource_form,
            ),
            banenor=BanenorSettings(
                environment=BanenorEnvironment(env_name),
                storage_url=storage_url.rstrip("/"),
                storage_audience=audience,
                tenant_id=tenant,
                client_id=mi_client,
                authority_host=authority.rstrip("/"),
                container=container,
                directory=directory,
                api_version=api_version,
                federation_retry_seconds=self.integer("FEDERATION_RETRY_SECONDS", 300, 0, 3600),
            ),
            exports=ExportSettings(
                connection_string=export_conn,
                service_uri=export_uri,
                container=export_container,
                ledger_container=ledger_container,
                archive_container=archive_container,
            ),
            relay=RelaySettings(
                copy_mode=copy_mode,
                after_delivery=after,
                max_attempts=max_attempts,
                name_policy=name_policy,
                allowed_extensions=extensions,
                folder_mode=folder_mode,
                destination_template=template,
                block_size=block_size,
                parallelism=parallelism,
                single_put_limit=single_put,
                sync_concurrency=sync_concurrency,
                sync_prefix=self.text("SYNC_PREFIX", "") or "",
                sync_suffix=self.text("SYNC_SUFFIX", "") or "",
            ),
            http=HttpSettings(
                ca_bundle=ca_bundle,
                from_environment=any(k.lower() in HTTP_ENV_VARIABLES and v for k, v in self.env.items()),
            ),
            origins=self.origins,
        )


# Every app setting the relay or its function app reads (Settings.load, function_app.py's %NAME% bindings and
# the identity-based connection EXPORT_STORAGE__*), and the host's own: a name close to one of these that is not
# one of them is a misspelling that would be ignored silently (`misspelt_settings`).
SETTING_NAMES = frozenset({
    "BANENOR_ENVIRONMENT", "MASKINPORTEN_ISSUER", "MASKINPORTEN_TOKEN_ENDPOINT", "BANENOR_STORAGE_URL",
    "BANENOR_STORAGE_AUDIENCE", "MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_SCOPE", "MASKINPORTEN_RESOURCE",
    "MASKINPORTEN_RESOURCE_FORM", "MASKINPORTEN_KEY_ID", "SIGNING_KEY_SOURCE", "KEY_VAULT_URL", "SIGNING_KEY_NAME",
    "SIGNING_KEY_FILE", "SIGNING_KEY_CACHE_SECONDS", "BANENOR_TENANT_ID", "BANENOR_CLIENT_ID",
    "BANENOR_AUTHORITY_HOST", "BANENOR_CONTAINER", "BANENOR_DIRECTORY", "BANENOR_STORAGE_API_VERSION",
    "EXPORT_STORAGE", "EXPORT_STORAGE__blobServiceUri", "EXPORT_STORAGE__serviceUri", "EXPORT_STORAGE__queueServiceUri",
    "EXPORT_STORAGE__credential", "EXPORT_STORAGE__clientId", "EXPORT_STORAGE__accountName", "EXPORT_CONTAINER",
    "LEDGER_CONTAINER", "ARCHIVE_CONTAINER", "COPY_MODE", "AFTER_DELIVERY", "MAX_ATTEMPTS", "NAME_POLICY",
    "ALLOWED_EXTENSIONS", "FOLDER_MODE", "DESTINATION_TEMPLATE", "BLOCK_SIZE", "PARALLELISM", "SINGLE_PUT_LIMIT",
    "SYNC_CONCURRENCY", "SYNC_PREFIX", "SYNC_SUFFIX", "SYNC_SCHEDULE", "REQUESTS_CA_BUNDLE",
    "FEDERATION_RETRY_SECONDS", "BLOB_TRIGGER_SOURCE", "AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION", "APPLICATIONINSIGHTS_CONNECTION_STRING", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
})
_SETTING_PREFIXES = ("BANENOR_", "MASKINPORTEN_", "EXPORT_", "LEDGER_", "ARCHIVE_", "SIGNING_", "SYNC_", "KEY_VAULT")


def misspelt_settings(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(name, problem) for each name in `env` that looks like one of SETTING_NAMES but is not one (wrong case,
    a typo): the relay would ignore it and use the default. Other names (the platform's own) are left alone."""
    import difflib

    upper = {name.upper(): name for name in SETTING_NAMES}
    problems = []
    for name in sorted(env):
        if name in SETTING_NAMES or name.startswith("STACK_"):
            continue
        close = difflib.get_close_matches(name.upper(), upper, n=1, cutoff=0.85)
        if not close and name.upper().startswith(_SETTING_PREFIXES):
            close = difflib.get_close_matches(name.upper(), upper, n=1, cutoff=0.6)
        if close:
            problems.append((name, f"is not a setting the relay reads (it would be ignored); did you mean "
                             f"{upper[close[0]]}? Rename it."))
    return problems


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings, with every problem at once: bad values and names that look like ours but are not
    (`misspelt_settings`). Raises ConfigError."""
    env = os.environ if env is None else env
    typos = misspelt_settings(env)
    try:
        settings = Settings.load(env)
    except ConfigError as exc:
        raise ConfigError(exc.problems + typos) from None
    if typos:
        raise ConfigError(typos)
    return settings


ENV_FILE_FORMATS = ("KEY=value lines (dotenv, `export` and quotes allowed), a Functions local.settings.json (its "
                    "Values), or the JSON that `az functionapp config appsettings list` prints")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")


def read_env_file(path: str | Path) -> dict[str, str]:
    """Read settings from a file in one of ENV_FILE_FORMATS. Raises OSError when the file cannot be read and
    ValueError (naming the line or the JSON's problem) when it is in none of the formats."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith(("{", "[")):
        return _settings_json(text)
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            # Skipping it would leave the setting at its default and the mistake unseen (`BANENOR_DIRECTORY x`
            # writes to the container's root). Only the first word is shown: the rest may be a secret.
            first = line.split(None, 1)[0].rstrip(":")[:40]
            raise ValueError(f"line {number} is not KEY=value (it starts with {first!r}; write {first}=<value>, "
                             "or # to comment it out)")
        key, _, value = line.partition("=")
        if not _ENV_KEY.match(key.strip()):
            raise ValueError(f"line {number}: {key.strip()[:40]!r} is not a setting name")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _settings_json(text: str) -> dict[str, str]:
    """local.settings.json (`{"Values": {...}}`) or `az functionapp config appsettings list` (`[{"name", "value",
    "slotSetting"}, ...]`); a null value (a setting az does not show) is left out."""
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("Values"), dict):
        pairs = list(data["Values"].items())
    elif isinstance(data, list) and all(isinstance(r, dict) and "name" in r for r in data):
        pairs = [(r["name"], r.get("value")) for r in data]
    else:
        raise ValueError("JSON, but neither a local.settings.json with Values nor an appsettings list")
    values = {}
    for key, value in pairs:
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise ValueError(f"{str(key)[:40]!r} is not a setting name")
        if value is not None:
            values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def blob_trigger_source(env: Mapping[str, str] | None = None) -> str:
    """BLOB_TRIGGER_SOURCE, read at indexing time: EventGrid (default; required on Flex Consumption) or
    LogsAndContainerScan (local `func start` with Azurite), as plain text. An unknown value falls back to
    EventGrid."""
    value = (os.environ if env is None else env).get("BLOB_TRIGGER_SOURCE", BlobTriggerSource.EVENT_GRID).strip()
    return value if value in tuple(BlobTriggerSource) else BlobTriggerSource.EVENT_GRID.value
