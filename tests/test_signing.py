"""Loading the Maskinporten key: PEM, JWK and PFX parsing, and one clear error per bad key."""

import base64
import datetime as dt
import json

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import pkcs12

from shared.errors import SigningKeyError
from shared.signing import (
    KeyInfo,
    SigningKey,
    SigningKeyProvider,
    b64url,
    key_from_file,
    parse_certificate_bundle,
    parse_private_key,
)
from sim.pki import issue_certificate, new_rsa_key, private_pem

KEY = new_rsa_key()
NOW = dt.datetime.now(dt.UTC)


def jwk_of(key, kid="k1", private=True):
    n = key.private_numbers()
    ints = {"n": n.public_numbers.n, "e": n.public_numbers.e}
    if private:
        ints.update(d=n.d, p=n.p, q=n.q, dp=n.dmp1, dq=n.dmq1, qi=n.iqmp)
    jwk = {k: b64url(v.to_bytes((v.bit_length() + 7) // 8, "big")) for k, v in ints.items()}
    return json.dumps({"kty": "RSA", "kid": kid, **jwk})


def same_key(a, b):
    return a.private_numbers() == b.private_numbers()


@pytest.mark.parametrize("pkcs1", [False, True])
def test_pem_pkcs8_and_pkcs1_load(pkcs1):
    assert same_key(parse_private_key(private_pem(KEY, pkcs1=pkcs1), "k"), KEY)


def test_private_jwk_loads():
    assert same_key(parse_private_key(jwk_of(KEY), "k"), KEY)


def test_private_jwk_with_only_n_e_d_loads():
    jwk = json.loads(jwk_of(KEY))
    for name in ("p", "q", "dp", "dq", "qi"):
        del jwk[name]
    assert same_key(parse_private_key(json.dumps(jwk), "k"), KEY)


def test_public_jwk_without_d_is_refused():
    with pytest.raises(SigningKeyError, match="no private part 'd'"):
        parse_private_key(jwk_of(KEY, private=False), "k")


@pytest.mark.parametrize(("material", "message"), [
    ("garbage", "neither a PEM private key nor a private JWK"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n", "malformed PEM"),
    ("{not json", "does not parse as a JWK"),
    ('{"kty": "EC", "crv": "P-256"}', "not RSA"),
])
def test_bad_key_material_gets_one_clear_error(material, message):
    with pytest.raises(SigningKeyError, match=message):
        parse_private_key(material, "test key")


def test_truncated_pem_is_refused():
    pem = private_pem(KEY).decode()
    with pytest.raises(SigningKeyError, match="malformed PEM"):
        parse_private_key(pem[: len(pem) // 2] + "\n-----END PRIVATE KEY-----\n", "k")


def test_encrypted_pem_is_refused_with_the_fix():
    pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    with pytest.raises(SigningKeyError, match="encrypted") as info:
        parse_private_key(pem, "k")
    assert "openssl" in info.value.hint


def test_ec_key_is_refused():
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(SigningKeyError, match="not an RSA private key"):
        parse_private_key(pem, "k")


def test_1024_bit_key_is_refused():
    with pytest.raises(SigningKeyError, match="1024 bits"):
        parse_private_key(private_pem(new_rsa_key(1024)), "k")


def test_errors_never_quote_key_material():
    pem = private_pem(KEY).decode()
    broken = pem.replace("A", "!", 3)
    with pytest.raises(SigningKeyError) as info:
        parse_private_key(broken, "k")
    body = pem.splitlines()[1]
    assert body[:20] not in str(info.value)
    assert body[:20] not in repr(info.value.__cause__)


def test_file_key_signs_and_takes_kid_from_setting(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(private_pem(KEY))
    key = key_from_file(str(path), "kid-9")
    assert key.header() == {"alg": "RS256", "typ": "JWT", "kid": "kid-9"}
    KEY.public_key().verify(key.sign(b"data"), b"data", padding.PKCS1v15(), hashes.SHA256())
    assert "BEGIN" not in repr(key)


def test_a_local_key_encodes_a_jwt_that_verifies_with_its_public_key_and_names_its_kid(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(private_pem(KEY))
    token = key_from_file(str(path), "kid-9").encode({"sub": "x", "n": 1})
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": "kid-9"}
    assert jwt.decode(token, KEY.public_key(), algorithms=["RS256"]) == {"sub": "x", "n": 1}


def test_a_key_that_signs_elsewhere_encodes_the_same_verifiable_jwt():
    info = KeyInfo("keyvault-key", "k", "kid-7", KEY.key_size)
    remote = SigningKey(info, lambda alg, data: KEY.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    token = remote.encode({"sub": "x"})
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": "kid-7"}
    assert jwt.decode(token, KEY.public_key(), algorithms=["RS256"]) == {"sub": "x"}


def test_file_jwk_supplies_its_own_kid(tmp_path):
    path = tmp_path / "key.json"
    path.write_text(jwk_of(KEY, kid="from-jwk"))
    assert key_from_file(str(path), None).kid == "from-jwk"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SigningKeyError, match="cannot be read"):
        key_from_file(str(tmp_path / "nope.pem"), "k")


def _pfx(cert_kwargs=None, with_key=True):
    # Dated from NOW, the time the tests check against (a slow suite may reach them minutes after import).
    dates = {"not_before": NOW - dt.timedelta(minutes=5), "not_after": NOW + dt.timedelta(days=365)}
    ca_key = new_rsa_key()
    ca = issue_certificate(ca_key, "Test CA", is_ca=True, **dates)
    leaf = issue_certificate(KEY, "Partner AS", ca_key, ca, **{**dates, **(cert_kwargs or {})})
    return pkcs12.serialize_key_and_certificates(
        b"p", KEY if with_key else None, leaf, [ca], serialization.NoEncryption()), leaf, ca


def test_pfx_gives_key_and_chain_leaf_first():
    pfx, leaf, ca = _pfx()
    key, chain = parse_certificate_bundle(pfx, "cert", NOW)
    assert same_key(key, KEY)
    assert chain == [leaf, ca]


def test_expired_certificate_is_refused():
    pfx, _, _ = _pfx({"not_before": NOW - dt.timedelta(days=400), "not_after": NOW - dt.timedelta(days=1)})
    with pytest.raises(SigningKeyError, match="expired"):
        parse_certificate_bundle(pfx, "cert", NOW)


def test_not_yet_valid_certificate_is_refused():
    pfx, _, _ = _pfx({"not_before": NOW + dt.timedelta(days=1), "not_after": NOW + dt.timedelta(days=400)})
    with pytest.raises(SigningKeyError, match="not valid before"):
        parse_certificate_bundle(pfx, "cert", NOW)


def test_certificate_without_private_key_is_refused():
    pfx, _, _ = _pfx(with_key=False)
    with pytest.raises(SigningKeyError, match="without its private key"):
        parse_certificate_bundle(pfx, "cert", NOW)


def test_garbage_pfx_is_refused():
    with pytest.raises(SigningKeyError, match="PKCS#12"):
        parse_certificate_bundle(base64.b64decode("AAAA"), "cert", NOW)


def test_provider_caches_until_ttl_then_reloads():
    now = [0.0]
    loads = []

    def load():
        loads.append(1)
        return SigningKey(KeyInfo("test", "k", "kid", 2048), lambda alg, data: b"")

    provider = SigningKeyProvider(load, ttl=300, clock=lambda: now[0])
    provider.get()
    now[0] = 299
    provider.get()
    assert len(loads) == 1
    now[0] = 300
    provider.get()
    assert len(loads) == 2
