"""Issue 9 on the local stack: the whole chain with the real azure-identity and azure-storage-blob clients,
and each failure with its own clear error (Entra refusals, gateway 401/403/400/413)."""

import uuid

import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import BlobServiceClient

from shared.errors import EntraError, GatewayError
from shared.storage import banenor_service_client, gateway_error
from sim.entra import FederatedCredential
from tests.fakes import FakeClock

pytestmark = pytest.mark.stack


def write(rt, path, data=b"hello bane nor\n"):
    blob = rt.destination.get_blob_client(path)
    try:
        blob.upload_blob(data, overwrite=True)
    except Exception as exc:
        raise gateway_error(exc, path) from exc
    return blob


def test_file_written_through_the_gateway_lands_in_bane_nors_account(make_runtime, backend, stack):
    rt = make_runtime()
    path = f"{rt.settings.banenor.directory}/chain/hello.txt"
    write(rt, path)
    assert backend.get_blob_client(path).download_blob().readall() == b"hello bane nor\n"


def test_storage_client_urls_keep_the_gateway_base_path(make_runtime):
    rt = make_runtime()
    container = rt.destination
    base = rt.settings.banenor.storage_url
    assert container.url == f"{base}/integration-dev"
    assert container.get_blob_client("partner-987654321/a/b/c.csv").url == \
        f"{base}/integration-dev/partner-987654321/a/b/c.csv"


def test_storage_client_asks_for_the_external_account_audience(make_runtime, stack):
    rt = make_runtime()
    write(rt, f"{rt.settings.banenor.directory}/aud.txt")
    entra = stack.entra.token_requests
    token = rt.banenor_credential.get_token(rt.settings.banenor.storage_audience + "/.default")
    assert stack.entra.token_requests == entra, "the storage client's token for this scope is the cached one"
    from shared.skyporten_token import decode_unverified

    assert decode_unverified(token.token)["aud"] == "https://bnplmextnwestlocal.blob.core.windows.net"


def test_one_token_request_of_each_kind_for_many_writes(make_runtime, stack):
    rt = make_runtime()
    sky, entra = stack.skyporten.token_requests, stack.entra.token_requests
    for i in range(5):
        write(rt, f"{rt.settings.banenor.directory}/many/{i}.txt")
    assert stack.skyporten.token_requests - sky == 1
    assert stack.entra.token_requests - entra == 1


@pytest.fixture
def federated(stack):
    """Replace the managed identity's federated credential for one test, then restore it."""
    tenant, client = stack.settings["BANENOR_TENANT_ID"], stack.settings["BANENOR_CLIENT_ID"]
    good = FederatedCredential(stack.skyporten.issuer, "0192:987654321;banenor:payloadmanager.storage",
                               "api://AzureADTokenExchange")

    def replace(**changes):
        stack.entra.remove_federated_credentials(tenant, client)
        values = {"issuer": good.issuer, "subject": good.subject, "audience": good.audience, **changes}
        stack.entra.add_federated_credential(tenant, client, FederatedCredential(**values))

    yield replace
    stack.entra.remove_federated_credentials(tenant, client)
    stack.entra.add_federated_credential(tenant, client, good)


def entra_refusal(rt):
    with pytest.raises(EntraError) as info:
        write(rt, f"{rt.settings.banenor.directory}/refused.txt")
    return info.value


def test_federated_subject_mismatch_shows_both_subjects(make_runtime, federated):
    federated(subject="0192:111111111;banenor:payloadmanager.storage")
    error = entra_refusal(make_runtime(FEDERATION_RETRY_SECONDS="0"))
    assert error.code == "AADSTS700213"
    assert "0192:987654321;banenor:payloadmanager.storage" in str(error)


def test_federated_audience_mismatch(make_runtime, federated):
    federated(audience="api://something-else")
    error = entra_refusal(make_runtime(FEDERATION_RETRY_SECONDS="0"))
    assert error.code == "AADSTS700212"
    assert "api://AzureADTokenExchange" in str(error)


def test_new_federated_credential_is_retried_until_it_propagates(make_runtime, stack, federated):
    # Propagation is measured on a clock of its own that only the relay's backoff moves: the first exchange is
    # refused and the one after the backoff matches, however long the machine takes between the two.
    clock = FakeClock()
    stack.entra.options.propagation_clock = clock
    stack.entra.options.propagation_delay = 0.5
    try:
        federated()
        rt = make_runtime(FEDERATION_RETRY_SECONDS="30")
        rt.banenor_credential.clock, rt.banenor_credential.sleep = clock, clock.sleep
        write(rt, f"{rt.settings.banenor.directory}/propagated.txt")
    finally:
        stack.entra.options.propagation_delay = 0.0
        stack.entra.options.propagation_clock = None
    assert rt.banenor_credential.exchanges == 2
    assert clock.slept == [5.0]


