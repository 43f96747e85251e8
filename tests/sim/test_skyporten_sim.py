"""The Skyporten simulator validates grants as Maskinporten does (PROTOCOL.md section 1) and issues tokens.

Grants are signed with PyJWT and sent over real HTTPS with requests; time comes from an injected clock.
Also covers sim/jwks.py (JWK conversion, discovery and the refetch on an unknown kid).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from sim.jwks import JwksCache, jwk_to_public_key, public_jwk
from sim.pki import issue_certificate, make_tls, new_rsa_key
from sim.skyporten import RegisteredClient, SkyportenOptions, SkyportenSim

SCOPE = "banenor:payloadmanager.storage"
ORGNO = "991825827"
CLIENT_ID = "partner-client-1"
KID = "partner-key-1"
AUDIENCE = "https://bnplmextnwesttest.blob.core.windows.net"
NOW = 1_760_000_000.0
CERT_FROM = dt.datetime.fromtimestamp(NOW - 86400, dt.UTC)
CERT_UNTIL = CERT_FROM + dt.timedelta(days=365)
TRACE = re.compile(r" Trace ID: [0-9a-f-]{36}$")


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def keys():
    return {"partner": new_rsa_key(), "other": new_rsa_key(), "ca": new_rsa_key(), "rogue_ca": new_rsa_key()}


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def sim(tls, keys, clock):
    server = SkyportenSim(tls.server_context(), clock=clock, options=SkyportenOptions({SCOPE: AUDIENCE}))
    ca_cert = issue_certificate(
        keys["ca"], "Test Buypass CA", is_ca=True, not_before=CERT_FROM, not_after=CERT_UNTIL
    )
    server.register(
        RegisteredClient(
            CLIENT_ID,
            ORGNO,
            {SCOPE, "other:scope"},
            keys={KID: public_jwk(keys["partner"].public_key(), KID), "old-key": keys["other"].public_key()},
            key_expiry={"old-key": NOW - 1},
            trusted_cas=[ca_cert],
        )
    )
    server.test_ca_cert = ca_cert
    server.start()
    yield server
    server.stop()


@pytest.fixture
def http(tls):
    with requests.Session() as session:
        session.verify = str(tls.ca_cert)
        session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides session.verify
        yield session


def claims_for(sim: SkyportenSim, **changes: Any) -> dict[str, Any]:
    claims = {
        "aud": sim.issuer,
        "iss": CLIENT_ID,
        "scope": SCOPE,
        "iat": int(NOW),
        "exp": int(NOW) + 100,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def grant(sim, key, headers: dict[str, Any] | None = None, alg: str = "RS256", **changes: Any) -> str:
    return jwt.encode(claims_for(sim, **changes), key, algorithm=alg, headers=headers or {"kid": KID})


def post_grant(http, sim, assertion: str) -> requests.Response:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    return http.post(sim.token_endpoint, data=form, timeout=10)


def refused_with(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["error_description"]


def x5c_of(*certs) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


# -- metadata and keys -------------------------------------------------------------------------------


def test_metadata_names_the_issuer_without_trailing_slash_and_its_endpoints(sim, http):
    meta = http.get(f"{sim.issuer}/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == sim.issuer and not sim.issuer.endswith("/")
    assert meta["token_endpoint"] == f"{sim.issuer}/token"
    assert meta["jwks_uri"] == f"{sim.issuer}/jwk"
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert meta["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "RS384", "RS512"]


def test_jwk_round_trips_an_rsa_public_key(keys):
    public = keys["partner"].public_key()
    jwk = public_jwk(public, "k1")
    assert jwk["kty"] == "RSA" and jwk["kid"] == "k1" and jwk["e"] == "AQAB"
    assert jwk_to_public_key(jwk).public_numbers() == public.public_numbers()


def test_jwks_cache_discovers_the_jwks_uri_and_verifies_an_issued_token(sim, http, keys, tls):
    token = post_grant(http, sim, grant(sim, keys["partner"])).json()["access_token"]
    cache = JwksCache(verify=str(tls.ca_cert), clock=FakeClock())
    uri = cache.discover_jwks_uri(sim.issuer)
    key = cache.get_key(uri, jwt.get_unverified_header(token)["kid"])
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, options={"verify_exp": False})
    assert uri == sim.jwks_uri and claims["iss"] == sim.issuer


def test_jwks_cache_refetches_once_when_the_signing_key_rotates(sim, tls):
    clock = FakeClock()
    cache = JwksCache(verify=str(tls.ca_cert), ttl=300, clock=clock)
    cache.get_key(sim.jwks_uri, sim.signing_kid)
    new_kid = sim.rotate_signing_key()
    cache.get_key(sim.jwks_uri, new_kid)
    cache.get_key(sim.jwks_uri, new_kid)
    assert cache.fetches == 2


def test_jwks_cache_refetches_after_its_ttl(sim, tls):
    clock = FakeClock()
    cache = JwksCache(verify=str(tls.ca_cert), ttl=300, clock=clock)
    cache.get_key(sim.jwks_uri, sim.signing_kid)
    clock.now += 299
    cache.get_key(sim.jwks_uri, sim.signing_kid)
    clock.now += 1
    cache.get_key(sim.jwks_uri, sim.signing_kid)
    assert cache.fetches == 2


def test_jwks_cache_raises_key_error_for_a_kid_it_never_finds(sim, tls):
    cache = JwksCache(verify=str(tls.ca_cert), clock=FakeClock())
    with pytest.raises(KeyError):
        cache.get_key(sim.jwks_uri, "no-such-kid")


# -- issuing --------------------------------------------------------------------------------------------


def test_valid_grant_gets_a_token_with_skyporten_claims(sim, http, keys):
    response = post_grant(http, sim, grant(sim, keys["partner"]))
    body = response.json()
    token = body["access_token"]
    signing_key = next(jwk_to_public_key(k) for k in sim.jwks()["keys"] if k["kid"] == sim.signing_kid)
    claims = jwt.decode(
        token, signing_key, algorithms=["RS256"], audience=AUDIENCE, options={"verify_exp": False, "verify_iat": False}
    )
    assert response.status_code == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 120 and body["scope"] == SCOPE
    assert jwt.get_unverified_header(token)["kid"] == sim.signing_kid
    assert claims["iss"] == sim.issuer
    assert claims["sub"] == f"0192:{ORGNO};{SCOPE}"
    assert claims["aud"] == AUDIENCE
    assert claims["scope"] == SCOPE and claims["client_id"] == CLIENT_ID
    assert claims["client_amr"] == "private_key_jwt"
    assert claims["consumer"] == {"authority": "iso6523-actorid-upis", "ID": f"0192:{ORGNO}"}
    assert claims["iat"] == int(NOW) and claims["exp"] == int(NOW) + 120
    assert uuid.UUID(claims["jti"])
    assert sim.tokens_issued == 1 and sim.issued_claims == [claims]


def test_token_lifetime_follows_the_option(sim, http, keys):
    sim.options.token_lifetime = 60
    body = post_grant(http, sim, grant(sim, keys["partner"])).json()
    assert body["expires_in"] == 60 and sim.issued_claims[0]["exp"] == int(NOW) + 60


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
def test_grant_signed_with_rs384_or_rs512_is_accepted(sim, http, keys, alg):
    assert post_grant(http, sim, grant(sim, keys["partner"], alg=alg)).status_code == 200


def test_refused_requests_are_counted_but_issue_nothing(sim, http, keys):
    post_grant(http, sim, grant(sim, keys["other"]))
    assert sim.token_requests == 1 and sim.tokens_issued == 0 and sim.issued_claims == []


# -- refusals --------------------------------------------------------------------------------------------

REFUSALS = [
    ("unknown client id", dict(iss="nobody"), None, (401, "invalid_client", "MP-100")),
    ("kid not on the client", {}, {"kid": "unknown-kid"}, (401, "invalid_client", "MP-100")),
    ("expired key", {}, {"kid": "old-key"}, (400, "invalid_grant", "MP-121")),
    ("aud with trailing slash", dict(aud="SLASH"), None, (400, "invalid_grant", "MP-110")),
    ("aud of another issuer", dict(aud="https://sky.maskinporten.no"), None, (400, "invalid_grant", "MP-110")),
    ("missing iat", dict(iat=None), None, (400, "invalid_grant", "MP-130")),
    ("missing exp", dict(exp=None), None, (400, "invalid_grant", "MP-130")),
    ("expired grant", dict(iat=int(NOW) - 100, exp=int(NOW)), None, (400, "invalid_grant", "MP-130")),
    ("lifetime over 120 s", dict(exp=int(NOW) + 121), None, (400, "invalid_grant", "MP-130")),
    ("missing jti", dict(jti=None), None, (400, "invalid_grant", "MP-012")),
    ("scope not on the client", dict(scope="unknown:scope"), None, (400, "invalid_scope", "MP-200")),
    ("missing scope", dict(scope=None), None, (400, "invalid_scope", "MP-200")),
    ("several scopes", dict(scope=f"{SCOPE} other:scope"), None, (400, "invalid_scope", "MP-201")),
    ("x5c as a string", {}, {"x5c": "MIIB"}, (400, "invalid_grant", "MP-123")),
]


@pytest.mark.parametrize(("changes", "headers", "expected"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_invalid_grant_is_refused_with_its_mp_code(sim, http, keys, changes, headers, expected):
    if changes.get("aud") == "SLASH":
        changes = dict(changes, aud=sim.issuer + "/")
    key = keys["other"] if headers == {"kid": "old-key"} else keys["partner"]
    status, error, description = refused_with(post_grant(http, sim, grant(sim, key, headers, **changes)))
    assert (status, error) == expected[:2]
    assert f"({expected[2]})" in description


def test_error_description_carries_the_mp_code_and_a_trace_id(sim, http, keys):
    response = post_grant(http, sim, grant(sim, keys["partner"], aud=sim.issuer + "/"))
    description = response.json()["error_description"]
    assert description.startswith("Invalid JWT claim aud (MP-110)")
    assert TRACE.search(description)


def test_signature_from_the_wrong_key_is_refused_with_mp_124(sim, http, keys):
    status, error, description = refused_with(post_grant(http, sim, grant(sim, keys["other"])))
    assert (status, error) == (400, "invalid_grant") and "(MP-124)" in description


def test_grant_lifetime_over_the_limit_has_its_own_text(sim, http, keys):
    response = post_grant(http, sim, grant(sim, keys["partner"], exp=int(NOW) + 121))
    assert "exceeds 120 seconds" in response.json()["error_description"]


def test_unknown_claim_is_refused_by_name(sim, http, keys):
    status, error, description = refused_with(post_grant(http, sim, grant(sim, keys["partner"], sub="x")))
    assert (status, error) == (400, "invalid_grant") and description.startswith("Unknown claim sub")


def test_organisation_not_granted_the_scope_is_refused_with_mp_250(sim, http, keys):
    sim.options.granted_orgs = {SCOPE: {"123456789"}}
    status, error, description = refused_with(post_grant(http, sim, grant(sim, keys["partner"])))
    assert (status, error) == (400, "invalid_scope") and "(MP-250)" in description


def test_organisation_granted_the_scope_gets_a_token(sim, http, keys):
    sim.options.granted_orgs = {SCOPE: {ORGNO}}
    assert post_grant(http, sim, grant(sim, keys["partner"])).status_code == 200


@pytest.mark.parametrize(
    ("form", "expected_error"),
    [
        ({"grant_type": "client_credentials", "assertion": "x"}, "unsupported_grant_type"),
        ({"assertion": "x"}, "invalid_request"),
        ({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}, "invalid_request"),
        ({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "not-a-jws"}, "invalid_grant"),
    ],
    ids=["wrong grant type", "missing grant type", "missing assertion", "assertion not a jws"],
)
def test_malformed_token_request_is_refused(sim, http, form, expected_error):
    response = http.post(sim.token_endpoint, data=form, timeout=10)
    assert (response.status_code, response.json()["error"]) == (400, expected_error)


def test_json_body_instead_of_form_is_refused_as_invalid_request(sim, http, keys):
    body = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": grant(sim, keys["partner"])}
    response = http.post(sim.token_endpoint, json=body, timeout=10)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_grant_with_a_symmetric_algorithm_is_refused(sim, http):
    assertion = jwt.encode(claims_for(sim), "a-shared-secret-of-32-bytes-long!", algorithm="HS256")
    status, error, _ = refused_with(post_grant(http, sim, assertion))
    assert (status, error) == (400, "invalid_grant")


def test_replayed_jti_is_refused_with_mp_012(sim, http, keys):
    assertion = grant(sim, keys["partner"])
    assert post_grant(http, sim, assertion).status_code == 200
    status, _, description = refused_with(post_grant(http, sim, assertion))
    assert status == 400 and description.startswith("Grant is used before (MP-012)")


def test_grant_lifetime_of_exactly_120_seconds_is_accepted(sim, http, keys):
    assert post_grant(http, sim, grant(sim, keys["partner"], exp=int(NOW) + 120)).status_code == 200


@pytest.mark.parametrize(("iat_offset", "status"), [(10, 200), (11, 400)], ids=["+10 s ok", "+11 s refused"])
def test_iat_in_the_future_is_accepted_up_to_the_skew_limit(sim, http, keys, iat_offset, status):
    iat = int(NOW) + iat_offset
    response = post_grant(http, sim, grant(sim, keys["partner"], iat=iat, exp=iat + 60))
    assert response.status_code == status
    if status == 400:
        assert "JWT expired or issued in the future (MP-130)" in response.json()["error_description"]


def test_grant_accepted_now_is_refused_once_the_clock_passes_its_exp(sim, http, keys, clock):
    clock.now = NOW + 100
    response = post_grant(http, sim, grant(sim, keys["partner"]))
    assert "(MP-130)" in response.json()["error_description"]


# -- audience and resource -----------------------------------------------------------------------------


def test_audience_bound_to_the_scope_ignores_the_grants_resource(sim, http, keys):
    post_grant(http, sim, grant(sim, keys["partner"], resource="https://elsewhere.example"))
    assert sim.issued_claims[0]["aud"] == AUDIENCE


def test_audience_mode_resource_takes_the_grants_resource(sim, http, keys):
    sim.options.audience_mode = "resource"
    post_grant(http, sim, grant(sim, keys["partner"], resource="https://partner-resource.example"))
    assert sim.issued_claims[0]["aud"] == "https://partner-resource.example"


def test_audience_mode_resource_without_a_resource_issues_an_unspecified_audience(sim, http, keys):
    # As Maskinporten does: no audience restriction asked for, aud "unspecified" (Entra will not match it).
    sim.options.audience_mode = "resource"
    assert post_grant(http, sim, grant(sim, keys["partner"])).status_code == 200
    assert sim.issued_claims[0]["aud"] == "unspecified"


RESOURCE_FORMS = [
    ("string", "https://r.example", 200),
    ("string", ["https://r.example"], 400),
    ("array", "https://r.example", 400),
    ("array", ["https://r.example"], 200),
    ("both", "https://r.example", 200),
    ("both", ["https://r.example"], 200),
    ("both", ["https://r.example", "https://s.example"], 400),
    ("both", 42, 400),
]


@pytest.mark.parametrize(("form", "resource", "status"), RESOURCE_FORMS)
def test_resource_is_accepted_only_in_the_configured_form(sim, http, keys, form, resource, status):
    sim.options.resource_form = form
    sim.options.audience_mode = "resource"
    response = post_grant(http, sim, grant(sim, keys["partner"], resource=resource))
    assert response.status_code == status
    if status == 200:
        assert sim.issued_claims[0]["aud"] == "https://r.example"
    else:
        assert response.json()["error_description"].startswith("Invalid resource")


# -- x5c (enterprise certificate) -----------------------------------------------------------------------


def leaf_cert(keys, issuer_key, issuer_cert, **kw):
    kw.setdefault("not_before", CERT_FROM)
    kw.setdefault("not_after", CERT_UNTIL)
    return issue_certificate(keys["partner"], "Partner AS", issuer_key, issuer_cert, org="Partner AS", **kw)


def test_x5c_chained_to_a_trusted_ca_is_accepted_as_virksomhetssertifikat(sim, http, keys):
    chain = x5c_of(leaf_cert(keys, keys["ca"], sim.test_ca_cert), sim.test_ca_cert)
    response = post_grant(http, sim, grant(sim, keys["partner"], {"x5c": chain}))
    assert response.status_code == 200
    assert sim.issued_claims[0]["client_amr"] == "virksomhetssertifikat"


def test_x5c_with_only_the_leaf_is_accepted_when_its_issuer_is_trusted(sim, http, keys):
    chain = x5c_of(leaf_cert(keys, keys["ca"], sim.test_ca_cert))
    assert post_grant(http, sim, grant(sim, keys["partner"], {"x5c": chain})).status_code == 200


def test_x5c_from_an_untrusted_ca_is_refused_with_mp_120(sim, http, keys):
    rogue_ca = issue_certificate(
        keys["rogue_ca"], "Test Buypass CA", is_ca=True, not_before=CERT_FROM, not_after=CERT_UNTIL
    )
    chain = x5c_of(leaf_cert(keys, keys["rogue_ca"], rogue_ca), rogue_ca)
    status, _, description = refused_with(post_grant(http, sim, grant(sim, keys["partner"], {"x5c": chain})))
    assert status == 400 and "(MP-120)" in description


def test_x5c_with_an_expired_certificate_is_refused_with_mp_120(sim, http, keys):
    start = dt.datetime.fromtimestamp(NOW - 400 * 86400, dt.UTC)
    old = leaf_cert(keys, keys["ca"], sim.test_ca_cert, not_before=start, not_after=start + dt.timedelta(days=365))
    status, _, description = refused_with(post_grant(http, sim, grant(sim, keys["partner"], {"x5c": x5c_of(old)})))
    assert status == 400 and "(MP-120)" in description


def test_x5c_is_refused_entirely_when_the_option_is_off(sim, http, keys):
    sim.options.accept_x5c = False
    chain = x5c_of(leaf_cert(keys, keys["ca"], sim.test_ca_cert))
    status, error, _ = refused_with(post_grant(http, sim, grant(sim, keys["partner"], {"x5c": chain})))
    assert (status, error) == (401, "invalid_client")


def test_x5c_grant_signed_by_another_key_than_the_certificates_is_refused_with_mp_124(sim, http, keys):
    chain = x5c_of(leaf_cert(keys, keys["ca"], sim.test_ca_cert))
    status, _, description = refused_with(post_grant(http, sim, grant(sim, keys["other"], {"x5c": chain})))
    assert status == 400 and "(MP-124)" in description


def test_simulator_repr_shows_no_key_material(sim):
    assert "PRIVATE" not in repr(sim) and sim.issuer in repr(sim)
