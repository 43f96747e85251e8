"""Entra ID stand-in: client credentials with a federated client assertion, and an App Service MSI endpoint.

Owns tenants, resources, managed identities with federated credentials (docs/protocol.md section 5), Entra's
error shapes (AADSTS codes), v1 access tokens signed with the simulator's own key, the discovery
documents MSAL reads, and `validate_token` used in-process by the gateway and Key Vault simulators.
"""

from __future__ import annotations

import datetime as dt
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .httpbase import Clock, Handler, SimServer
from .jwks import JwksCache, public_jwk
from .pki import new_rsa_key

# RFC 7523 section 2.2: the client authenticates with a JWT bearer assertion.
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS256", "RS384", "RS512"]
V1_ISSUER = "https://sts.windows.net/{tenant}/"  # storage tokens are v1 tokens (docs/protocol.md section 5)
DOCS_FIC = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"


class EntraError(Exception):
    """A refusal answered with Entra's error body; `status` 401 for client authentication failures."""

    def __init__(self, code: int, error: str, text: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}")
        self.code = code
        self.error = error
        self.text = text
        self.status = status


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential: Entra matches all three exactly and case-sensitively."""

    issuer: str
    subject: str
    audience: str  # one audience per credential (Entra allows exactly one)
    name: str = "skyporten"


@dataclass
class _Credential:
    value: FederatedCredential
    added_at: float


@dataclass
class ManagedIdentity:
    tenant_id: str
    client_id: str
    object_id: str
    credentials: list[_Credential] = field(default_factory=list)


@dataclass
class EntraOptions:
    """Behaviour knobs, mutable while the simulator runs."""

    token_lifetime: int = 3599
    # Seconds after a federated credential was added during which it does not match yet (AADSTS70021):
    # Entra needs minutes to propagate a new credential.
    propagation_delay: float = 0.0
    # The clock that delay is measured on (None: the simulator's). A test hands it a clock the relay's backoff
    # moves, so "refused, then matched after the backoff" never depends on how fast the machine is.
    propagation_clock: Clock | None = None
    # "specific": AADSTS700211 issuer / 700212 audience / 700213 subject; "generic": AADSTS70021 for all.
    mismatch_style: str = "specific"
    conditional_access_block: bool = False  # AADSTS53003 for every token request of the tenant's identities
    assertion_leeway: float = 0.0  # seconds of clock skew allowed on the assertion's nbf/iat and exp


class EntraSim(SimServer):
    """The Entra ID token service of several tenants, on one loopback HTTPS port."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        clock: Clock = time.time,
        port: int = 0,
        ca_bundle: str | None = None,
        options: EntraOptions | None = None,
    ) -> None:
        super().__init__(_EntraHandler, ssl_context, port=port, clock=clock)
        self.options = options or EntraOptions()
        self.jwks = JwksCache(verify=ca_bundle if ca_bundle else True, clock=clock)
        self.msi_secret = secrets.token_urlsafe(24)
        self._key: rsa.RSAPrivateKey = new_rsa_key()
        self._kid = uuid.uuid4().hex
        self._tenants: dict[str, set[str]] = {}
        self._identities: dict[tuple[str, str], ManagedIdentity] = {}
        self._msi: dict[str, ManagedIdentity] = {}
        self._lock = threading.Lock()
        self.token_requests = 0
        self.tokens_issued = 0
        self.msi_requests = 0
        self.errors: Counter[int] = Counter()

    def __repr__(self) -> str:
        return f"EntraSim(authority={self.authority!r}, tenants={sorted(self._tenants)})"

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)  # a short poll makes stop() quick in tests

    @property
    def authority(self) -> str:
        """What azure-identity takes as `authority=` (scheme, host and port)."""
        return self.base_url

    @property
    def msi_endpoint(self) -> str:
        """The App Service managed identity endpoint (`IDENTITY_ENDPOINT`)."""
        return f"{self.base_url}/msi/token"

    # -- directory setup ------------------------------------------------------------------------
    def add_tenant(self, tenant_id: str) -> None:
        with self._lock:
            self._tenants.setdefault(tenant_id, set())

    def add_resource(self, tenant_id: str, audience: str) -> None:
        """Make `<audience>/.default` requestable in the tenant (a resource principal exists)."""
        with self._lock:
            self._tenants[tenant_id].add(audience.rstrip("/"))

    def add_managed_identity(
        self,
        tenant_id: str,
        client_id: str,
        object_id: str,
        federated_credentials: list[FederatedCredential] | tuple[FederatedCredential, ...] = (),
    ) -> ManagedIdentity:
        if tenant_id not in self._tenants:
            raise KeyError(f"unknown tenant {tenant_id}")
        identity = ManagedIdentity(tenant_id, client_id, object_id)
        with self._lock:
            self._identities[(tenant_id, client_id)] = identity
        for credential in federated_credentials:
            self.add_federated_credential(tenant_id, client_id, credential)
        return identity

    def identity(self, tenant_id: str, client_id: str) -> ManagedIdentity:
        """The managed identity registered under `client_id` (KeyError when there is none)."""
        with self._lock:
            return self._identities[(tenant_id, client_id)]

    def add_federated_credential(
        self, tenant_id: str, client_id: str, credential: FederatedCredential
    ) -> None:
        """Add a credential now; it matches only after `options.propagation_delay` seconds."""
        with self._lock:
            self._identities[(tenant_id, client_id)].credentials.append(
                _Credential(credential, self._propagation_now()))

    def _propagation_now(self) -> float:
        return (self.options.propagation_clock or self.clock)()

    def remove_federated_credentials(self, tenant_id: str, client_id: str) -> None:
        with self._lock:
            self._identities[(tenant_id, client_id)].credentials.clear()

    def add_msi_identity(self, tenant_id: str, client_id: str, object_id: str) -> ManagedIdentity:
        """An identity served by the MSI endpoint; the first one added is the default (no client_id)."""
        if tenant_id not in self._tenants:
            raise KeyError(f"unknown tenant {tenant_id}")
        identity = ManagedIdentity(tenant_id, client_id, object_id)
        with self._lock:
            self._msi[client_id] = identity
        return identity

    # -- tokens ---------------------------------------------------------------------------------
    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self._key.public_key(), self._kid)]}

    def issue_token(self, identity: ManagedIdentity, audience: str) -> tuple[str, int]:
        """A v1 access token for `identity` with `aud` = `audience`; returns (token, lifetime)."""
        now = int(self.clock())
        lifetime = int(self.options.token_lifetime)
        issuer = V1_ISSUER.format(tenant=identity.tenant_id)
        claims = {
            "aud": audience,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": identity.client_id,
            "appidacr": "2",  # 2 = authenticated with a certificate or federated assertion
            "idp": issuer,
            "idtyp": "app",
            "oid": identity.object_id,
            "sub": identity.object_id,
            "tid": identity.tenant_id,
            "uti": uuid.uuid4().hex[:22],
            "ver": "1.0",
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid, "typ": "JWT"})
        with self._lock:
            self.tokens_issued += 1
        return token, lifetime

    def validate_token(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """Check a token this simulator issued; raises ValueError with a reason (never the token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ValueError("token is not a JWT") from exc
        if header.get("kid") != self._kid:
            raise ValueError("token is not signed with a key of this issuer")
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise ValueError("token signature is invalid") from exc
        tenants = {V1_ISSUER.format(tenant=t) for t in self._tenants}
        if claims.get("iss") not in tenants:
            raise ValueError("token issuer is not a known tenant")
        now = self.clock()
        if not isinstance(claims.get("nbf"), int | float) or not isinstance(claims.get("exp"), int | float):
            raise ValueError("token has no nbf/exp")
        if now < claims["nbf"]:
            raise ValueError("token is not yet valid")
        if now >= claims["exp"]:
            raise ValueError("token has expired")
        if audience is not None and claims.get("aud") != audience:
            raise ValueError("token audience does not match")
        return claims

    # -- the token endpoint ---------------------------------------------------------------------
    def token_response(self, tenant_id: str, form: dict[str, str]) -> dict[str, Any]:
        """Answer a client-credentials request or raise EntraError (docs/protocol.md section 5)."""
        if tenant_id not in self._tenants:
            raise EntraError(
                90002,
                "invalid_request",
                f"Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud. Check with your subscription administrator, this may happen "
                "if there are no active subscriptions for the tenant.",
            )
        if form.get("grant_type") != "client_credentials":
            raise EntraError(
                70003, "unsupported_grant_type", "The app requested an unsupported grant type."
            )
        client_id = form.get("client_id", "")
        identity = self._identities.get((tenant_id, client_id))
        if identity is None:
            raise EntraError(
                700016,
                "unauthorized_client",
                f"Application with identifier '{client_id}' was not found in the directory '{tenant_id}'. "
                "This can happen if the application has not been installed by the administrator of the "
                "tenant or consented to by any user in the tenant. You may have sent your authentication "
                "request to the wrong tenant.",
                status=401,
            )
        assertion = form.get("client_assertion", "")
        if not assertion or form.get("client_assertion_type") != JWT_BEARER_ASSERTION:
            raise EntraError(
                7000218,
                "invalid_client",
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
                status=401,
            )
        header, claims = _parse_assertion(assertion)
        self._check_time(claims)
        credential = self._match_credential(identity, claims)
        self._check_signature(assertion, header, credential)
        audience = self._check_scope(tenant_id, form.get("scope"))
        if self.options.conditional_access_block:
            raise EntraError(
                53003,
                "invalid_grant",
                "Access has been blocked by Conditional Access policies. The access policy does not allow "
                "token issuance.",
            )
        token, lifetime = self.issue_token(identity, audience)
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _check_time(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        leeway = self.options.assertion_leeway
        start = claims.get("nbf", claims.get("iat"))
        end = claims.get("exp")
        if not isinstance(end, int | float) or (start is not None and not isinstance(start, int | float)):
            raise EntraError(50027, "invalid_request", "JWT token is invalid or malformed.")
        if now + leeway < (start if start is not None else now) or now - leeway >= end:
            raise EntraError(
                700024,
                "invalid_client",
                f"Client assertion is not within its valid time range. Current time: {_iso7(now)}, "
                f"assertion valid from {_iso7(start if start is not None else now)}, expiry time of "
                f"assertion {_iso7(end)}. Review the documentation at "
                "https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                status=401,
            )

    def _match_credential(self, identity: ManagedIdentity, claims: dict[str, Any]) -> FederatedCredential:
        iss, sub = claims.get("iss"), claims.get("sub")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        now = self._propagation_now()
        active = [c.value for c in identity.credentials if now - c.added_at >= self.options.propagation_delay]
        for credential in active:
            if credential.issuer == iss and credential.subject == sub and credential.audience in auds:
                return credential
        shown_aud = aud if isinstance(aud, str) else ",".join(str(a) for a in auds)
        generic = EntraError(
            70021,
            "invalid_client",
            "No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{shown_aud}'. "
            f"{DOCS_FIC}",
            status=401,
        )
        propagating = len(active) < len(identity.credentials)
        if self.options.mismatch_style == "generic" or propagating:
            raise generic
        check = " Check your federated identity credential Subject, Audience and Issuer against the presented"
        by_issuer = [c for c in active if c.issuer == iss]
        if not by_issuer:
            raise EntraError(
                700211,
                "invalid_client",
                f"No matching federated identity record found for presented assertion issuer '{iss}'. Please "
                "note that the matching is done using a case-sensitive comparison." + check + " assertion. "
                + DOCS_FIC,
                status=401,
            )
        if not [c for c in by_issuer if c.subject == sub]:
            raise EntraError(
                700213,
                "invalid_client",
                f"No matching federated identity record found for presented assertion subject '{sub}'."
                + check + " assertion. " + DOCS_FIC,
                status=401,
            )
        raise EntraError(
            700212,
            "invalid_client",
            f"No matching federated identity record found for presented assertion audience '{shown_aud}'."
            + check + " assertion. " + DOCS_FIC,
            status=401,
        )

    def _check_signature(
        self, assertion: str, header: dict[str, Any], credential: FederatedCredential
    ) -> None:
        bad = EntraError(
            700027, "invalid_client", "Client assertion failed signature validation.", status=401
        )
        kid = header.get("kid")
        if header.get("alg") not in ASSERTION_ALGORITHMS or not isinstance(kid, str):
            raise bad
        try:
            jwks_uri = self.jwks.discover_jwks_uri(credential.issuer)
            key = self.jwks.get_key(jwks_uri, kid)
        except KeyError as exc:
            raise bad from exc
        except Exception as exc:  # network or document errors reaching the issuer's metadata
            raise EntraError(
                50166, "invalid_request", "Request to External OIDC endpoint failed."
            ) from exc
        try:
            jwt.decode(
                assertion,
                key,
                algorithms=ASSERTION_ALGORITHMS,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise bad from exc

    def _check_scope(self, tenant_id: str, scope: str | None) -> str:
        if not scope:
            raise EntraError(
                70011, "invalid_scope", "The provided request must include a 'scope' input parameter."
            )
        # Client credentials take exactly one scope: the resource's identifier with /.default.
        if " " in scope.strip() or not scope.endswith("/.default") or scope == "/.default":
            raise EntraError(
                70011,
                "invalid_scope",
                f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not "
                "valid. Client credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        audience = scope[: -len("/.default")]
        if audience.rstrip("/") not in self._tenants.get(tenant_id, set()):
            raise EntraError(
                500011,
                "invalid_resource",
                f"The resource principal named {audience} was not found in the tenant named {tenant_id}. "
                "This can happen if the application has not been installed by the administrator of the "
                "tenant or consented to by any user in the tenant. You might have sent your authentication "
                "request to the wrong tenant.",
            )
        return audience

    def error_body(self, exc: EntraError) -> dict[str, Any]:
        """Entra's error shape: the description carries the code, trace id, correlation id and time."""
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        with self._lock:
            self.errors[exc.code] += 1
        return {
            "error": exc.error,
            "error_description": f"AADSTS{exc.code}: {exc.text} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {stamp}",
            "error_codes": [exc.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base_url}/error?code={exc.code}",
        }

    # -- managed identity endpoint (App Service protocol, api-version 2019-08-01) ------------------
    def msi_response(self, query: dict[str, str], secret: str | None) -> tuple[int, dict[str, Any]]:
        if not secret or not secrets.compare_digest(secret, self.msi_secret):
            return 401, {"error": "unauthorized", "error_description": "X-IDENTITY-HEADER missing or wrong"}
        if query.get("api-version") != "2019-08-01":
            return 400, {"error": "invalid_request", "error_description": "api-version must be 2019-08-01"}
        resource = query.get("resource", "")
        if not resource:
            return 400, {"error": "invalid_request", "error_description": "resource is required"}
        client_id = query.get("client_id")
        with self._lock:
            identity = self._msi.get(client_id) if client_id else next(iter(self._msi.values()), None)
        if identity is None:
            return 400, {"error": "invalid_request", "error_description": "No managed identity was found"}
        if resource.rstrip("/") not in self._tenants.get(identity.tenant_id, set()):
            return 400, {
                "error": "invalid_resource",
                "error_description": f"AADSTS500011: The resource principal named {resource} was not found "
                f"in the tenant named {identity.tenant_id}.",
            }
        token, lifetime = self.issue_token(identity, resource)
        return 200, {
            "access_token": token,
            "expires_on": str(int(self.clock()) + lifetime),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }

    def openid_configuration(self, tenant_id: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant_id}"
        return {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "tenant_region_scope": "EU",
        }


def _parse_assertion(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and unverified claims of the client assertion; AADSTS50027 when it is not a JWT."""
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise EntraError(50027, "invalid_request", "JWT token is invalid or malformed.") from exc
    if not isinstance(claims.get("iss"), str) or not isinstance(claims.get("sub"), str):
        raise EntraError(50027, "invalid_request", "JWT token is invalid or malformed.")
    return header, claims


def _iso7(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


_DISCOVERY_PATHS = (["v2.0", ".well-known", "openid-configuration"], [".well-known", "openid-configuration"])


class _EntraHandler(Handler):
    server: EntraSim

    def do_POST(self) -> None:
        parts = self.path_only.strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            form = self.read_form()
            with self.server._lock:
                self.server.token_requests += 1
            try:
                self.send_json(200, self.server.token_response(parts[0], form), {"Cache-Control": "no-store"})
            except EntraError as exc:
                self.send_json(exc.status, self.server.error_body(exc))
            return
        self.read_body()
        self.send_json(404, {"error": "not_found"})

    def do_GET(self) -> None:
        path = self.path_only.rstrip("/")
        parts = path.strip("/").split("/")
        if path == "/msi/token":
            with self.server._lock:
                self.server.msi_requests += 1
            status, body = self.server.msi_response(self.query, self.headers.get("X-IDENTITY-HEADER"))
            self.send_json(status, body)
        elif parts[-2:] == ["discovery", "keys"] or parts[-3:] == ["discovery", "v2.0", "keys"]:
            self.send_json(200, self.server.public_jwks())
        elif parts[1:] in _DISCOVERY_PATHS:
            if parts[0] not in self.server._tenants:
                description = f"AADSTS90002: Tenant '{parts[0]}' not found."
                self.send_json(400, {"error": "invalid_tenant", "error_description": description})
                return
            self.send_json(200, self.server.openid_configuration(parts[0]))
        else:
            self.send_json(404, {"error": "not_found"})
