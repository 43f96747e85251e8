"""Issue 8 on the local stack: a Skyporten token with the key from each source, and each failure's own error.

Real clients throughout: azure-keyvault against the Key Vault stand-in (reached with the partner's managed
identity through the simulated MSI endpoint), requests against the Skyporten simulator.
"""

import pytest

import shared.skyporten_token as skyporten_token
from shared.errors import ConfigError, MaskinportenError, SigningKeyError
from shared.signing import provider_from_settings
from shared.skyporten_token import GrantRequest, SkyportenClient
from sim.pki import new_rsa_key, private_pem

pytestmark = pytest.mark.stack
SUBJECT = "0192:987654321;banenor:payloadmanager.storage"


def assert_good_token(rt):
    token = rt.skyporten.get_token()
    assert token.claims["sub"] == SUBJECT
    assert token.claims["iss"] == rt.settings.skyporten.issuer
    assert token.claims["consumer"] == {"authority": "iso6523-actorid-upis", "ID": "0192:987654321"}
    assert token.scope == "banenor:payloadmanager.storage"
    return token


def test_token_with_pem_secret_from_key_vault(make_runtime):
    assert_good_token(make_runtime())


def test_token_with_jwk_secret_from_key_vault(make_runtime):
    assert_good_token(make_runtime(SIGNING_KEY_NAME="maskinporten-jwk"))


def test_token_with_enterprise_certificate_sends_x5c(make_runtime):
    rt = make_runtime(SIGNING_KEY_SOURCE="keyvault-certificate", SIGNING_KEY_NAME="maskinporten-cert",
                      MASKINPORTEN_KEY_ID=None)
    key = rt.signing_keys.get()
    header = key.header()
    assert isinstance(header["x5c"], list) and "kid" not in header
    token = assert_good_token(rt)
    assert token.claims["client_amr"] == "virksomhetssertifikat"


def test_token_with_key_vault_key_signing_in_the_vault(make_runtime, stack):
    rt = make_runtime(SIGNING_KEY_SOURCE="keyvault-key", SIGNING_KEY_NAME="maskinporten-signing",
                      MASKINPORTEN_KEY_ID=stack.settings["STACK_KEYVAULT_KEY_ID"])
    before = stack.keyvault.requests["keys.sign"]
    assert_good_token(rt)
    assert stack.keyvault.requests["keys.sign"] == before + 1


def test_token_with_key_file(make_runtime):
    assert_good_token(make_runtime(SIGNING_KEY_SOURCE="file"))


def test_second_request_is_served_from_cache(make_runtime, stack):
    rt = make_runtime()
    rt.skyporten.get_token()
    before = stack.skyporten.token_requests
    rt.skyporten.get_token()
    assert stack.skyporten.token_requests == before


def test_wrong_kid_gives_signature_error(make_runtime, stack):
    # The PEM key presented under the kid of the other registered key: Skyporten checks the signature.
    rt = make_runtime(MASKINPORTEN_KEY_ID=stack.settings["STACK_KEYVAULT_KEY_ID"])
    with pytest.raises(MaskinportenError) as info:
        rt.skyporten.get_token()
    assert info.value.code == "MP-124"
    assert "MASKINPORTEN_KEY_ID" in info.value.hint


def test_key_not_registered_gives_client_error(make_runtime, tmp_path):
    path = tmp_path / "new.pem"
    path.write_bytes(private_pem(new_rsa_key()))
    rt = make_runtime(SIGNING_KEY_SOURCE="file", SIGNING_KEY_FILE=str(path), MASKINPORTEN_KEY_ID="never-registered")
    with pytest.raises(MaskinportenError) as info:
        rt.skyporten.get_token()
    assert info.value.code == "MP-100"


def test_grant_lifetime_over_120_seconds_is_refused(make_runtime, monkeypatch):
    monkeypatch.setattr(skyporten_token, "GRANT_LIFETIME", 121)
    rt = make_runtime()
    with pytest.raises(MaskinportenError) as info:
        rt.skyporten.get_token()
    assert info.value.code == "MP-130"


