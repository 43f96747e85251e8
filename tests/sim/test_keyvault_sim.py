"""The Key Vault stand-in serves the real azure-keyvault SDK clients: challenge, RBAC, secrets, keys, certs.

Every SDK call goes over HTTPS to the simulator; the bearer tokens come from `TestIdentity`, which stands
in for the partner's managed identity (another component of the stack provides the real one).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import jwt
import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.secrets import SecretClient
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.serialization import pkcs12

from sim.keyvault import KeyVaultSim
from sim.pki import issue_certificate, make_tls, new_rsa_key

TENANT = "6ee535f2-3064-4ac9-81d8-4ceb2ff790c6"
AUTHORITY = "https://login.microsoftonline.com"
OID = "3f1b8a52-6d0e-4b5e-9a0c-1d2e3f4a5b6c"
CHALLENGE = f'Bearer authorization="{AUTHORITY}/{TENANT}", resource="https://vault.azure.net"'


class TestIdentity:
    """Stands in for the partner's managed identity: signs vault tokens with a test key."""

    __test__ = False

    def __init__(self, key, oid: str = OID, audience: str = "https://vault.azure.net") -> None:
        self._key = key
        self.oid = oid
        self.audience = audience
        self.scopes: list[tuple[str, ...]] = []

    def __repr__(self) -> str:
        return f"TestIdentity(oid={self.oid!r})"

    def token(self) -> str:
        now = int(time.time())
        claims = {
            "aud": self.audience, "iss": f"https://sts.windows.net/{TENANT}/", "tid": TENANT, "oid": self.oid,
            "appid": "partner-mi", "iat": now, "nbf": now, "exp": now + 3600,
        }
        return jwt.encode(claims, self._key, algorithm="RS256")

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token(), int(time.time()) + 3600)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def idp_key():
    return new_rsa_key()


@pytest.fixture(scope="module")
def stored_key():
    return new_rsa_key()


@pytest.fixture
def vault(tls, idp_key):
    public = idp_key.public_key()

    def validate(token: str) -> dict:
        try:
            return jwt.decode(token, public, algorithms=["RS256"], options={"verify_aud": False})
        except jwt.PyJWTError as exc:
            raise ValueError(type(exc).__name__) from None

    sim = KeyVaultSim(tls.server_context(), validate, TENANT, AUTHORITY).start()
    yield sim
    sim.stop()


@pytest.fixture
def identity(idp_key):
    return TestIdentity(idp_key)


def kv_options(tls) -> dict:
    return {"verify_challenge_resource": False, "connection_verify": str(tls.ca_cert)}


@pytest.fixture
def secrets(vault, identity, tls):
    vault.grant(OID, "Key Vault Secrets User")
    with SecretClient(vault.vault_url, identity, **kv_options(tls)) as client:
        yield client


def raw_get(vault, tls, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{vault.vault_url}{path}?api-version=7.5", headers=headers, verify=str(tls.ca_cert),
                        timeout=10)


# -- challenge and authentication --------------------------------------------------------------------


def test_request_without_bearer_gets_the_challenge(vault, tls):
    response = raw_get(vault, tls, "/secrets/anything")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_request_with_a_forged_token_is_unauthorized(vault, tls):
    forged = TestIdentity(new_rsa_key()).token()
    response = raw_get(vault, tls, "/secrets/anything", forged)
    assert response.status_code == 401 and response.json()["error"]["code"] == "Unauthorized"


def test_token_for_another_audience_is_unauthorized(vault, tls, idp_key):
    token = TestIdentity(idp_key, audience="https://storage.azure.com").token()
    response = raw_get(vault, tls, "/secrets/anything", token)
    assert response.status_code == 401 and "Invalid audience" in response.json()["error"]["message"]


def test_sdk_asks_its_credential_for_the_vault_scope(vault, secrets, identity):
    vault.set_secret("partner-key", "v")
    secrets.get_secret("partner-key")
    assert identity.scopes == [("https://vault.azure.net/.default",)]


# -- secrets ----------------------------------------------------------------------------------------------


def test_secret_client_gets_the_current_secret_with_its_attributes(vault, secrets):
    version = vault.set_secret("partner-key", "pem-text", content_type="application/x-pem-file",
                               created=1_700_000_000, expires=1_800_000_000, not_before=1_700_000_000)
    secret = secrets.get_secret("partner-key")
    assert secret.value == "pem-text"
    assert secret.properties.version == version
    assert secret.properties.content_type == "application/x-pem-file"
    assert secret.properties.enabled is True
    assert int(secret.properties.created_on.timestamp()) == 1_700_000_000
    assert int(secret.properties.expires_on.timestamp()) == 1_800_000_000
    assert secret.id == f"{vault.vault_url}/secrets/partner-key/{version}"
    assert vault.requests["secrets.get"] == 2  # the challenged request and the authorized one


