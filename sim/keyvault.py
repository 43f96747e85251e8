"""Key Vault stand-in: enough of the data plane (secrets, keys with sign, certificates) for the real SDKs.

Answers the SDK's bearer challenge, checks the token (through an injected validator) and Key Vault RBAC
roles by the caller's `oid`, and keeps versioned objects; a new version of a name becomes current, as in
Key Vault. Shapes follow the Key Vault REST API (7.x); timestamps are epoch seconds from the clock.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs12

from sim.httpbase import Clock, Handler, SimServer
from sim.jwks import b64url_uint

TokenValidator = Callable[[str], dict[str, Any]]
VAULT_AUDIENCES = ("https://vault.azure.net", "https://vault.azure.net/")

GET_SECRET = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
READ_KEY = "Microsoft.KeyVault/vaults/keys/read"
SIGN = "Microsoft.KeyVault/vaults/keys/sign/action"
READ_CERTIFICATE = "Microsoft.KeyVault/vaults/certificates/read"
# Built-in Key Vault data-plane roles (Azure built-in roles, "Security" section), reduced to what we serve.
# Certificate User "reads entire certificate contents including secret and key portion".
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "Key Vault Secrets User": frozenset({GET_SECRET}),
    "Key Vault Crypto User": frozenset({READ_KEY, SIGN}),
    "Key Vault Certificate User": frozenset({READ_CERTIFICATE, GET_SECRET, READ_KEY}),
    "Key Vault Administrator": frozenset({GET_SECRET, READ_KEY, SIGN, READ_CERTIFICATE}),
}
SIGN_HASHES: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(),
    "RS384": hashes.SHA384(),
    "RS512": hashes.SHA512(),
    "PS256": hashes.SHA256(),
}
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_NOT_FOUND = {
    "secrets": ("SecretNotFound", "A secret"),
    "keys": ("KeyNotFound", "A key"),
    "certificates": ("CertificateNotFound", "A certificate"),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class _Version:
    """One version of a secret, key or certificate; `value` holds the material for its kind."""

    version: str
    value: Any
    created: int
    enabled: bool = True
    expires: int | None = None
    not_before: int | None = None
    content_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # the value is secret material
        return f"_Version({self.version!r}, created={self.created})"

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"enabled": self.enabled, "created": self.created, "updated": self.created}
        if self.expires is not None:
            attrs["exp"] = self.expires
        if self.not_before is not None:
            attrs["nbf"] = self.not_before
        attrs["recoveryLevel"] = "Recoverable+Purgeable"
        attrs["recoverableDays"] = 90
        return attrs


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(code)
        self.status = status
        self.body: dict[str, Any] = {"error": {"code": code, "message": message}}
        if inner:
            self.body["error"]["innererror"] = {"code": inner}


class KeyVaultHandler(Handler):
    server: KeyVaultSim

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        sim = self.server
        body = self.read_body()
        parts = [p for p in self.path_only.split("/") if p]
        kind = _route_kind(method, parts)
        with sim.lock:
            sim.requests[kind] += 1
        token = self.bearer_token()
        if token is None:
            # The SDK's challenge policy sends its first request without a token, and learns tenant and
            # resource from this header.
            missing = {
                "code": "Unauthorized",
                "message": "AKV10000: Request is missing a Bearer or PoP token.",
            }
            self.send_json(401, {"error": missing}, {"WWW-Authenticate": sim.challenge})
            return
        try:
            claims = sim.authenticate(token)
            payload = sim.dispatch(method, parts, body, claims)
        except _Refused as refused:
            headers = {"WWW-Authenticate": sim.challenge} if refused.status == 401 else None
            self.send_json(refused.status, refused.body, headers)
            return
        self.send_json(200, payload)


def _route_kind(method: str, parts: list[str]) -> str:
    if len(parts) == 4 and parts[0] == "keys" and parts[3] == "sign" and method == "POST":
        return "keys.sign"
    if parts and parts[0] in _NOT_FOUND and 2 <= len(parts) <= 3 and method == "GET":
        return f"{parts[0]}.get"
    return "other"


class KeyVaultSim(SimServer):
    """Key Vault data plane on loopback. `requests` counts requests by route kind ("secrets.get", ...)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        token_validator: TokenValidator,
        tenant_id: str,
        authority_host: str,
        clock: Clock = time.time,
        port: int = 0,
    ) -> None:
        super().__init__(KeyVaultHandler, ssl_context, port=port, clock=clock)
        self.token_validator = token_validator
        self.tenant_id = tenant_id
        self.authority_host = authority_host.rstrip("/")
        self.lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self._store: dict[str, dict[str, list[_Version]]] = {"secrets": {}, "keys": {}, "certificates": {}}
        self._roles: dict[str, set[str]] = {}

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # SimServer.stop() waits up to one poll interval (0.5 s by default): keep fixture teardown quick.
        super().serve_forever(poll_interval)

    def __repr__(self) -> str:
        return f"KeyVaultSim(vault_url={self.vault_url!r})"

    @property
    def vault_url(self) -> str:
        return self.base_url

    @property
    def challenge(self) -> str:
        return (
            f'Bearer authorization="{self.authority_host}/{self.tenant_id}", '
            f'resource="https://vault.azure.net"'
        )

    # -- RBAC and store (Python API) ------------------------------------------------------------
    def grant(self, object_id: str, role: str) -> None:
        """Assign a Key Vault data-plane role to a principal (its `oid`) on the whole vault."""
        if role not in ROLE_ACTIONS:
            raise ValueError(f"unknown role {role!r}; known: {sorted(ROLE_ACTIONS)}")
        with self.lock:
            self._roles.setdefault(object_id, set()).add(role)

    def revoke(self, object_id: str, role: str) -> None:
        with self.lock:
            self._roles.get(object_id, set()).discard(role)

    def _add(self, kind: str, name: str, version: _Version) -> str:
        if not _NAME.match(name):
            raise ValueError(f"invalid Key Vault object name {name!r}")
        with self.lock:
            self._store[kind].setdefault(name, []).append(version)
        return version.version

    def _now(self, value: float | None) -> int:
        return int(self.clock() if value is None else value)

    def set_secret(
        self,
        name: str,
        value: str,
        content_type: str | None = None,
        created: float | None = None,
        expires: float | None = None,
        not_before: float | None = None,
        enabled: bool = True,
        *,
        _version: str | None = None,
    ) -> str:
        """Store a new version of a secret (it becomes current); returns the version id."""
        version = _Version(
            _version or uuid.uuid4().hex,
            value,
            self._now(created),
            enabled,
            None if expires is None else int(expires),
            None if not_before is None else int(not_before),
            content_type,
        )
        return self._add("secrets", name, version)

    def set_key(
        self,
        name: str,
        private_key: rsa.RSAPrivateKey,
        created: float | None = None,
        expires: float | None = None,
        *,
        _version: str | None = None,
    ) -> str:
        """Store a new version of an RSA key (it becomes current); returns the version id."""
        version = _Version(
            _version or uuid.uuid4().hex,
            private_key,
            self._now(created),
            expires=None if expires is None else int(expires),
        )
        return self._add("keys", name, version)

    def set_certificate(
        self,
        name: str,
        private_key: rsa.RSAPrivateKey,
        cert_chain: list[x509.Certificate],
        created: float | None = None,
    ) -> str:
        """Store a certificate (leaf first); like Key Vault, also the secret `name` (base64 PFX of key and
        chain, content type application/x-pkcs12) and the key `name`, all three with the same version."""
        if not cert_chain:
            raise ValueError("cert_chain needs at least the leaf certificate")
        leaf = cert_chain[0]
        version_id = uuid.uuid4().hex
        pfx = pkcs12.serialize_key_and_certificates(
            name.encode(), private_key, leaf, cert_chain[1:] or None, serialization.NoEncryption()
        )
        nbf, exp = int(leaf.not_valid_before_utc.timestamp()), int(leaf.not_valid_after_utc.timestamp())
        self.set_key(name, private_key, created, exp, _version=version_id)
        self.set_secret(
            name,
            base64.b64encode(pfx).decode("ascii"),
            "application/x-pkcs12",
            created,
            exp,
            nbf,
            _version=version_id,
        )
        version = _Version(version_id, cert_chain, self._now(created), expires=exp, not_before=nbf)
        return self._add("certificates", name, version)

    # -- request handling ------------------------------------------------------------------------
    def authenticate(self, token: str) -> dict[str, Any]:
        try:
            claims = self.token_validator(token)
        except ValueError as exc:
            reason = "" if token in str(exc) else f": {exc}"  # never echo the token itself
            raise _Refused(401, "Unauthorized", f"AKV10032: Invalid token{reason}") from None
        aud = claims.get("aud")
        if aud not in VAULT_AUDIENCES:
            text = f"AKV10022: Invalid audience. Expected https://vault.azure.net, found: {aud}."
            raise _Refused(401, "Unauthorized", text)
        tid = claims.get("tid")
        if tid is not None and tid != self.tenant_id:
            text = f"AKV10032: Invalid issuer. Expected tenant {self.tenant_id}."
            raise _Refused(401, "Unauthorized", text)
        return claims

    def dispatch(self, method: str, parts: list[str], body: bytes, claims: dict[str, Any]) -> dict[str, Any]:
        kind = _route_kind(method, parts)
        if kind == "other":
            raise _Refused(400, "BadParameter", "The request URI is not supported by this stand-in.")
        collection, name = parts[0], parts[1]
        version_id = parts[2] if len(parts) >= 3 else ""
        action = {
            "secrets.get": GET_SECRET,
            "keys.get": READ_KEY,
            "keys.sign": SIGN,
            "certificates.get": READ_CERTIFICATE,
        }[kind]
        self._authorize(claims, action, f"{collection}/{name}")
        version = self._lookup(collection, name, version_id)
        if kind == "secrets.get":
            if not version.enabled:
                raise _Refused(
                    403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"
                )
            return self._secret_bundle(name, version)
        if kind == "keys.get":
            return self._key_bundle(name, version)
        if kind == "keys.sign":
            return self._sign(name, version, body)
        return self._certificate_bundle(name, version)

    def _authorize(self, claims: dict[str, Any], action: str, resource: str) -> None:
        oid = str(claims.get("oid") or "")
        with self.lock:
            roles = set(self._roles.get(oid, set()))
        if any(action in ROLE_ACTIONS[role] for role in roles):
            return
        message = (
            "Caller is not authorized to perform action on resource.\r\n"
            "If role assignments, deny assignments or role definitions were changed recently, please observe "
            "propagation time.\r\n"
            f"Caller: appid={claims.get('appid', '')};oid={oid};iss={claims.get('iss', '')}\r\n"
            f"Action: '{action}'\r\n"
            f"Resource: '/providers/microsoft.keyvault/vaults/sim/{resource.lower()}'\r\n"
            "Assignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\n"
            f"Vault: {self.vault_url};location=norwayeast\r\n"
        )
        raise _Refused(403, "Forbidden", message, "ForbiddenByRbac")

    def _lookup(self, collection: str, name: str, version_id: str) -> _Version:
        with self.lock:
            versions = list(self._store[collection].get(name, []))
        found = (
            versions[-1]
            if versions and not version_id
            else next((v for v in versions if v.version == version_id), None)
        )
        if found is None:
            code, article = _NOT_FOUND[collection]
            shown = f"{name}/{version_id}" if version_id else name
            noun = article.split()[1]
            text = (
                f"{article} with (name/id) {shown} was not found in this key vault. If you recently deleted "
                f"this {noun} you may be able to recover it using the correct recovery command. For help "
                "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            )
            raise _Refused(404, code, text)
        return found

    def _secret_bundle(self, name: str, version: _Version) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "value": version.value,
            "id": f"{self.vault_url}/secrets/{name}/{version.version}",
            "attributes": version.attributes(),
            "tags": {},
        }
        if version.content_type:
            bundle["contentType"] = version.content_type
        if self._store["certificates"].get(name):
            bundle["kid"] = f"{self.vault_url}/keys/{name}/{version.version}"
            bundle["managed"] = True
        return bundle

    def _key_bundle(self, name: str, version: _Version) -> dict[str, Any]:
        numbers = version.value.public_key().public_numbers()
        return {
            "key": {
                "kid": f"{self.vault_url}/keys/{name}/{version.version}",
                "kty": "RSA",
                "key_ops": ["sign", "verify", "wrapKey", "unwrapKey", "encrypt", "decrypt"],
                "n": b64url_uint(numbers.n),
                "e": b64url_uint(numbers.e),
            },
            "attributes": version.attributes(),
            "tags": {},
        }

    def _sign(self, name: str, version: _Version, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body or b"{}")
            alg, digest = request["alg"], b64url_decode(request["value"])
        except (ValueError, KeyError, TypeError):
            raise _Refused(400, "BadParameter", "Property 'alg' and 'value' are required.") from None
        hash_alg = SIGN_HASHES.get(alg)
        if hash_alg is None:
            raise _Refused(400, "BadParameter", f"Invalid algorithm {alg} for an RSA key.")
        if len(digest) != hash_alg.digest_size:
            raise _Refused(400, "BadParameter", f"Invalid digest length for algorithm {alg}.")
        now = self.clock()
        if not version.enabled or (version.expires is not None and now >= version.expires):
            raise _Refused(
                403, "Forbidden", "Operation sign is not allowed on a disabled or expired key.", "KeyExpired"
            )
        pad: padding.AsymmetricPadding
        if alg.startswith("PS"):
            pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        else:
            pad = padding.PKCS1v15()
        signature = version.value.sign(digest, pad, utils.Prehashed(hash_alg))
        return {"kid": f"{self.vault_url}/keys/{name}/{version.version}", "value": b64url(signature)}

    def _certificate_bundle(self, name: str, version: _Version) -> dict[str, Any]:
        leaf: x509.Certificate = version.value[0]
        der = leaf.public_bytes(serialization.Encoding.DER)
        key_size = leaf.public_key().key_size  # type: ignore[union-attr]
        attrs = version.attributes()
        return {
            "id": f"{self.vault_url}/certificates/{name}/{version.version}",
            "kid": f"{self.vault_url}/keys/{name}/{version.version}",
            "sid": f"{self.vault_url}/secrets/{name}/{version.version}",
            "x5t": b64url(hashlib.sha1(der).digest()),  # x5t is SHA-1 by definition (RFC 7517)
            "cer": base64.b64encode(der).decode("ascii"),
            "attributes": attrs,
            "tags": {},
            "policy": {
                "id": f"{self.vault_url}/certificates/{name}/policy",
                "key_props": {"exportable": True, "kty": "RSA", "key_size": key_size, "reuse_key": False},
                "secret_props": {"contentType": "application/x-pkcs12"},
                "x509_props": {"subject": leaf.subject.rfc4514_string(), "validity_months": 12},
                "issuer": {"name": "Unknown"},
                "attributes": {"enabled": True, "created": attrs["created"], "updated": attrs["updated"]},
            },
        }