def test_replayed_jti_is_refused(make_runtime, monkeypatch):
    class FixedUuid:
        @staticmethod
        def uuid4():
            return "same-jti-every-time"

    monkeypatch.setattr(skyporten_token, "uuid", FixedUuid)
    rt = make_runtime()
    rt.skyporten.get_token()
    with pytest.raises(MaskinportenError) as info:
        rt.skyporten.get_token(force=True)
    assert info.value.code == "MP-012"


def test_issuer_with_trailing_slash_is_refused_by_settings(make_runtime, stack):
    with pytest.raises(ConfigError, match="MP-110"):
        make_runtime(MASKINPORTEN_ISSUER=stack.settings["MASKINPORTEN_ISSUER"] + "/")


def test_issuer_with_trailing_slash_is_refused_by_skyporten(make_runtime, stack):
    rt = make_runtime()
    s = rt.settings
    client = SkyportenClient(GrantRequest(s.skyporten.issuer + "/", s.skyporten.client_id,
                                             s.skyporten.scope), s.skyporten.token_endpoint, rt.signing_keys,
                                verify=s.http.ca_bundle)
    with pytest.raises(MaskinportenError) as info:
        client.get_token()
    assert info.value.code == "MP-110"
    assert "trailing slash" in info.value.hint


def test_scope_not_on_the_client_is_refused(make_runtime):
    rt = make_runtime(MASKINPORTEN_SCOPE="banenor:other.scope")
    with pytest.raises(MaskinportenError) as info:
        rt.skyporten.get_token()
    assert info.value.code == "MP-200"


def test_organisation_not_granted_the_scope_is_refused(make_runtime, stack):
    stack.skyporten.options.granted_orgs = {"banenor:payloadmanager.storage": set()}
    try:
        rt = make_runtime()
        with pytest.raises(MaskinportenError) as info:
            rt.skyporten.get_token()
    finally:
        stack.skyporten.options.granted_orgs = None
    assert info.value.code == "MP-250"
    assert "ask Bane NOR" in info.value.hint


def test_vault_access_denied_names_the_role_to_grant(make_runtime, stack):
    oid = stack.partner_object_id
    roles = ("Key Vault Secrets User", "Key Vault Certificate User")  # both include secrets/getSecret
    for role in roles:
        stack.keyvault.revoke(oid, role)
    try:
        rt = make_runtime()
        with pytest.raises(SigningKeyError, match="Access denied") as info:
            rt.signing_keys.get()
    finally:
        for role in roles:
            stack.keyvault.grant(oid, role)
    assert "Key Vault Secrets User" in info.value.hint


def test_key_not_found_in_the_vault(make_runtime):
    rt = make_runtime(SIGNING_KEY_NAME="no-such-key")
    with pytest.raises(SigningKeyError, match="no secret named 'no-such-key'") as info:
        rt.signing_keys.get()
    assert "SIGNING_KEY_NAME" in info.value.hint


def test_key_too_short_in_the_vault(make_runtime, stack):
    stack.keyvault.set_secret("short-key", private_pem(new_rsa_key(1024)).decode())
    rt = make_runtime(SIGNING_KEY_NAME="short-key")
    with pytest.raises(SigningKeyError, match="1024 bits"):
        rt.signing_keys.get()


def test_rotated_secret_is_picked_up_after_the_cache_lifetime(make_runtime, stack):
    clock = [1000.0]
    rt = make_runtime(SIGNING_KEY_CACHE_SECONDS="60")

    provider = provider_from_settings(rt.settings.signing_key, rt.settings.http.ca_bundle, rt.partner_credential,
                                      clock=lambda: clock[0])
    first = provider.get().info.version
    stack.keyvault.set_secret("maskinporten-key", private_pem(new_rsa_key()).decode())
    try:
        clock[0] += 59
        assert provider.get().info.version == first
        clock[0] += 1
        assert provider.get().info.version != first
    finally:
        stack.keyvault.set_secret("maskinporten-key", open(stack.settings["SIGNING_KEY_FILE"]).read())


def test_a_second_call_for_the_storage_token_is_served_from_azure_identitys_cache(make_runtime, stack):
    rt = make_runtime()
    scope = rt.settings.banenor.storage_audience + "/.default"
    first = rt.banenor_credential.get_token(scope).token
    before = stack.entra.tokens_issued  # counted after the first call: it also fetched the Key Vault token
    assert rt.banenor_credential.get_token(scope).token == first
    assert stack.entra.tokens_issued == before
