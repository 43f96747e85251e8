"""The settings table: every app setting the relay knows, one row each, with where its value goes in `Settings`
and how it is read and checked. The one table drives reading (`read_sections`, every problem at once),
`Settings.describe` (its order), the known names (`SETTING_NAMES`) and the typo check (`misspelt_settings`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .naming import BANENOR_EXTENSIONS, FolderMode, NameMode
from .settings_reader import Read, Reader, Step, choice, integer, preset, size, text
from .settings_sections import (
    DEFAULT_API_VERSION,
    DEFAULT_AUTHORITY,
    DEFAULT_SCOPE,
    DEFAULT_TRANSFER_SIZE,
    ENVIRONMENTS,
    MAX_REQUEST_BYTES,
    AfterDelivery,
    BanenorEnvironment,
    BanenorSettings,
    CopyMode,
    ExportSettings,
    HttpSettings,
    RelaySettings,
    ResourceForm,
    SigningKeySettings,
    SigningKeySource,
    SkyportenSettings,
)

# What requests reads from the environment on every request (besides REQUESTS_CA_BUNDLE, which is a setting).
HTTP_ENV_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "curl_ca_bundle"})
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")

# The section classes of `Settings`, by attribute name.
SECTIONS = {"signing_key": SigningKeySettings, "skyporten": SkyportenSettings, "banenor": BanenorSettings,
            "exports": ExportSettings, "relay": RelaySettings, "http": HttpSettings}


@dataclass(frozen=True)
class Setting:
    """One app setting.

    `field`: where `Settings` holds its value, "section.attribute"; None for a name only the host or
    function_app.py's bindings read (known to the typo check, not read here). `read` takes the value from the
    environment; each of `then`, in order, checks it (reporting problems to the reader) and may change it;
    a check of several settings sits on the last of them in the table. `late`: read only once every other
    setting is valid, so that a bad value falls back to its default unreported: how these two have always been
    read, kept as it was by the refactor of issue 29 (a gap for an issue of its own).
    """

    name: str
    field: str | None = None
    read: Read | None = None
    then: tuple[Step, ...] = ()
    late: bool = False

    @property
    def section(self) -> str:
        return (self.field or "").partition(".")[0]

    @property
    def attribute(self) -> str:
        return (self.field or "").partition(".")[2]

    def value(self, reader: Reader) -> Any:
        """This setting read and checked (a row with a `read`)."""
        assert self.read is not None, f"{self.name} has no reader"
        value = self.read(reader, self.name)
        for step in self.then:
            value = step(reader, self.name, value)
        return value


# -- the settings read in a way of their own -------------------------------------------------------------------

def _environment(r: Reader, name: str) -> BanenorEnvironment | None:
    value = r.text(name, required=True, hint="Use dev, test or prod.")
    found = ENVIRONMENTS.get(value or "")
    if value is not None and found is None:
        r.problem(name, f"is {value!r}; use dev, test or prod.")
    r.preset = found or r.preset
    return BanenorEnvironment(value) if found and value is not None else None


def _token_endpoint(r: Reader, name: str) -> str:
    issuer = r.values["MASKINPORTEN_ISSUER"]
    return r.preset_value(name, (issuer or r.preset.skyporten_issuer).rstrip("/") + "/token")


def _extensions(r: Reader, name: str) -> frozenset[str]:
    value = r.text(name)
    if value is None:
        return frozenset(BANENOR_EXTENSIONS)
    extensions = frozenset(e.strip().lstrip(".").lower() for e in value.split(",") if e.strip())
    if not extensions:
        r.problem(name, "is empty; leave it unset for Bane NOR's list.")
    return extensions


# -- what follows the reading: checks (several settings: on the last of them) and changes ----------------------

def _rstrip_slash(r: Reader, name: str, value: str) -> str:
    return value.rstrip("/")


def _strip_slashes(r: Reader, name: str, value: str) -> str:
    return value.strip("/")


def _issuer_without_slash(r: Reader, name: str, issuer: str | None) -> str | None:
    if issuer and issuer.endswith("/"):
        r.problem(name, f"is {issuer!r}: the Skyporten issuer has no trailing slash; Skyporten refuses the grant "
                  "with MP-110 'Invalid JWT claim aud'. Remove the slash.")
    return issuer


def _gateway_audience(r: Reader, name: str, audience: str) -> str:
    if urlsplit(audience).hostname == "storage.azure.com":
        r.problem(name, "is https://storage.azure.com: Bane NOR's gateway routes on the token audience and needs "
                  "the external account itself, e.g. https://bnplmextnwesttest.blob.core.windows.net.")
    return audience


def _one_scope(r: Reader, name: str, scope: str) -> str:
    if len(scope.split()) != 1 or "," in scope:
        r.problem(name, f"is {scope!r}: send exactly one scope ({DEFAULT_SCOPE}); Skyporten appends the scope to "
                  "the token's subject, and Bane NOR's federated credential matches that one scope only.")
    return scope


def _signing_key_found(r: Reader, name: str, key_file: str | None) -> str | None:
    """SIGNING_KEY_SOURCE's companions: the vault and name, or the file; the kid unless a certificate."""
    source = r.values["SIGNING_KEY_SOURCE"]
    if source.in_key_vault:
        if r.values["KEY_VAULT_URL"] is None:
            r.problem("KEY_VAULT_URL", f"is required with SIGNING_KEY_SOURCE={source}; "
                      "use https://<vault-name>.vault.azure.net.")
        if r.values["SIGNING_KEY_NAME"] is None:
            r.problem("SIGNING_KEY_NAME", f"is required with SIGNING_KEY_SOURCE={source}: the name of "
                      "the secret, certificate or key in Key Vault.")
    elif key_file is None:
        r.problem("SIGNING_KEY_FILE", "is required with SIGNING_KEY_SOURCE=file (development only).")
    elif not Path(key_file).is_file():
        r.problem("SIGNING_KEY_FILE", f"{key_file!r} does not exist or is not a file.")
    if source is not SigningKeySource.KEYVAULT_CERTIFICATE and r.values["MASKINPORTEN_KEY_ID"] is None:
        r.problem(
            "MASKINPORTEN_KEY_ID",
            "is required: the kid of the key registered on your Maskinporten integration "
            "(Samarbeidsportalen > your integration > Keys). Only an enterprise certificate "
            "(SIGNING_KEY_SOURCE=keyvault-certificate) goes without one.",
        )
    return key_file


