"""RSA public keys as JWKs (RFC 7517/7518) and a small JWKS fetch-and-cache shared by the simulators.

`JwksCache` fetches `<issuer>/.well-known/openid-configuration` and the `jwks_uri` it names over HTTPS,
keeps each key set for `ttl` seconds by the injected clock, and refetches once when a kid is unknown.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import rsa

Clock = Callable[[], float]


def b64url_uint(value: int) -> str:
    """Base64url of a big-endian unsigned integer without padding (RFC 7518 section 6.3.1)."""
    raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_to_int(text: str) -> int:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return int.from_bytes(raw, "big")


def public_jwk(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    """The RSA public key as a JWK with `kid`, `use` sig and `alg` RS256."""
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": b64url_uint(numbers.n),
        "e": b64url_uint(numbers.e),
    }


def jwk_to_public_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    """Rebuild an RSA public key from a JWK; raises ValueError when it is not an RSA key."""
    if jwk.get("kty") != "RSA" or not isinstance(jwk.get("n"), str) or not isinstance(jwk.get("e"), str):
        raise ValueError("JWK is not an RSA public key")
    try:
        return rsa.RSAPublicNumbers(b64url_to_int(jwk["e"]), b64url_to_int(jwk["n"])).public_key()
    except Exception as exc:  # binascii.Error, ValueError from cryptography
        raise ValueError("JWK has an invalid RSA modulus or exponent") from exc


class JwksCache:
    """Fetches and caches JSON Web Key Sets by URL.

    `get_key` raises KeyError when the kid is not in the set even after one refetch, and
    `requests.RequestException` / ValueError when the set cannot be fetched or parsed.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        verify: str | bool = True,
        ttl: float = 300,
        clock: Clock = time.time,
        timeout: float = 10,
    ) -> None:
        self._session = session or requests.Session()
        self._verify = verify
        self._ttl = ttl
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sets: dict[str, tuple[float, dict[str, rsa.RSAPublicKey]]] = {}
        self._jwks_uris: dict[str, str] = {}
        self.fetches = 0

    def __repr__(self) -> str:
        return f"JwksCache(ttl={self._ttl}, cached={sorted(self._sets)})"

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._session.get(url, verify=self._verify, timeout=self._timeout)
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return body

    def discover_jwks_uri(self, issuer: str) -> str:
        """Read `jwks_uri` from `<issuer>/.well-known/openid-configuration` (cached per issuer)."""
        with self._lock:
            cached = self._jwks_uris.get(issuer)
        if cached:
            return cached
        config = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        uri = config.get("jwks_uri")
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"openid-configuration of {issuer} has no jwks_uri")
        with self._lock:
            self._jwks_uris[issuer] = uri
        return uri

    def _fetch(self, jwks_uri: str) -> dict[str, rsa.RSAPublicKey]:
        body = self._get_json(jwks_uri)
        self.fetches += 1
        keys: dict[str, rsa.RSAPublicKey] = {}
        for jwk in body.get("keys") or []:
            if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and isinstance(jwk.get("kid"), str):
                keys[jwk["kid"]] = jwk_to_public_key(jwk)
        with self._lock:
            self._sets[jwks_uri] = (self._clock() + self._ttl, keys)
        return keys

    def get_key(self, jwks_uri: str, kid: str) -> rsa.RSAPublicKey:
        """The key `kid` of the set at `jwks_uri`; refetches once when the kid is unknown (rotation)."""
        with self._lock:
            entry = self._sets.get(jwks_uri)
        refetched = False
        if entry is None or self._clock() >= entry[0]:
            keys = self._fetch(jwks_uri)
            refetched = True
        else:
            keys = entry[1]
        if kid not in keys and not refetched:
            keys = self._fetch(jwks_uri)
        if kid not in keys:
            raise KeyError(f"no key with kid {kid!r} at {jwks_uri}")
        return keys[kid]
