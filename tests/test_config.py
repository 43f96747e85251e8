"""Settings: presets, overrides, and one clear problem per bad setting, all reported at once."""

import pytest

from shared.config import ENVIRONMENTS, Settings, read_env_file
from shared.errors import ConfigError
from tests.helpers import TENANT, base_env


def problems_of(env):
    with pytest.raises(ConfigError) as info:
        Settings.load(env)
    return dict(info.value.problems)


@pytest.mark.parametrize("name", ["dev", "test", "prod"])
def test_environment_presets_issuer_gateway_and_audience(name):
    s = Settings.load(base_env(BANENOR_ENVIRONMENT=name))
    preset = ENVIRONMENTS[name]
    assert s.skyporten.issuer == preset.skyporten_issuer
    assert s.skyporten.token_endpoint == preset.skyporten_issuer + "/token"
    assert s.banenor.storage_url == preset.gateway_url
    assert s.banenor.storage_audience == preset.storage_audience


def test_prod_uses_the_prod_skyporten_issuer_without_trailing_slash():
    s = Settings.load(base_env(BANENOR_ENVIRONMENT="prod"))
    assert s.skyporten.issuer == "https://sky.maskinporten.no"
    assert s.banenor.storage_audience == "https://bnplmextnwestprod.blob.core.windows.net"


def test_each_preset_value_can_be_overridden():
    s = Settings.load(base_env(
        MASKINPORTEN_ISSUER="https://127.0.0.1:5001", MASKINPORTEN_TOKEN_ENDPOINT="https://127.0.0.1:5001/token",
        BANENOR_STORAGE_URL="https://127.0.0.1:5002/payload-manager/v1",
        BANENOR_STORAGE_AUDIENCE="https://bnplmextnwestlocal.blob.core.windows.net",
    ))
    assert s.skyporten.issuer == "https://127.0.0.1:5001"
    assert s.banenor.storage_url == "https://127.0.0.1:5002/payload-manager/v1"
    assert s.origins["maskinporten_issuer"] == "set"
    assert s.origins["banenor_storage_url"] == "set"


def test_defaults_for_scope_api_version_and_authority():
    s = Settings.load(base_env())
    assert s.skyporten.scope == "banenor:payloadmanager.storage"
    assert s.banenor.api_version == "2025-01-05"
    assert s.banenor.authority_host == "https://login.microsoftonline.com"
    assert s.skyporten.resource is None
    assert s.skyporten.resource_form == "string"


def test_all_problems_are_reported_at_once():
    found = problems_of({"BANENOR_ENVIRONMENT": "staging"})
    for name in ("BANENOR_ENVIRONMENT", "MASKINPORTEN_CLIENT_ID", "BANENOR_TENANT_ID", "BANENOR_CLIENT_ID",
                 "BANENOR_CONTAINER", "KEY_VAULT_URL", "SIGNING_KEY_NAME", "MASKINPORTEN_KEY_ID", "EXPORT_STORAGE"):
        assert name in found, name


@pytest.mark.parametrize("name", [
    "BANENOR_ENVIRONMENT", "MASKINPORTEN_CLIENT_ID", "BANENOR_TENANT_ID", "BANENOR_CLIENT_ID", "BANENOR_CONTAINER",
])
def test_a_missing_required_setting_is_named(name):
    found = problems_of(base_env(**{name: None}))
    assert list(found) == [name]
    assert "required" in found[name]


def test_issuer_with_trailing_slash_is_refused_with_the_reason():
    found = problems_of(base_env(MASKINPORTEN_ISSUER="https://test.sky.maskinporten.no/"))
    assert "MP-110" in found["MASKINPORTEN_ISSUER"]
    assert "trailing slash" in found["MASKINPORTEN_ISSUER"]


@pytest.mark.parametrize("scope", ["banenor:payloadmanager.storage openid", "a,b"])
def test_a_scope_list_is_refused(scope):
    found = problems_of(base_env(MASKINPORTEN_SCOPE=scope))
    assert "exactly one scope" in found["MASKINPORTEN_SCOPE"]


@pytest.mark.parametrize("aud", ["https://storage.azure.com", "https://storage.azure.com/"])
def test_storage_azure_com_audience_is_refused(aud):
    found = problems_of(base_env(BANENOR_STORAGE_AUDIENCE=aud))
    assert "routes on the token audience" in found["BANENOR_STORAGE_AUDIENCE"]