def test_rotation_makes_the_new_version_current(vault, secrets):
    old = vault.set_secret("partner-key", "old")
    new = vault.set_secret("partner-key", "new")
    assert secrets.get_secret("partner-key").properties.version == new
    assert secrets.get_secret("partner-key").value == "new"
    assert secrets.get_secret("partner-key", old).value == "old"


def test_missing_secret_is_not_found_with_key_vaults_error_shape(vault, secrets, tls, identity):
    with pytest.raises(ResourceNotFoundError) as caught:
        secrets.get_secret("absent")
    body = raw_get(vault, tls, "/secrets/absent", identity.token()).json()
    assert caught.value.error.code == "SecretNotFound"
    assert body["error"]["message"].startswith("A secret with (name/id) absent was not found in this key vault.")


def test_missing_version_is_not_found(vault, secrets):
    vault.set_secret("partner-key", "v")
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret("partner-key", uuid.uuid4().hex)


def test_secret_without_role_is_forbidden_by_rbac(vault, identity, tls):
    vault.set_secret("partner-key", "v")
    with SecretClient(vault.vault_url, identity, **kv_options(tls)) as client:
        with pytest.raises(HttpResponseError) as caught:
            client.get_secret("partner-key")
    error = raw_get(vault, tls, "/secrets/partner-key", identity.token()).json()["error"]
    assert caught.value.status_code == 403
    assert error["code"] == "Forbidden" and error["innererror"] == {"code": "ForbiddenByRbac"}
    assert f"oid={OID}" in error["message"]
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" in error["message"]


def test_crypto_user_role_does_not_read_secrets(vault, identity, tls):
    vault.grant(OID, "Key Vault Crypto User")
    vault.set_secret("partner-key", "v")
    with SecretClient(vault.vault_url, identity, **kv_options(tls)) as client:
        with pytest.raises(HttpResponseError) as caught:
            client.get_secret("partner-key")
    assert caught.value.status_code == 403


def test_disabled_secret_is_forbidden(vault, secrets):
    vault.set_secret("partner-key", "v", enabled=False)
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("partner-key")
    assert caught.value.status_code == 403


# -- keys -------------------------------------------------------------------------------------------------


@pytest.fixture
def crypto_user(vault):
    vault.grant(OID, "Key Vault Crypto User")


def test_key_client_gets_the_public_rsa_key(vault, identity, tls, stored_key, crypto_user):
    version = vault.set_key("maskinporten-key", stored_key)
    with KeyClient(vault.vault_url, identity, **kv_options(tls)) as client:
        key = client.get_key("maskinporten-key")
    numbers = stored_key.public_key().public_numbers()
    assert key.id == f"{vault.vault_url}/keys/maskinporten-key/{version}"
    assert key.key_type == "RSA"
    assert int.from_bytes(key.key.n, "big") == numbers.n and int.from_bytes(key.key.e, "big") == numbers.e


def test_key_rotation_makes_the_new_version_current(vault, identity, tls, stored_key, crypto_user):
    vault.set_key("maskinporten-key", new_rsa_key())
    new = vault.set_key("maskinporten-key", stored_key)
    with KeyClient(vault.vault_url, identity, **kv_options(tls)) as client:
        assert client.get_key("maskinporten-key").properties.version == new


SIGNATURES = [
    (SignatureAlgorithm.rs256, hashes.SHA256(), padding.PKCS1v15()),
    (SignatureAlgorithm.rs384, hashes.SHA384(), padding.PKCS1v15()),
    (SignatureAlgorithm.rs512, hashes.SHA512(), padding.PKCS1v15()),
    (SignatureAlgorithm.ps256, hashes.SHA256(), padding.PSS(padding.MGF1(hashes.SHA256()), 32)),
]


@pytest.mark.parametrize(("alg", "hash_alg", "pad"), SIGNATURES, ids=[s[0].value for s in SIGNATURES])
def test_cryptography_client_signs_a_digest_that_verifies(vault, identity, tls, stored_key, crypto_user,
                                                          alg, hash_alg, pad):
    version = vault.set_key("maskinporten-key", stored_key)
    digest = hashlib.new(hash_alg.name, b"header.payload").digest()
    key_id = f"{vault.vault_url}/keys/maskinporten-key/{version}"
    with CryptographyClient(key_id, identity, **kv_options(tls)) as client:
        result = client.sign(alg, digest)
    stored_key.public_key().verify(result.signature, digest, pad, utils.Prehashed(hash_alg))
    assert result.key_id == key_id
    assert vault.requests["keys.sign"] >= 1