def _guid(what: str) -> Step:
    def check(r: Reader, name: str, value: str | None) -> str | None:
        if value is not None and not _GUID.match(value):
            r.problem(name, f"is {value!r}, not a GUID; {what}")
        return value
    return check


def _container(detail: str = "") -> Step:
    def check(r: Reader, name: str, value: str | None) -> str | None:
        if value is not None and not _CONTAINER.match(value):
            r.problem(name, f"is {value!r}, not a valid container name{detail}.")
        return value
    return check


def _export_storage_given(r: Reader, name: str, service_uri: str | None) -> str | None:
    """EXPORT_STORAGE__blobServiceUri (`name`) or EXPORT_STORAGE; a connection string alone must be well formed."""
    connection = r.values["EXPORT_STORAGE"]
    if connection is None and service_uri is None:
        r.problem(
            "EXPORT_STORAGE",
            "is required: set EXPORT_STORAGE__blobServiceUri=https://<account>.blob.core.windows.net "
            "(identity-based, Azure) or EXPORT_STORAGE to a connection string (local stack).",
        )
    if connection is not None and service_uri is None:
        r.connection_string_format("EXPORT_STORAGE", connection)
    return service_uri


def _own_containers(r: Reader, name: str, archive: str) -> str:
    """The ledger and the archive (`name`) each in a container apart from the exports."""
    for other, value in (("LEDGER_CONTAINER", r.values["LEDGER_CONTAINER"]), (name, archive)):
        if value == r.values["EXPORT_CONTAINER"]:
            r.problem(other, f"is {value!r}, the same as EXPORT_CONTAINER: its own records would be "
                      "delivered as exports. Use a container of its own.")
    return archive


