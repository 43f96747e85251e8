"""The gateway simulator in front of Azurite, through the real BlobServiceClient, and each refusal."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, generate_blob_sas

from sim.azurite import Azurite
from sim.entra import EntraSim, ManagedIdentity
from sim.gateway import GatewaySim
from sim.pki import TlsFiles, make_tls, new_rsa_key
from sim.stack import make_azurite_tls, start_azurite

ACCOUNT = "bnplmextnwestlocal"
AUDIENCE = f"https://{ACCOUNT}.blob.core.windows.net"
TENANT = str(uuid.uuid4())
CONTAINER = "integration-dev"
DIRECTORY = "partner-987654321"
API_VERSION = "2025-01-05"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class EntraTokenCredential:
    """A TokenCredential that takes its tokens straight from the Entra simulator."""

    def __init__(self, entra: EntraSim, identity: ManagedIdentity) -> None:
        self.entra, self.identity = entra, identity

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        token, lifetime = self.entra.issue_token(self.identity, scopes[0].removesuffix("/.default"))
        return AccessToken(token, int(self.entra.clock()) + lifetime)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def azurite_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_azurite_tls(tmp_path_factory.mktemp("azurite-tls"))


@pytest.fixture(scope="module")
def azurite(azurite_tls: TlsFiles) -> Iterator[Azurite]:
    server = start_azurite({ACCOUNT: "", "partnerexports": ""}, azurite_tls)
    verify = str(azurite_tls.ca_cert)
    for account, container in ((ACCOUNT, CONTAINER), ("partnerexports", "exports")):
        BlobServiceClient.from_connection_string(
            server.connection_string(account), connection_verify=verify
        ).create_container(container)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def entra(tls: TlsFiles, clock: Clock) -> Iterator[EntraSim]:
    sim = EntraSim(tls.server_context(), clock=clock)  # issues tokens in-process: never started
    sim.add_tenant(TENANT)
    yield sim


@pytest.fixture
def identity(entra: EntraSim) -> ManagedIdentity:
    return ManagedIdentity(TENANT, str(uuid.uuid4()), str(uuid.uuid4()))


@pytest.fixture
def gateway(tls, azurite_tls, azurite, entra, clock, identity) -> Iterator[GatewaySim]:
    clock.now = time.time()
    server = GatewaySim(
        tls.server_context(),
        entra.validate_token,
        {AUDIENCE: azurite.account_url(ACCOUNT)},
        upstream_ca=str(azurite_tls.ca_cert),
        clock=clock,
    ).start()
    server.grant(identity.object_id, CONTAINER, DIRECTORY)
    yield server
    server.stop()


@pytest.fixture
def service(gateway: GatewaySim, entra: EntraSim, identity, tls: TlsFiles) -> BlobServiceClient:
    return BlobServiceClient(
        account_url=gateway.storage_url,
        credential=EntraTokenCredential(entra, identity),
        audience=AUDIENCE,
        api_version=API_VERSION,
        connection_verify=str(tls.ca_cert),
        retry_total=0,
    )


@pytest.fixture
def backend(azurite: Azurite, azurite_tls: TlsFiles) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(
        azurite.connection_string(ACCOUNT), connection_verify=str(azurite_tls.ca_cert)
    )


def token_for(entra: EntraSim, identity: ManagedIdentity, audience: str = AUDIENCE) -> str:
    return entra.issue_token(identity, audience)[0]


def raw(gateway: GatewaySim, tls: TlsFiles, method: str, path: str, token: str | None, **kwargs):
    headers = {"x-ms-version": API_VERSION, "x-ms-blob-type": "BlockBlob"} | kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    session = kwargs.pop("session", requests)
    url = f"{gateway.storage_url}/{path}"
    return session.request(method, url, headers=headers, verify=str(tls.ca_cert), timeout=10, **kwargs)


def blob_path(name: str) -> str:
    return f"{CONTAINER}/{DIRECTORY}/{name}"


def test_storage_url_keeps_the_base_path(gateway):
    assert gateway.storage_url == f"{gateway.base_url}/payload-manager/v1"


def test_upload_and_download_through_the_real_blob_client(service, backend):
    blob = service.get_blob_client(CONTAINER, f"{DIRECTORY}/hello.txt")
    blob.upload_blob(b"hei fra partneren", overwrite=True)
    assert blob.download_blob().readall() == b"hei fra partneren"
    direct = backend.get_blob_client(CONTAINER, f"{DIRECTORY}/hello.txt")
    assert direct.download_blob().readall() == b"hei fra partneren"


def test_staged_blocks_commit_at_a_nested_path(service, backend):
    name = f"{DIRECTORY}/2025/01/export.csv"
    blob = service.get_blob_client(CONTAINER, name)
    blob.stage_block("YmxvY2stMQ==", b"a,b\n")
    blob.stage_block("YmxvY2stMg==", b"1,2\n")
    blob.commit_block_list(["YmxvY2stMQ==", "YmxvY2stMg=="])
    assert backend.get_blob_client(CONTAINER, name).download_blob().readall() == b"a,b\n1,2\n"


def test_multi_megabyte_upload_is_streamed_in_blocks_and_counted(gateway, service):
    payload = os.urandom(5 * 1024 * 1024 + 17)
    service._config.max_single_put_size = 2 * 1024 * 1024
    service._config.max_block_size = 2 * 1024 * 1024
    blob = service.get_blob_client(CONTAINER, f"{DIRECTORY}/big.zip")
    blob.upload_blob(payload, overwrite=True)
    assert blob.download_blob().readall() == payload
    assert gateway.bytes_in >= len(payload)
    assert gateway.requests["PUT"] == 4  # 3 Put Block + 1 Put Block List


def test_listing_inside_the_granted_directory_is_allowed(service):
    service.get_blob_client(CONTAINER, f"{DIRECTORY}/listed.json").upload_blob(b"{}", overwrite=True)
    container = service.get_container_client(CONTAINER)
    names = [b.name for b in container.list_blobs(name_starts_with=f"{DIRECTORY}/")]
    assert f"{DIRECTORY}/listed.json" in names


def test_listing_outside_the_granted_directory_is_forbidden(service):
    container = service.get_container_client(CONTAINER)
    with pytest.raises(HttpResponseError) as caught:
        list(container.list_blobs(name_starts_with="partner-111111111/"))
    assert caught.value.error_code == "AuthorizationPermissionMismatch"


def test_write_outside_the_granted_directory_is_authorization_permission_mismatch(gateway, service):
    blob = service.get_blob_client(CONTAINER, "partner-111111111/x.txt")
    with pytest.raises(HttpResponseError) as caught:
        blob.upload_blob(b"x", overwrite=True)
    assert caught.value.status_code == 403
    assert caught.value.error_code == "AuthorizationPermissionMismatch"
    assert gateway.rejections["acl"] == 1


def test_forbidden_body_is_the_storage_xml_error(gateway, entra, identity, tls):
    response = raw(gateway, tls, "PUT", f"{CONTAINER}/other/x.txt", token_for(entra, identity), data=b"x")
    assert response.status_code == 403
    assert response.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    assert "<Code>AuthorizationPermissionMismatch</Code>" in response.text
    assert "<Message>This request is not authorized to perform this operation" in response.text


def test_request_without_token_is_401_in_apim_shape(gateway, tls):
    response = raw(gateway, tls, "GET", blob_path("a.txt"), None)
    assert response.status_code == 401
    assert response.json()["statusCode"] == 401 and "message" in response.json()
    assert gateway.rejections["no_token"] == 1


def test_token_signed_by_another_key_is_401(gateway, entra, identity, tls):
    claims = jwt.decode(token_for(entra, identity), options={"verify_signature": False})
    forged = jwt.encode(claims, new_rsa_key(), algorithm="RS256", headers={"kid": "other"})
    assert raw(gateway, tls, "GET", blob_path("a.txt"), forged).status_code == 401
    assert gateway.rejections["invalid_token"] == 1


def test_expired_token_is_401(gateway, entra, identity, tls, clock):
    token = token_for(entra, identity)
    clock.now += 3599
    response = raw(gateway, tls, "GET", blob_path("a.txt"), token)
    assert response.status_code == 401 and "expired" in response.json()["message"]


def test_token_for_storage_azure_com_is_401_audience_not_routed(gateway, entra, identity, tls):
    token = token_for(entra, identity, "https://storage.azure.com")
    response = raw(gateway, tls, "GET", blob_path("a.txt"), token)
    assert response.status_code == 401 and "not routed" in response.json()["message"]


def test_other_api_version_is_400(gateway, entra, identity, tls):
    token = token_for(entra, identity)
    response = raw(gateway, tls, "GET", blob_path("a.txt"), token, headers={"x-ms-version": "2021-08-06"})
    assert response.status_code == 400
    assert gateway.rejections["api_version"] == 1


def test_body_over_the_limit_is_413_and_the_connection_stays_usable(gateway, entra, identity, tls):
    gateway.options.max_request_bytes = 1024
    token = token_for(entra, identity)
    with requests.Session() as session:
        refused = raw(gateway, tls, "PUT", blob_path("big.txt"), token, data=b"x" * 1025, session=session)
        accepted = raw(gateway, tls, "PUT", blob_path("small.txt"), token, data=b"x" * 1024, session=session)
    assert (refused.status_code, accepted.status_code) == (413, 201)


@pytest.mark.parametrize("name", ["kjørebok.xlsx", "ola´s-reisebok.txt", "with space.txt", "under_score.txt"])
def test_name_with_characters_outside_the_allowed_set_is_400(gateway, entra, identity, tls, name):
    response = raw(gateway, tls, "PUT", blob_path(name), token_for(entra, identity), data=b"x")
    assert response.status_code == 400
    assert gateway.rejections["name"] == 1


@pytest.mark.parametrize("name", ["tool.exe", "README", "archive.7z"])
def test_extension_not_on_the_allow_list_is_400(gateway, entra, identity, tls, name):
    response = raw(gateway, tls, "PUT", blob_path(name), token_for(entra, identity), data=b"x")
    assert response.status_code == 400
    assert gateway.rejections["extension"] == 1


def test_allowed_names_from_bane_nors_examples_pass(service):
    for name in ("kjorebok.xlsx", "olas-reisebok.txt", "path/to/test.json"):
        service.get_blob_client(CONTAINER, f"{DIRECTORY}/{name}").upload_blob(b"x", overwrite=True)


def test_slash_in_names_can_be_refused(gateway, entra, identity, tls):
    gateway.options.allow_slash_in_names = False
    response = raw(gateway, tls, "PUT", blob_path("sub/a.txt"), token_for(entra, identity), data=b"x")
    assert response.status_code == 400


def test_put_block_from_url_is_forwarded(service, azurite, azurite_tls, backend):
    source_service = BlobServiceClient.from_connection_string(
        azurite.connection_string("partnerexports"), connection_verify=str(azurite_tls.ca_cert)
    )
    source = source_service.get_blob_client("exports", "source.csv")
    source.upload_blob(b"x,y\n", overwrite=True)
    sas = generate_blob_sas(
        "partnerexports", "exports", "source.csv", account_key=azurite.accounts["partnerexports"],
        permission="r", expiry=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )
    blob = service.get_blob_client(CONTAINER, f"{DIRECTORY}/copied.csv")
    blob.stage_block_from_url("YmxvY2stMQ==", f"{source.url}?{sas}")
    blob.commit_block_list(["YmxvY2stMQ=="])
    assert backend.get_blob_client(CONTAINER, f"{DIRECTORY}/copied.csv").download_blob().readall() == b"x,y\n"


def test_copy_source_is_refused_when_storage_cannot_reach_it(gateway, service):
    gateway.options.allow_copy_source = False
    blob = service.get_blob_client(CONTAINER, f"{DIRECTORY}/copied.csv")
    with pytest.raises(HttpResponseError) as caught:
        blob.stage_block_from_url("YmxvY2stMQ==", "https://127.0.0.1:1/exports/source.csv?sig=x")
    assert (caught.value.status_code, caught.value.error_code) == (403, "CannotVerifyCopySource")


def test_missing_blob_passes_storage_404_through(service):
    with pytest.raises(HttpResponseError) as caught:
        service.get_blob_client(CONTAINER, f"{DIRECTORY}/missing.txt").download_blob()
    assert caught.value.status_code == 404 and caught.value.error_code == "BlobNotFound"


def test_delete_and_head_are_forwarded(service):
    blob = service.get_blob_client(CONTAINER, f"{DIRECTORY}/gone.txt")
    blob.upload_blob(b"x", overwrite=True)
    assert blob.get_blob_properties().size == 1
    blob.delete_blob()
    assert not blob.exists()


def test_repr_shows_no_token_material(gateway):
    assert "Bearer" not in repr(gateway)
