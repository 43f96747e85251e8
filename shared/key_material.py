"""Key material to an RSA private key: a PEM (PKCS#8 or PKCS#1), a private JWK, or a PKCS#12/PEM certificate bundle
(the key and its chain), read from text or from a file (`key_from_file`, SIGNING_KEY_SOURCE=file). Each bad key is
one `SigningKeyError` naming the cause and the fix; a parser's own text, which might quote the key, never reaches it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from jwt.algorithms import RSAAlgorithm

from .errors import SigningKeyError
from .signing_key import MIN_RSA_BITS, KeyInfo, SigningKey


def _check_rsa(key: Any, what: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError(
            f"{what} is a {type(key).__name__.lstrip('_')}, not an RSA private key.",
            hint="Maskinporten signs with RS256: generate an RSA key of 2048 bits or more.",
        )
    if key.key_size < MIN_RSA_BITS:
        raise SigningKeyError(
            f"{what} is an RSA key of {key.key_size} bits; Maskinporten needs at least {MIN_RSA_BITS}.",
            hint="Generate a new RSA-2048 (or larger) key, register its public JWK on the integration and "
            "store it in place of this one.",
        )
    return key


def parse_private_key(material: str | bytes, what: str) -> rsa.RSAPrivateKey:
    """A PEM (PKCS#8 or PKCS#1) or a private JWK (JSON with `d`)."""
    text = material.decode("utf-8", "replace") if isinstance(material, bytes) else material
    stripped = text.strip()
    if stripped.startswith("{"):
        return _parse_jwk(stripped, what)
    if "ENCRYPTED PRIVATE KEY" in stripped or "Proc-Type: 4,ENCRYPTED" in stripped:
        raise SigningKeyError(
            f"{what} is an encrypted PEM; the relay cannot ask for a passphrase.",
            hint="Store the key unencrypted in Key Vault (Key Vault encrypts it at rest), e.g. "
            "`openssl pkey -in enc.pem -out key.pem`.",
        )
    if "PRIVATE KEY-----" not in stripped:
        raise SigningKeyError(
            f"{what} is neither a PEM private key nor a private JWK.",
            hint="Store the unencrypted PKCS#8 PEM (a 'PRIVATE KEY' block) or the private JWK JSON.",
        )
    try:
        key = serialization.load_pem_private_key(stripped.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{what} is a malformed PEM private key (truncated or corrupted).",
            hint="Store the whole PEM again, including the BEGIN and END lines.",
        ) from _scrubbed(exc)
    return _check_rsa(key, what)


def _parse_jwk(text: str, what: str) -> rsa.RSAPrivateKey:
    try:
        jwk = json.loads(text)
    except ValueError as exc:
        raise SigningKeyError(f"{what} looks like JSON but does not parse as a JWK.",
                              hint="Store the private JWK JSON as produced by your key tool.") from _scrubbed(exc)
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise SigningKeyError(f"{what} is a JWK of type {jwk.get('kty') if isinstance(jwk, dict) else '?'!r}, "
                              "not RSA.", hint="Maskinporten signs with RS256: use an RSA key.")
    if "d" not in jwk:
        raise SigningKeyError(
            f"{what} is a public JWK (no private part 'd').",
            hint="Store the private JWK in Key Vault; register only the public one in Samarbeidsportalen.",
        )
    crt = ("p", "q", "dp", "dq", "qi")
    if not all(k in jwk for k in crt):  # an incomplete set of CRT values is ignored: p and q are recovered
        jwk = {k: v for k, v in jwk.items() if k not in crt}
    try:  # PyJWT reads the numbers, and recovers p and q when the JWK carries only n, e and d
        key = RSAAlgorithm.from_jwk(jwk)
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{what} is a malformed RSA JWK.",
                              hint="Store the complete private JWK (n, e, d, p, q, dp, dq, qi).") from _scrubbed(exc)
    return _check_rsa(key, what)


def jwk_kid(text: str) -> str | None:
    """The `kid` inside a JWK text, if any (never the key)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("kid") if isinstance(value, dict) else None


def parse_certificate_bundle(
    material: bytes, what: str, now: dt.datetime
) -> tuple[rsa.RSAPrivateKey, list[x509.Certificate]]:
    """A PKCS#12 (as Key Vault stores certificates) or PEM bundle: the private key and the chain, leaf first."""
    key: Any = None
    chain: list[x509.Certificate] = []
    if b"-----BEGIN" in material:
        try:
            chain = x509.load_pem_x509_certificates(material)
            key = serialization.load_pem_private_key(
                b"".join(block for block in _pem_blocks(material) if b"PRIVATE KEY" in block), password=None
            )
        except ValueError as exc:
            raise SigningKeyError(f"{what} is a PEM bundle without a usable private key and certificate.",
                                  hint="Import the certificate with its private key (PFX) into Key Vault.") \
                from _scrubbed(exc)
    else:
        try:
            key, leaf, extra = pkcs12.load_key_and_certificates(material, None)
        except ValueError as exc:
            raise SigningKeyError(
                f"{what} is not a readable PKCS#12 (PFX) without password.",
                hint="Import the enterprise certificate with `az keyvault certificate import` (PFX with its key).",
            ) from _scrubbed(exc)
        chain = ([leaf] if leaf is not None else []) + list(extra)
        if not chain:
            raise SigningKeyError(f"{what} holds no certificate.", hint="Import the PFX with its certificate.")
    if key is None:
        raise SigningKeyError(
            f"{what} holds a certificate without its private key.",
            hint="Import the PFX that contains the private key, and mark the key exportable.",
        )
    key = _check_rsa(key, what)
    leaf = _leaf_for(key, chain, what)
    if now < leaf.not_valid_before_utc:
        raise SigningKeyError(
            f"{what}: the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.",
            hint="Check the clock, or wait until the certificate becomes valid.",
        )
    if now > leaf.not_valid_after_utc:
        raise SigningKeyError(
            f"{what}: the certificate expired {leaf.not_valid_after_utc:%Y-%m-%d} (Maskinporten gives MP-120).",
            hint="Order a new enterprise certificate and import it into Key Vault under the same name.",
        )
    ordered = [leaf, *[c for c in chain if c is not leaf]]
    return key, ordered


def _pem_blocks(material: bytes) -> list[bytes]:
    blocks, current = [], []
    for line in material.splitlines(keepends=True):
        current.append(line)
        if line.startswith(b"-----END"):
            blocks.append(b"".join(current))
            current = []
    return blocks


def _leaf_for(key: rsa.RSAPrivateKey, chain: list[x509.Certificate], what: str) -> x509.Certificate:
    wanted = key.public_key().public_numbers()
    for cert in chain:
        public = cert.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == wanted:
            return cert
    raise SigningKeyError(f"{what}: no certificate in the bundle matches the private key.",
                          hint="Import the PFX exported together with its own private key.")


class _ScrubbedError(Exception):
    """Stands in for a parser exception whose text might quote key material."""


def _scrubbed(exc: Exception) -> _ScrubbedError:
    return _ScrubbedError(type(exc).__name__)


def key_from_file(path: str, kid: str | None) -> SigningKey:
    what = f"SIGNING_KEY_FILE {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SigningKeyError(f"{what} cannot be read ({exc.strerror}).",
                              hint="Point SIGNING_KEY_FILE at the private key file.", stage="access") from None
    key = parse_private_key(text, what)
    kid = kid or jwk_kid(text)
    return SigningKey.held_here(KeyInfo("file", path, kid, key.key_size), key)
