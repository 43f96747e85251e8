"""Skyporten simulator: a Maskinporten issuer for cloud federation (docs/protocol.md section 3).

Serves metadata, its JWKS and the JWT-bearer token endpoint; validates each grant in Maskinporten's order
and answers with Maskinporten's error JSON (`... (MP-nnn) Trace ID: <uuid>`). Options are mutable at run
time so tests can play each open reading (audience bound to the scope or taken from `resource`, etc.).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from sim.httpbase import Clock, Handler, SimServer
from sim.jwks import jwk_to_public_key, public_jwk
from sim.pki import new_rsa_key

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_ALGS = ("RS256", "RS384", "RS512")
# Maskinporten refuses every claim it does not document (docs/protocol.md section 3).
KNOWN_CLAIMS = frozenset({"aud", "iss", "scope", "iat", "exp", "jti", "resource"})
# Maskinporten's audience when the grant names no resource (docs.digdir.no, audience-restricted tokens).
UNSPECIFIED_AUDIENCE = "unspecified"


@dataclass
class SkyportenOptions:
    """Run-time configuration; the simulator reads it on every request, so tests may flip fields."""

    scope_audiences: dict[str, str] = field(default_factory=dict)
    audience_mode: Literal["scope", "resource"] = "scope"
    resource_form: Literal["string", "array", "both"] = "both"
    accept_x5c: bool = True
    token_lifetime: int = 120
    max_skew: int = 10
    max_grant_lifetime: int = 120
    granted_orgs: dict[str, set[str]] | None = None  # None: every registered client's org is granted


@dataclass
class RegisteredClient:
    """A Maskinporten client registration: id, organisation, scopes and uploaded keys."""

    client_id: str
    orgno: str
    scopes: set[str]
    keys: dict[str, dict[str, Any] | rsa.RSAPublicKey] = field(default_factory=dict)
    key_expiry: dict[str, float] = field(default_factory=dict)
    trusted_cas: list[x509.Certificate] = field(default_factory=list)

    def public_key(self, kid: str) -> rsa.RSAPublicKey | None:
        key = self.keys.get(kid)
        if key is None:
            return None
        return jwk_to_public_key(key) if isinstance(key, dict) else key


class GrantRefused(Exception):
    """A refused grant: the OAuth error, its MP code (if any), the HTTP status and the text."""

    def __init__(self, error: str, text: str, mp: str | None = None, status: int | None = None) -> None:
        super().__init__(text)
        self.error = error
        self.text = text
        self.mp = mp
        self.status = status or (401 if error == "invalid_client" else 400)

    def body(self) -> dict[str, str]:
        code = f" ({self.mp})" if self.mp else ""
        return {"error": self.error, "error_description": f"{self.text}{code} Trace ID: {uuid.uuid4()}"}


def _grant(text: str, mp: str | None = None) -> GrantRefused:
    return GrantRefused("invalid_grant", text, mp)


class SkyportenHandler(Handler):
    server: SkyportenSim

    def do_GET(self) -> None:
        sim = self.server
        if self.path_only == "/.well-known/openid-configuration":
            self.send_json(200, sim.metadata())
        elif self.path_only == "/jwk":
            self.send_json(200, sim.jwks())
        else:
            self.send_json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        sim = self.server
        if self.path_only != "/token":
            self.read_body()
            self.send_json(404, {"error": "not_found"})
            return
        with sim.lock:
            sim.token_requests += 1
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            self.read_body()
            text = "Content-Type must be application/x-www-form-urlencoded"
            refused = GrantRefused("invalid_request", text)
            self.send_json(refused.status, refused.body())
            return
        try:
            body = sim.handle_token_request(self.read_form())
        except GrantRefused as refused:
            self.send_json(refused.status, refused.body(), {"Cache-Control": "no-store"})
            return
        self.send_json(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


class SkyportenSim(SimServer):
    """Maskinporten issuer on loopback; its issuer is its base URL without a trailing slash.

    Counters for tests: `token_requests` (every POST /token), `tokens_issued`, `issued_claims`.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        clock: Clock = time.time,
        port: int = 0,
        options: SkyportenOptions | None = None,
    ) -> None:
        super().__init__(SkyportenHandler, ssl_context, port=port, clock=clock)
        self.options = options or SkyportenOptions()
        self.clients: dict[str, RegisteredClient] = {}
        self.lock = threading.Lock()
        self.token_requests = 0
        self.tokens_issued = 0
        self.issued_claims: list[dict[str, Any]] = []
        self._seen_jti: dict[str, float] = {}  # jti -> exp of the grant that used it
        self._signing_keys: dict[str, rsa.RSAPrivateKey] = {}
        self._kid = ""
        self.rotate_signing_key()

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # SimServer.stop() waits up to one poll interval (0.5 s by default): keep fixture teardown quick.
        super().serve_forever(poll_interval)

    def __repr__(self) -> str:
        return f"SkyportenSim(issuer={self.issuer!r}, kid={self._kid!r}, clients={sorted(self.clients)})"

    # -- configuration -----------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return self.base_url  # no trailing slash, as Skyporten's issuer (docs/protocol.md section 3)

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwk"

    @property
    def signing_kid(self) -> str:
        return self._kid

    def register(self, client: RegisteredClient) -> None:
        with self.lock:
            self.clients[client.client_id] = client

    def rotate_signing_key(self, kid: str | None = None) -> str:
        """Sign with a new key from now on; the old keys stay in the JWKS (as in a real rollover)."""
        kid = kid or f"skyporten-sim-{len(self._signing_keys) + 1}"
        with self.lock:
            self._signing_keys[kid] = new_rsa_key()
            self._kid = kid
        return kid

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "grant_types_supported": [JWT_BEARER],
            "token_endpoint_auth_signing_alg_values_supported": list(GRANT_ALGS),
        }

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            keys = list(self._signing_keys.items())
        return {"keys": [public_jwk(key.public_key(), kid) for kid, key in keys]}

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign any claims with the current key: lets other simulators' tests craft odd tokens."""
        with self.lock:
            key, kid = self._signing_keys[self._kid], self._kid
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})

    # -- the token endpoint --------------------------------------------------------------------
    def handle_token_request(self, form: dict[str, str]) -> dict[str, Any]:
        """Validate the form and its grant; return the token response or raise GrantRefused."""
        grant_type = form.get("grant_type")
        if not grant_type:
            raise GrantRefused("invalid_request", "Missing grant_type")
        if grant_type != JWT_BEARER:
            raise GrantRefused("unsupported_grant_type", f"Unsupported grant_type {grant_type}")
        assertion = form.get("assertion")
        if not assertion:
            raise GrantRefused("invalid_request", "Missing assertion")
        return self._issue(*self._validate(assertion))

    def _validate(self, assertion: str) -> tuple[RegisteredClient, dict[str, Any], str, str]:
        now = self.clock()
        opts = self.options
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.api_jws.PyJWS().decode_complete(assertion, options={"verify_signature": False})
            claims = json.loads(unverified["payload"])
        except (jwt.PyJWTError, ValueError):
            raise _grant("Invalid assertion. Could not parse the JWT") from None
        if not isinstance(claims, dict):
            raise _grant("Invalid assertion. The JWT payload is not a JSON object")
        alg = header.get("alg")
        if alg not in GRANT_ALGS:
            raise _grant(f"Invalid assertion. Unsupported signing algorithm {alg}")

        client = self.clients.get(str(claims.get("iss")))
        if client is None:
            text = f"Invalid client/client not found: {claims.get('iss')}"
            raise GrantRefused("invalid_client", text, "MP-100")

        key, amr = self._grant_key(client, header, now)
        try:
            jwt.api_jws.PyJWS().decode_complete(assertion, key, algorithms=[alg])
        except jwt.PyJWTError:
            raise _grant("Invalid assertion. Signature is invalid", "MP-124") from None

        if claims.get("aud") != self.issuer:  # byte for byte: a trailing slash is refused
            raise _grant("Invalid JWT claim aud", "MP-110")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_number(iat) or not _is_number(exp):
            raise _grant("Invalid assertion. Missing claim iat or exp", "MP-130")
        if iat > now + opts.max_skew or exp <= now:
            raise _grant("JWT expired or issued in the future", "MP-130")
        # Maskinporten: a grant may live at most 120 s (exp - iat).
        if exp - iat > opts.max_grant_lifetime:
            raise _grant(f"JWT lifetime exceeds {opts.max_grant_lifetime} seconds (exp - iat)", "MP-130")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _grant("Invalid assertion. Missing claim jti", "MP-012")
        with self.lock:
            self._seen_jti = {j: e for j, e in self._seen_jti.items() if e > now}
            if jti in self._seen_jti:
                raise _grant("Grant is used before", "MP-012")
            self._seen_jti[jti] = float(exp)

        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.strip():
            raise GrantRefused("invalid_scope", "Missing scope", "MP-200")
        if len(scope.split()) > 1:
            raise GrantRefused("invalid_scope", "Only one scope per grant is allowed", "MP-201")
        if scope not in client.scopes:
            raise GrantRefused("invalid_scope", f"Scope {scope} is not registered on the client", "MP-200")
        granted = opts.granted_orgs
        if granted is not None and client.orgno not in granted.get(scope, set()):
            raise GrantRefused("invalid_scope", f"Consumer has not been granted access to {scope}", "MP-250")

        resource = self._resource(claims)
        for name in claims:
            if name not in KNOWN_CLAIMS:
                raise _grant(f"Unknown claim {name}")

        if opts.audience_mode == "resource":
            # Maskinporten: without a resource the token's aud is "unspecified" (no audience restriction);
            # Entra then finds no federated credential for it (AADSTS700212 / 70021).
            audience = resource or UNSPECIFIED_AUDIENCE
        else:
            audience = opts.scope_audiences.get(scope) or resource or UNSPECIFIED_AUDIENCE
        return client, {"scope": scope, "amr": amr}, scope, audience

    def _grant_key(
        self, client: RegisteredClient, header: dict[str, Any], now: float
    ) -> tuple[rsa.RSAPublicKey, str]:
        """The key that must verify the grant and the client_amr: x5c if the header has one, else kid."""
        if "x5c" in header:
            if not self.options.accept_x5c:
                text = "Client authentication with x5c is not allowed"
                raise GrantRefused("invalid_client", text, "MP-100")
            return self._x5c_key(client, header["x5c"], now), "virksomhetssertifikat"
        kid = header.get("kid")
        key = client.public_key(str(kid)) if kid else None
        if key is None:
            text = f"Invalid assertion. Client has no key with kid {kid}"
            raise GrantRefused("invalid_client", text, "MP-100")
        expiry = client.key_expiry.get(str(kid))
        if expiry is not None and now >= expiry:
            raise _grant(f"Invalid assertion. Key with kid {kid} has expired", "MP-121")
        return key, "private_key_jwt"

    def _x5c_key(self, client: RegisteredClient, x5c: Any, now: float) -> rsa.RSAPublicKey:
        if not isinstance(x5c, list) or not x5c:
            raise _grant("Invalid assertion. x5c must be a JSON array of certificates", "MP-123")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
        except (TypeError, ValueError, binascii.Error):
            raise _grant("Invalid certificate in x5c", "MP-120") from None
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        for cert in chain:
            if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
                raise _grant("Invalid certificate: outside its validity period", "MP-120")
        try:
            for child, parent in itertools.pairwise(chain):
                child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise _grant("Invalid certificate: broken chain", "MP-120") from None
        top = chain[-1]
        for ca in client.trusted_cas:
            if not ca.not_valid_before_utc <= moment <= ca.not_valid_after_utc:
                continue
            if ca == top:
                break
            try:
                top.verify_directly_issued_by(ca)
                break
            except (ValueError, TypeError, InvalidSignature):
                continue  # try the next trusted CA
        else:
            raise _grant("Invalid certificate: not issued by a trusted CA", "MP-120")
        key = chain[0].public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise _grant("Invalid certificate: not an RSA key", "MP-120")
        return key

    def _resource(self, claims: dict[str, Any]) -> str | None:
        """The grant's resource in an accepted form (string, or array of one string), or None."""
        if "resource" not in claims:
            return None
        value, form = claims["resource"], self.options.resource_form
        if isinstance(value, str) and value and form in ("string", "both"):
            return value
        if (
            isinstance(value, list)
            and len(value) == 1
            and isinstance(value[0], str)
            and value[0]
            and form in ("array", "both")
        ):
            return value[0]
        raise _grant("Invalid resource", "MP-110")

    def _issue(
        self, client: RegisteredClient, meta: dict[str, Any], scope: str, audience: str
    ) -> dict[str, Any]:
        iat = int(self.clock())
        lifetime = self.options.token_lifetime
        consumer = f"0192:{client.orgno}"
        claims: dict[str, Any] = {
            "iss": self.issuer,
            # Skyporten appends the scope to the consumer so Entra can match sub alone.
            "sub": f"{consumer};{scope}",
            "aud": audience,
            "scope": scope,
            "client_id": client.client_id,
            "client_amr": meta["amr"],
            "consumer": {"authority": "iso6523-actorid-upis", "ID": consumer},
            "iat": iat,
            "exp": iat + lifetime,
            "jti": str(uuid.uuid4()),
        }
        token = self.sign(claims)
        with self.lock:
            self.tokens_issued += 1
            self.issued_claims.append(claims)
        return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