def _ca_bundle_exists(r: Reader, name: str, ca_bundle: str | None) -> str | None:
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        r.problem(name, f"{ca_bundle!r} does not exist; unset it in Azure.")
    return ca_bundle


# -- the table -----------------------------------------------------------------------------------------------
# In the order the settings are read, checked and listed by `describe` (`doctor --settings`).
_EXPORT_CONTAINER = _container(" (3-63 of a-z, 0-9, -)")
SETTINGS: tuple[Setting, ...] = (
    Setting("BANENOR_ENVIRONMENT", "banenor.environment", _environment),
    Setting("MASKINPORTEN_ISSUER", "skyporten.issuer", preset("skyporten_issuer"),
            (Reader.url, _issuer_without_slash)),
    Setting("MASKINPORTEN_TOKEN_ENDPOINT", "skyporten.token_endpoint", _token_endpoint, (Reader.url,)),
    Setting("BANENOR_STORAGE_URL", "banenor.storage_url", preset("gateway_url"), (Reader.url, _rstrip_slash)),
    Setting("BANENOR_STORAGE_AUDIENCE", "banenor.storage_audience", preset("storage_audience"),
            (_rstrip_slash, Reader.url, _gateway_audience)),
    Setting("MASKINPORTEN_CLIENT_ID", "skyporten.client_id", text(
        required=True,
        hint="The client id of your Maskinporten integration in Samarbeidsportalen (test and prod differ).")),
    Setting("MASKINPORTEN_SCOPE", "skyporten.scope", text(DEFAULT_SCOPE), (_one_scope,)),
    Setting("MASKINPORTEN_RESOURCE", "skyporten.resource", text(), (Reader.resource,)),
    Setting("MASKINPORTEN_RESOURCE_FORM", "skyporten.resource_form", choice(ResourceForm.STRING)),
    Setting("MASKINPORTEN_KEY_ID", "signing_key.key_id", text()),
    Setting("SIGNING_KEY_SOURCE", "signing_key.source", choice(SigningKeySource.KEYVAULT_SECRET)),
    Setting("KEY_VAULT_URL", "signing_key.vault_url", text(), (Reader.url,)),
    Setting("SIGNING_KEY_NAME", "signing_key.name", text()),
    Setting("SIGNING_KEY_FILE", "signing_key.file", text(), (_signing_key_found,)),
    Setting("BANENOR_TENANT_ID", "banenor.tenant_id", text(required=True, hint="Bane NOR gives you its tenant id."),
            (_guid("ask Bane NOR for its Entra tenant id."),)),
    Setting("BANENOR_CLIENT_ID", "banenor.client_id", text(
        required=True, hint="The client id of the managed identity Bane NOR created for your organisation."),
        (_guid("use the managed identity's client id (not its object/principal id) from Bane NOR."),)),
    Setting("BANENOR_AUTHORITY_HOST", "banenor.authority_host", text(DEFAULT_AUTHORITY),
            (Reader.url, _rstrip_slash)),
    Setting("BANENOR_CONTAINER", "banenor.container", text(
        required=True, hint="The container Bane NOR gave you, e.g. integration-dev."), (_container(),)),
    Setting("BANENOR_DIRECTORY", "banenor.directory", text(""), (_strip_slashes,)),
    Setting("BANENOR_STORAGE_API_VERSION", "banenor.api_version", text(DEFAULT_API_VERSION)),
    Setting("EXPORT_STORAGE", "exports.connection_string", text(), (Reader.connection_string,)),
    Setting("EXPORT_STORAGE__blobServiceUri", "exports.service_uri", text(), (Reader.url, _export_storage_given)),
    Setting("EXPORT_CONTAINER", "exports.container", text("exports"), (_EXPORT_CONTAINER,)),
    Setting("LEDGER_CONTAINER", "exports.ledger_container", text("relay-ledger"), (_EXPORT_CONTAINER,)),
    Setting("ARCHIVE_CONTAINER", "exports.archive_container", text("exports-archive"),
            (_EXPORT_CONTAINER, _own_containers)),
    Setting("COPY_MODE", "relay.copy_mode", choice(CopyMode.AUTO)),
    Setting("AFTER_DELIVERY", "relay.after_delivery", choice(AfterDelivery.KEEP)),
    Setting("MAX_ATTEMPTS", "relay.max_attempts", integer(5, 1, 100)),
    Setting("NAME_POLICY", "relay.name_policy", choice(NameMode.SANITIZE)),
    Setting("ALLOWED_EXTENSIONS", "relay.allowed_extensions", _extensions),
    Setting("FOLDER_MODE", "relay.folder_mode", choice(FolderMode.KEEP)),
    Setting("DESTINATION_TEMPLATE", "relay.destination_template", text("{path}")),
    Setting("BLOCK_SIZE", "relay.block_size", size(DEFAULT_TRANSFER_SIZE, 256 * 1024, MAX_REQUEST_BYTES)),
    Setting("PARALLELISM", "relay.parallelism", integer(4, 1, 32)),
    Setting("SINGLE_PUT_LIMIT", "relay.single_put_limit", size(DEFAULT_TRANSFER_SIZE, 0, MAX_REQUEST_BYTES)),
    Setting("SYNC_CONCURRENCY", "relay.sync_concurrency", integer(32, 1, 64)),  # docs/settings.md: why 32
    Setting("SYNC_PREFIX", "relay.sync_prefix", text("")),
    Setting("SYNC_SUFFIX", "relay.sync_suffix", text("")),
    Setting("REQUESTS_CA_BUNDLE", "http.ca_bundle", text(), (_ca_bundle_exists,)),
    Setting("SIGNING_KEY_CACHE_SECONDS", "signing_key.cache_seconds", integer(300, 0, 86400), late=True),
    Setting("FEDERATION_RETRY_SECONDS", "banenor.federation_retry_seconds", integer(300, 0, 3600), late=True),
    # Read by the host or by function_app.py's bindings (%SYNC_SCHEDULE%, the identity-based connection
    # EXPORT_STORAGE__*, BLOB_TRIGGER_SOURCE at indexing), not by `Settings`.
    *(Setting(name) for name in (
        "EXPORT_STORAGE__serviceUri", "EXPORT_STORAGE__queueServiceUri", "EXPORT_STORAGE__credential",
        "EXPORT_STORAGE__clientId", "EXPORT_STORAGE__accountName", "SYNC_SCHEDULE", "BLOB_TRIGGER_SOURCE",
        "AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION",
        "APPLICATIONINSIGHTS_CONNECTION_STRING", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
    )),
)


_EAGER = tuple(setting for setting in SETTINGS if setting.read is not None and not setting.late)
_LATE = tuple(setting for setting in SETTINGS if setting.late)
_FIELDS = tuple((setting.name, setting.section, setting.attribute) for setting in SETTINGS if setting.field)


def read_sections(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every section of `Settings` by its attribute name, and where each value came from (set, preset or
    default) by lower-case setting name. Raises ConfigError listing every problem."""
    reader = Reader(env)
    for setting in _EAGER:
        reader.values[setting.name] = setting.value(reader)
    if reader.problems:
        raise ConfigError(reader.problems)
    for setting in _LATE:
        reader.values[setting.name] = setting.value(reader)
    fields: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for name, section, attribute in _FIELDS:
        fields[section][attribute] = reader.values[name]
    fields["http"]["from_environment"] = any(k.lower() in HTTP_ENV_VARIABLES and v for k, v in env.items())
    return {section: SECTIONS[section](**values) for section, values in fields.items()}, reader.origins


# -- names: every app setting the relay or its function app reads, and the host's own -----------------------
# A name close to one of these that is not one of them is a misspelling that would be ignored silently.
SETTING_NAMES = frozenset(setting.name for setting in SETTINGS)
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