def test_plain_http_is_refused_outside_loopback():
    found = problems_of(base_env(BANENOR_STORAGE_URL="http://gateway.example.no/payload-manager/v1"))
    assert "plain http" in found["BANENOR_STORAGE_URL"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_plain_http_is_accepted_for_loopback(host):
    s = Settings.load(base_env(BANENOR_STORAGE_URL=f"http://{host}:8080/payload-manager/v1"))
    assert s.banenor.storage_url.startswith("http://")


def test_client_id_that_is_not_a_guid_mentions_the_object_id_mistake():
    found = problems_of(base_env(BANENOR_CLIENT_ID="partner-identity"))
    assert "not its object/principal id" in found["BANENOR_CLIENT_ID"]


def test_file_source_needs_an_existing_file(tmp_path):
    found = problems_of(base_env(SIGNING_KEY_SOURCE="file", SIGNING_KEY_FILE=str(tmp_path / "missing.pem")))
    assert "does not exist" in found["SIGNING_KEY_FILE"]


def test_certificate_source_needs_no_kid():
    s = Settings.load(base_env(SIGNING_KEY_SOURCE="keyvault-certificate", MASKINPORTEN_KEY_ID=None))
    assert s.signing_key.key_id is None


def test_kid_is_required_for_a_registered_key():
    found = problems_of(base_env(MASKINPORTEN_KEY_ID=None))
    assert "Samarbeidsportalen" in found["MASKINPORTEN_KEY_ID"]


@pytest.mark.parametrize(("name", "value"), [
    ("SIGNING_KEY_SOURCE", "hsm"), ("MASKINPORTEN_RESOURCE_FORM", "list"), ("COPY_MODE", "fast"),
    ("AFTER_DELIVERY", "move"), ("NAME_POLICY", "loose"), ("MAX_ATTEMPTS", "zero"), ("MAX_ATTEMPTS", "0"),
    ("BLOCK_SIZE", "200MiB"), ("BLOCK_SIZE", "big"), ("PARALLELISM", "0"), ("EXPORT_CONTAINER", "Exports_1"),
    ("BANENOR_CONTAINER", "x"), ("BANENOR_TENANT_ID", "bane-nor"),
])
def test_malformed_values_are_named_with_the_fix(name, value):
    found = problems_of(base_env(**{name: value}))
    assert name in found
    assert value in found[name] or "bytes" in found[name]


def test_block_size_accepts_mib_suffix():
    assert Settings.load(base_env(BLOCK_SIZE="16MiB")).relay.block_size == 16 * 1024 * 1024


def test_connection_string_key_is_redacted_in_describe():
    s = Settings.load(base_env(EXPORT_STORAGE="DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;"))
    shown = dict((name, value) for name, value, _ in s.describe())
    assert "c2VjcmV0" not in shown["EXPORT_STORAGE"]


def test_describe_hides_a_lower_case_account_key():
    s = Settings.load(base_env(EXPORT_STORAGE="DefaultEndpointsProtocol=https;AccountName=a;accountkey=c2VjcmV0;"))
    assert "c2VjcmV0" not in str(s.describe())


def test_describe_hides_a_sas_in_the_service_uri():
    s = Settings.load(base_env(**{"EXPORT_STORAGE__blobServiceUri":
                                  "https://partnerexports.blob.core.windows.net/?sv=2025-01-05&sig=c2VjcmV0"}))
    assert "c2VjcmV0" not in str(s.describe())


def test_describe_names_each_row_by_its_app_setting_and_origin():
    rows = {name: origin for name, _, origin in Settings.load(base_env(REQUESTS_CA_BUNDLE=None)).describe()}
    assert rows["BANENOR_ENVIRONMENT"] == "set"
    assert rows["MASKINPORTEN_ISSUER"] == "preset test"
    assert rows["SIGNING_KEY_CACHE_SECONDS"] == "default"
    assert rows["EXPORT_STORAGE__blobServiceUri"] == "set"


def test_env_file_lines_are_read(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text("# comment\nA=1\nB = two=2\n\n")
    assert read_env_file(path) == {"A": "1", "B": "two=2"}


@pytest.mark.parametrize("line", ["BANENOR_DIRECTORY partner-987654321", "BANENOR_DIRECTORY",
                                  "export BANENOR_DIRECTORY", "BANENOR_DIRECTORY: partner-987654321", "[settings]"])
def test_an_env_file_line_that_is_not_key_value_is_an_error_naming_its_line(tmp_path, line):
    path = tmp_path / "settings.env"
    path.write_text(f"# comment\n\nEXPORT_CONTAINER=exports\n   \n{line}\nLEDGER_CONTAINER=ledger\n")
    with pytest.raises(ValueError, match=r"^line 5 is not KEY=value") as info:
        read_env_file(path)
    assert "partner-987654321" not in str(info.value)  # a value may be a secret: only the name is shown


def test_an_env_file_line_error_shows_no_value_of_a_secret(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text("IDENTITY_HEADER s3cr3t-value-here\n")
    with pytest.raises(ValueError) as info:
        read_env_file(path)
    assert "s3cr3t" not in str(info.value) and "IDENTITY_HEADER" in str(info.value)


@pytest.mark.parametrize("name", ["LEDGER_CONTAINER", "ARCHIVE_CONTAINER"])
def test_ledger_or_archive_in_the_export_container_is_refused(name):
    found = problems_of(base_env(EXPORT_CONTAINER="exports", **{name: "exports"}))
    assert "the same as EXPORT_CONTAINER" in found[name]


def test_settings_repr_never_shows_the_connection_string_key():
    s = Settings.load(base_env(EXPORT_STORAGE="DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;"))
    assert "c2VjcmV0" not in repr(s)


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "all_proxy", "CURL_CA_BUNDLE"])
def test_a_proxy_or_curl_bundle_variable_keeps_the_per_request_environment_lookup(name):
    assert Settings.load(base_env(**{name: "http://proxy.example:3128"})).http.from_environment


def test_without_proxy_variables_the_storage_clients_skip_the_environment():
    from shared.runtime import Runtime
    from shared.storage import banenor_service_client

    settings = Settings.load(base_env())
    assert not settings.http.from_environment
    # No public accessor: the transport azure-storage-blob built from use_env_settings=False.
    assert Runtime(settings).export_service._pipeline._transport._use_env_settings is False
    assert banenor_service_client(settings.banenor, settings.http, credential=None
                                  )._pipeline._transport._use_env_settings is False


def test_http_from_environment_is_not_listed_as_a_setting():
    assert "HTTP_FROM_ENVIRONMENT" not in {row[0] for row in Settings.load(base_env()).describe()}


# -- MASKINPORTEN_RESOURCE: any absolute URI (RFC 8707 section 2), issue 18 ----------------------------------

@pytest.mark.parametrize("value", [
    "api://AzureADTokenExchange",  # Entra's default audience for a federated credential
    "https://skyporten.example.no",  # Digdir's recommended pattern
    "urn:banenor:payloadmanager",
])
def test_resource_accepts_any_absolute_uri(value):
    assert Settings.load(base_env(MASKINPORTEN_RESOURCE=value)).skyporten.resource == value


@pytest.mark.parametrize("value", ["skyporten.example.no", "AzureADTokenExchange", "https://x.example/#part",
                                   "api://has space", "https://"])
def test_resource_that_is_no_absolute_uri_is_refused_with_a_valid_example(value):
    found = problems_of(base_env(MASKINPORTEN_RESOURCE=value))
    assert "absolute URI" in found["MASKINPORTEN_RESOURCE"]
    assert "api://AzureADTokenExchange" in found["MASKINPORTEN_RESOURCE"]


# -- EXPORT_STORAGE connection strings: https or loopback (issue 17 point 7) ---------------------------------

@pytest.mark.parametrize("connection", [
    "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=c2VjcmV0;BlobEndpoint=http://partner.example.no/a;",
    "DefaultEndpointsProtocol=http;AccountName=partnerexports;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net",
    "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;BlobEndpoint=http://10.0.0.5:10000/a;",
])
def test_plain_http_connection_string_to_a_remote_account_is_refused(connection):
    found = problems_of(base_env(EXPORT_STORAGE=connection))
    assert "plain http" in found["EXPORT_STORAGE"]
    assert "c2VjcmV0" not in found["EXPORT_STORAGE"]


@pytest.mark.parametrize("connection", [
    "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=c2VjcmV0;BlobEndpoint=http://127.0.0.1:10000/a;",
    "UseDevelopmentStorage=true",
    "DefaultEndpointsProtocol=https;AccountName=partnerexports;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net",
    "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=c2VjcmV0;BlobEndpoint=https://partner.example.no/a;",
])
def test_https_or_loopback_connection_strings_pass(connection):
    assert Settings.load(base_env(EXPORT_STORAGE=connection)).exports.connection_string == connection


# -- settings typed per concern -------------------------------------------------------------------------------
def test_settings_are_grouped_by_concern_in_sections():
    s = Settings.load(base_env())
    assert (s.signing_key.source, s.signing_key.vault_url, s.signing_key.name, s.signing_key.key_id) == (
        "keyvault-secret", "https://partner-kv.vault.azure.net", "maskinporten-key", "partner-key-2026")
    assert (s.skyporten.client_id, s.skyporten.issuer) == (
        "a1b2c3d4-0000-0000-0000-000000000000", "https://test.sky.maskinporten.no")
    assert (s.banenor.environment, s.banenor.tenant_id, s.banenor.container, s.banenor.directory) == (
        "test", TENANT, "integration-dev", "partner-987654321")
    assert (s.exports.service_uri, s.exports.container, s.exports.ledger_container) == (
        "https://partnerexports.blob.core.windows.net", "exports", "relay-ledger")
    # SYNC_CONCURRENCY's default is 32 since issue 30's connection pool and large-export bound (docs/settings.md)
    assert (s.relay.copy_mode, s.relay.max_attempts, s.relay.sync_concurrency) == ("auto", 5, 32)


def test_each_section_is_frozen():
    import dataclasses

    s = Settings.load(base_env())
    for section in (s.signing_key, s.skyporten, s.banenor, s.exports, s.relay):
        with pytest.raises(dataclasses.FrozenInstanceError):
            section.__setattr__(dataclasses.fields(section)[0].name, "changed")


@pytest.mark.parametrize(
    ("setting", "value", "section", "attribute", "enum"),
    [
        ("COPY_MODE", "server", "relay", "copy_mode", "CopyMode"),
        ("AFTER_DELIVERY", "archive", "relay", "after_delivery", "AfterDelivery"),
        ("NAME_POLICY", "strict", "relay", "name_policy", "NameMode"),
        ("FOLDER_MODE", "flatten", "relay", "folder_mode", "FolderMode"),
        ("SIGNING_KEY_SOURCE", "keyvault-key", "signing_key", "source", "SigningKeySource"),
        ("MASKINPORTEN_RESOURCE_FORM", "array", "skyporten", "resource_form", "ResourceForm"),
        ("BANENOR_ENVIRONMENT", "prod", "banenor", "environment", "BanenorEnvironment"),
    ],
)
def test_each_mode_is_parsed_once_into_its_enum(setting, value, section, attribute, enum):
    import shared.config as config

    parsed = getattr(getattr(Settings.load(base_env(**{setting: value})), section), attribute)
    assert parsed is getattr(config, enum)(value)
    assert parsed == value  # a str enum: code that compares with the setting's text keeps working


def test_settings_are_read_by_section_only():
    """Issue 22: the flat names of the first merge (settings.copy_mode, ...) are gone; each factory takes its own
    section, so a module that still reads a flat name fails here rather than in a partner's deployment."""
    s = Settings.load(base_env(COPY_MODE="stream", SYNC_PREFIX="in/"))
    assert (s.relay.copy_mode, s.relay.sync_prefix) == ("stream", "in/")
    for flat in ("copy_mode", "sync_prefix", "maskinporten_client_id", "banenor_container", "export_container",
                 "ca_bundle", "http_from_environment"):
        assert not hasattr(s, flat)


def test_the_blob_trigger_source_is_a_plain_text_value_and_unknown_falls_back_to_event_grid():
    from shared.config import blob_trigger_source

    assert blob_trigger_source({"BLOB_TRIGGER_SOURCE": "LogsAndContainerScan"}) == "LogsAndContainerScan"
    assert type(blob_trigger_source({"BLOB_TRIGGER_SOURCE": "Polling"})) is str
    assert blob_trigger_source({"BLOB_TRIGGER_SOURCE": "Polling"}) == "EventGrid"


def test_describe_lists_every_setting_it_reads_once_in_doctors_order():
    """`doctor --settings` prints these rows in this order: the settings table's (issue 29 made it the one list)."""
    assert [name for name, _, _ in Settings.load(base_env()).describe()] == [
        "BANENOR_ENVIRONMENT", "MASKINPORTEN_ISSUER", "MASKINPORTEN_TOKEN_ENDPOINT", "BANENOR_STORAGE_URL",
        "BANENOR_STORAGE_AUDIENCE", "MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_SCOPE", "MASKINPORTEN_RESOURCE",
        "MASKINPORTEN_RESOURCE_FORM", "MASKINPORTEN_KEY_ID", "SIGNING_KEY_SOURCE", "KEY_VAULT_URL", "SIGNING_KEY_NAME",
        "SIGNING_KEY_FILE", "BANENOR_TENANT_ID", "BANENOR_CLIENT_ID", "BANENOR_AUTHORITY_HOST", "BANENOR_CONTAINER",
        "BANENOR_DIRECTORY", "BANENOR_STORAGE_API_VERSION", "EXPORT_STORAGE", "EXPORT_STORAGE__blobServiceUri",
        "EXPORT_CONTAINER", "LEDGER_CONTAINER", "ARCHIVE_CONTAINER", "COPY_MODE", "AFTER_DELIVERY", "MAX_ATTEMPTS",
        "NAME_POLICY", "ALLOWED_EXTENSIONS", "FOLDER_MODE", "DESTINATION_TEMPLATE", "BLOCK_SIZE", "PARALLELISM",
        "SINGLE_PUT_LIMIT", "SYNC_CONCURRENCY", "SYNC_PREFIX", "SYNC_SUFFIX", "REQUESTS_CA_BUNDLE",
        "SIGNING_KEY_CACHE_SECONDS", "FEDERATION_RETRY_SECONDS",
    ]