def test_sign_without_crypto_role_is_forbidden(vault, identity, tls, stored_key):
    version = vault.set_key("maskinporten-key", stored_key)
    key_id = f"{vault.vault_url}/keys/maskinporten-key/{version}"
    with CryptographyClient(key_id, identity, **kv_options(tls)) as client:
        with pytest.raises(HttpResponseError) as caught:
            client.sign(SignatureAlgorithm.rs256, hashlib.sha256(b"x").digest())
    assert caught.value.status_code == 403


def test_sign_with_an_expired_key_is_refused(vault, identity, tls, stored_key, crypto_user):
    version = vault.set_key("maskinporten-key", stored_key, expires=time.time() - 1)
    key_id = f"{vault.vault_url}/keys/maskinporten-key/{version}"
    with CryptographyClient(key_id, identity, **kv_options(tls)) as client:
        with pytest.raises(HttpResponseError):
            client.sign(SignatureAlgorithm.rs256, hashlib.sha256(b"x").digest())


def test_signature_from_another_key_does_not_verify(vault, identity, tls, stored_key, crypto_user):
    version = vault.set_key("maskinporten-key", new_rsa_key())
    digest = hashlib.sha256(b"x").digest()
    key_id = f"{vault.vault_url}/keys/maskinporten-key/{version}"
    with CryptographyClient(key_id, identity, **kv_options(tls)) as client:
        signature = client.sign(SignatureAlgorithm.rs256, digest).signature
    with pytest.raises(InvalidSignature):
        stored_key.public_key().verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_missing_key_is_not_found(vault, identity, tls, crypto_user):
    with KeyClient(vault.vault_url, identity, **kv_options(tls)) as client:
        with pytest.raises(ResourceNotFoundError) as caught:
            client.get_key("absent")
    assert caught.value.error.code == "KeyNotFound"


# -- certificates -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(stored_key):
    ca_key = new_rsa_key()
    ca = issue_certificate(ca_key, "Test Buypass CA", is_ca=True)
    leaf = issue_certificate(stored_key, "Partner AS", ca_key, ca, org="Partner AS")
    return [leaf, ca]


def test_certificate_client_gets_the_leaf_certificate(vault, identity, tls, stored_key, chain):
    vault.grant(OID, "Key Vault Certificate User")
    version = vault.set_certificate("partner-cert", stored_key, chain)
    with CertificateClient(vault.vault_url, identity, **kv_options(tls)) as client:
        cert = client.get_certificate("partner-cert")
    assert cert.cer == chain[0].public_bytes(serialization.Encoding.DER)
    assert cert.properties.version == version
    assert cert.key_id == f"{vault.vault_url}/keys/partner-cert/{version}"
    assert cert.secret_id == f"{vault.vault_url}/secrets/partner-cert/{version}"
    assert cert.properties.x509_thumbprint == hashlib.sha1(cert.cer).digest()


def test_certificate_also_creates_its_pfx_secret_with_key_and_chain(vault, secrets, stored_key, chain):
    vault.set_certificate("partner-cert", stored_key, chain)
    secret = secrets.get_secret("partner-cert")
    key, leaf, extra = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    assert secret.properties.content_type == "application/x-pkcs12"
    assert key.private_numbers() == stored_key.private_numbers()
    assert leaf == chain[0] and extra == [chain[1]]


def test_certificate_without_role_is_forbidden(vault, identity, tls, stored_key, chain):
    vault.set_certificate("partner-cert", stored_key, chain)
    with CertificateClient(vault.vault_url, identity, **kv_options(tls)) as client:
        with pytest.raises(HttpResponseError) as caught:
            client.get_certificate("partner-cert")
    assert caught.value.status_code == 403


def test_missing_certificate_is_not_found(vault, identity, tls):
    vault.grant(OID, "Key Vault Certificate User")
    with CertificateClient(vault.vault_url, identity, **kv_options(tls)) as client:
        with pytest.raises(ResourceNotFoundError) as caught:
            client.get_certificate("absent")
    assert caught.value.error.code == "CertificateNotFound"


def test_simulator_repr_shows_no_secret_values(vault):
    vault.set_secret("partner-key", "very-secret-value")
    assert "very-secret-value" not in repr(vault)
