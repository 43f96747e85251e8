"""The Entra ID simulator against the real azure-identity credentials, and each AADSTS refusal."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientAssertionCredential, DefaultAzureCredential, ManagedIdentityCredential

from sim.entra import JWT_BEARER_ASSERTION, EntraSim, FederatedCredential
from sim.httpbase import Handler, SimServer
from sim.jwks import public_jwk
from sim.pki import TlsFiles, make_tls, new_rsa_key

TENANT = str(uuid.uuid4())
CLIENT_ID = str(uuid.uuid4())
OBJECT_ID = str(uuid.uuid4())
STORAGE = "https://bnplmextnwestlocal.blob.core.windows.net"
SUBJECT = "0192:987654321;banenor:payloadmanager.storage"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class _IssuerHandler(Handler):
    server: TinyIssuer

    def do_GET(self) -> None:
        if self.path_only == "/.well-known/openid-configuration":
            self.send_json(200, {"issuer": self.server.base_url, "jwks_uri": self.server.base_url + "/jwk"})
        elif self.path_only == "/jwk":
            self.send_json(200, {"keys": [public_jwk(self.server.key.public_key(), self.server.kid)]})
        else:
            self.send_json(404, {})


class TinyIssuer(SimServer):
    """A Skyporten-like issuer: publishes metadata and a JWKS, signs tokens locally."""

    def __init__(self, tls: TlsFiles, clock: Clock) -> None:
        super().__init__(_IssuerHandler, tls.server_context(), clock=clock)
        self.key = new_rsa_key()
        self.kid = "skyporten-1"

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)

    def token(self, key=None, lifetime: int = 120, **overrides) -> str:
        now = int(self.clock())
        claims = {"iss": self.base_url, "sub": SUBJECT, "aud": EXCHANGE_AUDIENCE}
        claims |= {"iat": now, "exp": now + lifetime}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(tls: TlsFiles, clock: Clock) -> Iterator[TinyIssuer]:
    server = TinyIssuer(tls, clock).start()
    yield server
    server.stop()


@pytest.fixture
def entra(tls: TlsFiles, clock: Clock, issuer: TinyIssuer) -> Iterator[EntraSim]:
    sim = EntraSim(tls.server_context(), clock=clock, ca_bundle=str(tls.ca_cert)).start()
    sim.add_tenant(TENANT)
    sim.add_resource(TENANT, STORAGE)
    sim.add_resource(TENANT, "https://storage.azure.com")
    credential = FederatedCredential(issuer.base_url, SUBJECT, EXCHANGE_AUDIENCE)
    sim.add_managed_identity(TENANT, CLIENT_ID, OBJECT_ID, [credential])
    yield sim
    sim.stop()


def exchange(entra: EntraSim, tls: TlsFiles, assertion: str, **form: str) -> requests.Response:
    data = {
        "client_id": CLIENT_ID,
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": assertion,
        "scope": f"{STORAGE}/.default",
    }
    data.update(form)
    tenant = data.pop("tenant", TENANT)
    url = f"{entra.authority}/{tenant}/oauth2/v2.0/token"
    return requests.post(url, data=data, verify=str(tls.ca_cert), timeout=10)


def aadsts(response: requests.Response) -> int:
    return response.json()["error_codes"][0]


def test_client_assertion_credential_gets_a_v1_storage_token(entra, issuer, tls):
    credential = ClientAssertionCredential(
        TENANT, CLIENT_ID, issuer.token, authority=entra.authority, connection_verify=str(tls.ca_cert)
    )
    token = credential.get_token(f"{STORAGE}/.default")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["iss"] == f"https://sts.windows.net/{TENANT}/"
    assert claims["aud"] == STORAGE
    assert (claims["tid"], claims["oid"], claims["sub"]) == (TENANT, OBJECT_ID, OBJECT_ID)
    assert claims["appid"] == CLIENT_ID
    assert (claims["appidacr"], claims["idtyp"], claims["ver"]) == ("2", "app", "1.0")
    assert claims["exp"] - claims["iat"] == 3599


def test_credential_serves_a_second_request_from_its_cache(entra, issuer, tls):
    credential = ClientAssertionCredential(
        TENANT, CLIENT_ID, issuer.token, authority=entra.authority, connection_verify=str(tls.ca_cert)
    )
    credential.get_token(f"{STORAGE}/.default")
    credential.get_token(f"{STORAGE}/.default")
    assert entra.token_requests == 1


def test_refusal_surfaces_as_client_authentication_error_with_the_aadsts_code(entra, issuer, tls):
    credential = ClientAssertionCredential(
        TENANT, OBJECT_ID, issuer.token, authority=entra.authority, connection_verify=str(tls.ca_cert)
    )
    with pytest.raises(ClientAuthenticationError) as caught:
        credential.get_token(f"{STORAGE}/.default")
    assert "AADSTS700016" in str(caught.value)


def test_success_body_has_entra_shape(entra, issuer, tls):
    body = exchange(entra, tls, issuer.token()).json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599


def test_error_body_has_entra_shape(entra, issuer, tls):
    response = exchange(entra, tls, issuer.token(), tenant=str(uuid.uuid4()))
    body = response.json()
    expected = {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"}
    expected.add("error_uri")
    assert set(body) == expected
    assert body["error_description"].startswith("AADSTS90002: Tenant ")
    ids = f"Trace ID: {body['trace_id']} Correlation ID: {body['correlation_id']}"
    assert ids in body["error_description"]
    assert response.status_code == 400


def test_unknown_tenant_is_aadsts90002(entra, issuer, tls):
    assert aadsts(exchange(entra, tls, issuer.token(), tenant=str(uuid.uuid4()))) == 90002


def test_object_id_as_client_id_is_aadsts700016_with_entra_text(entra, issuer, tls):
    response = exchange(entra, tls, issuer.token(), client_id=OBJECT_ID)
    assert response.status_code == 401
    assert aadsts(response) == 700016
    expected = f"Application with identifier '{OBJECT_ID}' was not found in the directory '{TENANT}'"
    assert expected in response.json()["error_description"]


def test_assertion_that_is_not_a_jwt_is_aadsts50027(entra, tls):
    assert aadsts(exchange(entra, tls, "not-a-jwt")) == 50027


def test_assertion_signed_with_another_key_is_aadsts700027(entra, issuer, tls):
    response = exchange(entra, tls, issuer.token(key=new_rsa_key()))
    assert (response.status_code, aadsts(response)) == (401, 700027)


def test_expired_assertion_is_aadsts700024(entra, issuer, tls, clock):
    assertion = issuer.token(lifetime=120)
    clock.now += 120
    response = exchange(entra, tls, assertion)
    assert aadsts(response) == 700024
    assert "Client assertion is not within its valid time range" in response.json()["error_description"]


def test_assertion_valid_until_its_last_second_is_accepted(entra, issuer, tls, clock):
    assertion = issuer.token(lifetime=120)
    clock.now += 119
    assert exchange(entra, tls, assertion).status_code == 200


def test_assertion_from_the_future_is_aadsts700024(entra, issuer, tls, clock):
    assertion = issuer.token(iat=int(clock.now) + 30, exp=int(clock.now) + 150)
    assert aadsts(exchange(entra, tls, assertion)) == 700024


@pytest.mark.parametrize(
    ("overrides", "code", "echoed"),
    [
        ({"iss": "https://test.sky.maskinporten.no/"}, 700211, "issuer 'https://test.sky.maskinporten.no/'"),
        ({"sub": "0192:123456789;banenor:payloadmanager.storage"}, 700213, "subject '0192:123456789;"),
        ({"aud": "https://bnplmextnwestlocal.blob.core.windows.net"}, 700212, "audience 'https://bnplm"),
        ({"sub": SUBJECT.upper()}, 700213, "subject '0192:987654321;BANENOR:PAYLOADMANAGER.STORAGE'"),
    ],
)
def test_federated_credential_mismatch_names_the_part_in_specific_style(
    entra, issuer, tls, overrides, code, echoed
):
    response = exchange(entra, tls, issuer.token(**overrides))
    assert (response.status_code, aadsts(response)) == (401, code)
    assert echoed in response.json()["error_description"]


def test_generic_mismatch_style_echoes_issuer_subject_and_audience(entra, issuer, tls):
    entra.options.mismatch_style = "generic"
    response = exchange(entra, tls, issuer.token(aud="api://wrong"))
    description = response.json()["error_description"]
    assert aadsts(response) == 70021
    assert (
        f"Assertion Issuer: '{issuer.base_url}'. Assertion Subject: '{SUBJECT}'. Assertion Audience: 'api://wrong'."
        in description
    )


def test_new_federated_credential_does_not_match_until_propagated(entra, issuer, tls, clock):
    entra.options.propagation_delay = 60
    other_client = str(uuid.uuid4())
    credential = FederatedCredential(issuer.base_url, SUBJECT, EXCHANGE_AUDIENCE)
    entra.add_managed_identity(TENANT, other_client, str(uuid.uuid4()), [credential])
    clock.now += 59
    assert aadsts(exchange(entra, tls, issuer.token(), client_id=other_client)) == 70021
    clock.now += 1
    assert exchange(entra, tls, issuer.token(), client_id=other_client).status_code == 200


@pytest.mark.parametrize(
    "scope", [STORAGE, f"{STORAGE}/user_impersonation", f"{STORAGE}/.default openid", ""]
)
def test_scope_without_a_single_default_is_aadsts70011(entra, issuer, tls, scope):
    assert aadsts(exchange(entra, tls, issuer.token(), scope=scope)) == 70011


def test_resource_unknown_in_the_tenant_is_aadsts500011(entra, issuer, tls):
    scope = "https://bnplmextnwesttest.blob.core.windows.net/.default"
    assert aadsts(exchange(entra, tls, issuer.token(), scope=scope)) == 500011


def test_conditional_access_block_is_aadsts53003(entra, issuer, tls):
    entra.options.conditional_access_block = True
    assert aadsts(exchange(entra, tls, issuer.token())) == 53003


def test_token_lifetime_option_sets_expires_in(entra, issuer, tls):
    entra.options.token_lifetime = 600
    assert exchange(entra, tls, issuer.token()).json()["expires_in"] == 600


def test_discovery_documents_are_served(entra, tls):
    url = f"{entra.authority}/{TENANT}/v2.0/.well-known/openid-configuration"
    config = requests.get(url, verify=str(tls.ca_cert), timeout=10).json()
    assert config["token_endpoint"] == f"{entra.authority}/{TENANT}/oauth2/v2.0/token"
    keys = requests.get(config["jwks_uri"], verify=str(tls.ca_cert), timeout=10).json()["keys"]
    common = requests.get(f"{entra.authority}/common/discovery/keys", verify=str(tls.ca_cert), timeout=10)
    assert keys == common.json()["keys"] and keys[0]["kty"] == "RSA"


def test_validate_token_accepts_its_own_token(entra, issuer, tls):
    token = exchange(entra, tls, issuer.token()).json()["access_token"]
    assert entra.validate_token(token, audience=STORAGE)["oid"] == OBJECT_ID


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ("expire", "expired"),
        ("audience", "audience"),
        ("foreign", "signed"),
        ("garbage", "not a JWT"),
    ],
)
def test_validate_token_refuses_with_a_reason(entra, issuer, tls, clock, mutate, reason):
    token = exchange(entra, tls, issuer.token()).json()["access_token"]
    audience = STORAGE
    if mutate == "expire":
        clock.now += 3599
    elif mutate == "audience":
        audience = "https://storage.azure.com"
    elif mutate == "foreign":
        token = issuer.token()
    elif mutate == "garbage":
        token = "garbage"
    with pytest.raises(ValueError, match=reason) as caught:
        entra.validate_token(token, audience=audience)
    assert token not in str(caught.value)


@pytest.fixture
def msi_env(entra: EntraSim, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> str:
    partner_tenant = str(uuid.uuid4())
    entra.add_tenant(partner_tenant)
    entra.add_resource(partner_tenant, "https://vault.azure.net")
    entra.add_msi_identity(partner_tenant, "partner-client", "partner-object")
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
                 "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", entra.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", entra.msi_secret)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_cert))
    return partner_tenant


def test_managed_identity_credential_gets_a_token_from_the_msi_endpoint(entra, msi_env):
    token = ManagedIdentityCredential().get_token("https://vault.azure.net/.default")
    claims = entra.validate_token(token.token, audience="https://vault.azure.net")
    assert (claims["oid"], claims["appid"], claims["tid"]) == ("partner-object", "partner-client", msi_env)
    assert entra.msi_requests == 1


def test_default_azure_credential_finds_the_msi_endpoint(entra, msi_env):
    credential = DefaultAzureCredential(
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_visual_studio_code_credential=True,
    )
    token = credential.get_token("https://vault.azure.net/.default")
    assert entra.validate_token(token.token)["appid"] == "partner-client"


def test_msi_endpoint_refuses_a_wrong_identity_header(entra, msi_env, tls):
    response = requests.get(
        entra.msi_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        headers={"X-IDENTITY-HEADER": "wrong"},
        verify=str(tls.ca_cert),
        timeout=10,
    )
    assert response.status_code == 401
    assert entra.tokens_issued == 0


def test_repr_shows_no_secret(entra):
    assert entra.msi_secret not in repr(entra)
