"""The key that signs the grant: `SigningKey` (held in this process, or in Key Vault, which signs the digest of a
signing input built here), the JWS header Maskinporten wants (`kid`, or `x5c` for an enterprise certificate), and
`KeyInfo`, the key's non-secret facts (with `key_expiry`) for `doctor` and logs. No key material in any repr.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MIN_RSA_BITS = 2048  # Maskinporten requires RSA keys of at least 2048 bits
KEY_LIFETIME_DAYS = 365  # Maskinporten self-service keys expire a year after upload (MP-121)
_SIGNING_HASH = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class KeyInfo:
    """Non-secret facts about the loaded key, for `doctor` and logs."""

    source: str
    name: str
    kid: str | None
    bits: int
    created_on: dt.datetime | None = None
    expires_on: dt.datetime | None = None
    certificate_subject: str | None = None
    certificate_not_before: dt.datetime | None = None
    certificate_not_after: dt.datetime | None = None
    version: str | None = None


def key_expiry(info: KeyInfo) -> tuple[dt.datetime | None, str]:
    """When the key stops working, and what says so: the certificate's notAfter, the vault object's expiry, or
    (for a registered key) a year after it was stored, the date to have rotated by (docs/key-rotation.md)."""
    if info.certificate_not_after is not None:
        return info.certificate_not_after, "certificate"
    if info.expires_on is not None:
        return info.expires_on, "keyvault"
    if info.created_on is not None and info.source != "keyvault-certificate":
        return info.created_on + dt.timedelta(days=KEY_LIFETIME_DAYS), "registration"
    return None, "-"


class SigningKey:
    """Signs JWTs for the grant. Header fields: `kid`, or `x5c` for an enterprise certificate.

    `local`: the private key, when it is held in this process (PyJWT encodes with it); otherwise `sign` signs
    elsewhere (Key Vault) and the signing input is built here.
    """

    algorithm = "RS256"

    def __init__(
        self,
        info: KeyInfo,
        sign: Callable[[str, bytes], bytes],
        x5c: list[str] | None = None,
        local: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.info = info
        self._sign = sign
        self.x5c = x5c
        self._local = local

    @classmethod
    def held_here(cls, info: KeyInfo, key: rsa.RSAPrivateKey, x5c: list[str] | None = None) -> SigningKey:
        return cls(info, local_signer(key), x5c=x5c, local=key)

    @property
    def kid(self) -> str | None:
        return self.info.kid

    def header(self) -> dict[str, Any]:
        # Maskinporten: `kid` of a key registered on the client, or `x5c` as a JSON array of base64 DER
        # (a single string gives MP-123). Never both: the certificate identifies itself.
        header: dict[str, Any] = {"alg": self.algorithm, "typ": "JWT"}
        if self.x5c:
            header["x5c"] = list(self.x5c)
        elif self.kid:
            header["kid"] = self.kid
        return header

    def sign(self, signing_input: bytes) -> bytes:
        return self._sign(self.algorithm, signing_input)

    def encode(self, claims: dict[str, Any]) -> str:
        """The signed JWT (JWS compact serialisation, RFC 7515) of `claims` with this key's header."""
        if self._local is not None:
            extra = {k: v for k, v in self.header().items() if k not in ("alg", "typ")}
            return jwt.encode(claims, self._local, algorithm=self.algorithm, headers=extra)
        # Signed inside Key Vault: PyJWT needs the private key, so the signing input is built here.
        signing_input = (b64url(json.dumps(self.header(), separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self.sign(signing_input.encode("ascii")))

    def __repr__(self) -> str:
        return f"SigningKey(source={self.info.source!r}, name={self.info.name!r}, kid={self.kid!r})"


def local_signer(key: rsa.RSAPrivateKey) -> Callable[[str, bytes], bytes]:
    def sign(alg: str, data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), _SIGNING_HASH[alg]())  # type: ignore[abstract]

    return sign