def test_wrong_storage_audience_is_not_a_resource_in_the_tenant(make_runtime):
    error = entra_refusal(make_runtime(BANENOR_STORAGE_AUDIENCE="https://bnplmextnwestother.blob.core.windows.net"))
    assert error.code == "AADSTS500011"
    assert "BANENOR_STORAGE_AUDIENCE" in error.hint


def test_wrong_tenant(make_runtime):
    error = entra_refusal(make_runtime(BANENOR_TENANT_ID=str(uuid.uuid4())))
    assert error.code == "AADSTS90002"
    assert "BANENOR_TENANT_ID" in error.hint


def test_object_id_instead_of_client_id(make_runtime, stack):
    error = entra_refusal(make_runtime(BANENOR_CLIENT_ID=stack.mi_object_id))
    assert error.code == "AADSTS700016"
    assert "not its object/principal id" in error.hint


def test_token_for_storage_azure_com_gets_401_from_the_gateway(make_runtime):
    rt = make_runtime()
    client = banenor_service_client(rt.settings.banenor, rt.settings.http, rt.banenor_credential,
                                    audience="https://storage.azure.com")
    blob = client.get_blob_client("integration-dev", f"{rt.settings.banenor.directory}/aud.txt")
    with pytest.raises(Exception) as info:
        blob.upload_blob(b"x", overwrite=True)
    error = gateway_error(info.value, blob.blob_name)
    assert error.status == 401
    assert error.trust_chain
    assert "BANENOR_STORAGE_AUDIENCE" in error.hint


class StaticCredential:
    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, 4102444800)


def test_expired_storage_token_gets_401(make_runtime, stack):
    rt = make_runtime()
    identity = stack.entra._identities[(stack.settings["BANENOR_TENANT_ID"], stack.settings["BANENOR_CLIENT_ID"])]
    stack.entra.options.token_lifetime = -120
    try:
        token, _ = stack.entra.issue_token(identity, rt.settings.banenor.storage_audience)
    finally:
        stack.entra.options.token_lifetime = 3599
    client = banenor_service_client(rt.settings.banenor, rt.settings.http, StaticCredential(token))
    with pytest.raises(Exception) as info:
        client.get_blob_client("integration-dev", f"{rt.settings.banenor.directory}/x.txt").upload_blob(b"x")
    assert gateway_error(info.value, "x").status == 401


def test_no_token_at_all_gets_401(make_runtime, stack):
    rt = make_runtime()
    client = BlobServiceClient(rt.settings.banenor.storage_url, api_version="2025-01-05",
                               connection_verify=rt.settings.http.ca_bundle)
    with pytest.raises(Exception) as info:
        client.get_blob_client("integration-dev", f"{rt.settings.banenor.directory}/x.txt").upload_blob(b"x")
    assert gateway_error(info.value, "x").status == 401


def test_write_outside_the_granted_directory_gets_403(make_runtime):
    rt = make_runtime()
    with pytest.raises(GatewayError) as info:
        write(rt, "partner-000000000/intruder.txt")
    assert info.value.status == 403
    assert info.value.error_code == "AuthorizationPermissionMismatch"
    assert "only Bane NOR" in info.value.hint


@pytest.mark.parametrize("name", ["kjørebok.xlsx", "ola´s reisebok.txt", "under_score.csv", "program.exe"])
def test_names_and_extensions_the_gateway_refuses_get_400(make_runtime, name):
    rt = make_runtime()
    with pytest.raises(GatewayError) as info:
        write(rt, f"{rt.settings.banenor.directory}/{name}")
    assert info.value.status == 400


def test_request_over_100_mb_gets_413(make_runtime):
    rt = make_runtime()
    client = banenor_service_client(rt.settings.banenor, rt.settings.http, rt.banenor_credential,
                                    max_single_put_size=128 * 2**20)
    blob = client.get_blob_client("integration-dev", f"{rt.settings.banenor.directory}/huge.zip")
    with pytest.raises(Exception) as info:
        blob.upload_blob(b"\0" * (100 * 2**20 + 1), overwrite=True)
    assert gateway_error(info.value, "huge.zip").status == 413
