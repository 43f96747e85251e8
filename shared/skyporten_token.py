"""Skyporten (Maskinporten) token client: JWT grant (RFC 7523), token request, cache, retries.

Building the grant's claims is pure (`grant_claims`; the key encodes it); `SkyportenClient.get_token()`
sends it, caches the token until `min(sent_at + expires_in, exp) - margin`, lets exactly one of many
concurrent callers refresh it, retries what is transient and turns refusals into one clear error.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jwt
import requests

from .errors import MaskinportenError
from .signing import SigningKeyProvider

if TYPE_CHECKING:
    from .config import SkyportenSettings

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 section 2.1
GRANT_LIFETIME = 100  # seconds; Maskinporten refuses exp - iat > 120 s (MP-130)
# A token answer is a few KiB; read at most this much, so a runaway answer cannot exhaust memory.
MAX_ANSWER_BYTES = 256 * 1024
_ENDPOINT_HINT = "check MASKINPORTEN_TOKEN_ENDPOINT: it must be the Skyporten token endpoint itself"

# MP-nnn codes -> (what it means, what to fix). Kept as data: Digdir adds codes (docs/protocol.md section 3).
MP_CODES: dict[str, tuple[str, str]] = {
    "MP-100": ("the client was not found or the assertion is invalid",
               "check MASKINPORTEN_CLIENT_ID (the client id of the integration in this environment; test and prod "
               "are separate registrations) and that MASKINPORTEN_KEY_ID is a kid registered on it"),
    "MP-110": ("the grant's aud is not the Skyporten issuer",
               "set BANENOR_ENVIRONMENT to the right environment, or MASKINPORTEN_ISSUER to exactly "
               "https://test.sky.maskinporten.no or https://sky.maskinporten.no (no trailing slash)"),
    "MP-120": ("the certificate is invalid",
               "the enterprise certificate is wrong, expired or not trusted: import a valid one into Key Vault"),
    "MP-121": ("the signing key has expired",
               "self-service keys expire a year after upload: register a new key in Samarbeidsportalen, "
               "store it in Key Vault and set MASKINPORTEN_KEY_ID to its kid"),
    "MP-123": ("the x5c header is invalid", "x5c must be a JSON array of base64 DER certificates"),
    "MP-124": ("the signature does not verify with the key registered under this kid",
               "MASKINPORTEN_KEY_ID names a different key than the one in Key Vault: register this key's "
               "public JWK on the integration, or set the kid of the stored key"),
    "MP-130": ("the grant is expired or issued in the future (clock skew over 10 s)",
               "fix the clock (NTP) of the machine running the relay"),
    "MP-012": ("the grant's jti was used before", "never resend a grant; this is a bug if it repeats"),
    "MP-200": ("the scope is not on the client",
               "add banenor:payloadmanager.storage to the integration in Samarbeidsportalen"),
    "MP-201": ("the scope is not on the client",
               "add banenor:payloadmanager.storage to the integration in Samarbeidsportalen"),
    "MP-250": ("your organisation has not been granted the scope in this environment",
               "ask Bane NOR to grant banenor:payloadmanager.storage to your organisation number"),
}
OAUTH_HINTS: dict[str, str] = {
    "invalid_client": MP_CODES["MP-100"][1],
    "invalid_grant": "check MASKINPORTEN_KEY_ID, the key in Key Vault and the environment (MASKINPORTEN_ISSUER)",
    "invalid_scope": MP_CODES["MP-200"][1],
    "unauthorized_client": "the integration may not use this grant or scope: check it in Samarbeidsportalen",
    "unsupported_grant_type": "the token endpoint is not a Maskinporten one: check MASKINPORTEN_TOKEN_ENDPOINT",
    "invalid_request": "the request was malformed: check MASKINPORTEN_TOKEN_ENDPOINT and MASKINPORTEN_RESOURCE",
}
_MP_CODE = re.compile(r"\bMP-\d{3}\b")


@dataclass(frozen=True)
class GrantRequest:
    """What a grant asks for; also the cache key (scope, resource)."""

    audience: str  # the Skyporten issuer, byte for byte
    client_id: str
    scope: str
    resource: str | None = None
    resource_form: str = "string"


def grant_claims(request: GrantRequest, now: float, jti: str) -> dict[str, Any]:
    """The grant's claims, exactly those Maskinporten documents (others give invalid_grant)."""
    iat = int(now)
    claims: dict[str, Any] = {
        "aud": request.audience,  # = issuer; a trailing slash gives MP-110
        "iss": request.client_id,  # the integration's client id
        "scope": request.scope,  # exactly one scope: Skyporten appends it to `sub`
        "iat": iat,
        "exp": iat + GRANT_LIFETIME,  # at most 120 s after iat
        "jti": jti,  # unique per grant; reuse gives MP-012
    }
    if request.resource:
        # The documented form is open (string vs array): MASKINPORTEN_RESOURCE_FORM chooses.
        claims["resource"] = request.resource if request.resource_form == "string" else [request.resource]
    return claims


def decode_unverified(token: str) -> dict[str, Any]:
    """The claims of a JWT, NOT verified: only for caching and diagnostics (sub/aud/exp). {} when the token
    is not a JWT whose payload is a JSON object."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
        return {}
    return claims if isinstance(claims, dict) else {}


UNSPECIFIED_AUDIENCE = "unspecified"  # Maskinporten's aud when no resource was asked for (docs.digdir.no)


def audience_reading(resource: str | None, aud: Any) -> str:
    """Which reading of the open audience point (docs/protocol.md section 3) a token shows, from the resource sent
    and its aud."""
    if aud == UNSPECIFIED_AUDIENCE or aud is None:
        return ("no audience: no resource was sent and none is bound to the scope; Entra refuses such a token "
                "unless MASKINPORTEN_RESOURCE is set" if resource is None else
                "no audience, although a resource was sent: check MASKINPORTEN_RESOURCE_FORM")
    if resource is not None and (aud == resource or (isinstance(aud, list) and resource in aud)):
        return "taken from the resource sent (MASKINPORTEN_RESOURCE)"
    if resource is not None:
        return "bound to the scope by Bane NOR (the resource sent was ignored)"
    return "bound to the scope by Bane NOR (no resource sent)"


class SkyportenToken:
    """An access token and when it stops being usable. The repr never shows the token."""

    def __init__(self, access_token: str, expires_at: float, scope: str, claims: dict[str, Any]) -> None:
        self.access_token = access_token
        self.expires_at = expires_at
        self.scope = scope
        self.claims = claims

    def __repr__(self) -> str:
        return f"SkyportenToken(scope={self.scope!r}, expires_at={self.expires_at:.0f}, token=[secure])"


class SkyportenClient:
    """Gets Skyporten tokens for one integration; thread-safe, cached per (scope, resource)."""

    def __init__(
        self,
        request: GrantRequest,
        token_endpoint: str,
        keys: SigningKeyProvider,
        *,
        session: requests.Session | None = None,
        verify: str | bool = True,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 30.0,
        max_retries: int = 3,
        timeout: float = 30.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.request = request
        self.token_endpoint = token_endpoint
        self.keys = keys
        self.session = session or requests.Session()
        self.verify = verify
        self.clock = clock
        self.sleep = sleep
        self.margin = margin
        self.max_retries = max_retries
        self.timeout = timeout
        self.jitter = jitter
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], SkyportenToken] = {}
        self.requests_sent = 0
        self.last_response_date: float | None = None  # the server's Date header, for clock checks

    # -- the public surface ---------------------------------------------------------------------------
    def get_token(self, force: bool = False) -> SkyportenToken:
        """A token valid for at least the refresh margin. Raises `MaskinportenError` when refused."""
        cache_key = (self.request.scope, self.request.resource)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None and not force and not self._needs_refresh(cached):
                return cached
            token = self._fetch()
            self._cache[cache_key] = token
            return token

    def invalidate(self) -> None:
        """Forget cached tokens (Entra said the assertion expired: AADSTS700024)."""
        with self._lock:
            self._cache.clear()

    def _needs_refresh(self, token: SkyportenToken) -> bool:
        # Refresh `margin` seconds before the end, but never use more than half the lifetime as margin.
        lifetime = token.expires_at - token.claims.get("iat", token.expires_at - 2 * self.margin)
        margin = min(self.margin, max(lifetime, 0) / 2)
        return self.clock() >= token.expires_at - margin

    # -- one request, with retries ------------------------------------------------------------------
    def build_grant(self) -> str:
        key = self.keys.get()
        claims = grant_claims(self.request, self.clock(), str(uuid.uuid4()))
        return key.encode(claims)

    def _fetch(self) -> SkyportenToken:
        clock_retry_used = False
        attempt = 0
        while True:
            attempt += 1
            grant = self.build_grant()  # a fresh grant (new jti) for every request: MP-012
            sent_at = self.clock()
            try:
                response = self.session.post(
                    self.token_endpoint,
                    data={"grant_type": JWT_BEARER, "assertion": grant},
                    headers={"Accept": "application/json"},
                    timeout=self.timeout,
                    verify=self.verify,
                    # The signed grant goes to the configured endpoint only, never where a 3xx points (plain
                    # http included); the answer is read with a size cap (`_read_capped`).
                    allow_redirects=False,
                    stream=True,
                )
                body = self._read_capped(response)
            except requests.RequestException as exc:
                self.requests_sent += 1
                if attempt <= self.max_retries:
                    self._backoff(attempt, None)
                    continue
                raise MaskinportenError(
                    f"Skyporten token endpoint {self.token_endpoint} is unreachable ({type(exc).__name__}).",
                    hint="check MASKINPORTEN_TOKEN_ENDPOINT and outbound network access",
                    transient=True,
                ) from None
            self.requests_sent += 1
            self._note_date(response)
            if 300 <= response.status_code < 400:
                location = urlsplit(response.headers.get("Location") or "")
                where = f"{location.scheme}://{location.netloc}" if location.netloc else "another path"
                raise MaskinportenError(
                    f"Skyporten's token endpoint {self.token_endpoint} answered with a redirect (HTTP "
                    f"{response.status_code} to {where}); the signed grant is never sent anywhere else.",
                    hint="set MASKINPORTEN_TOKEN_ENDPOINT to the token endpoint itself (e.g. "
                    "https://test.sky.maskinporten.no/token), not an address that redirects",
                    status=response.status_code,
                )
            if response.status_code == 200:
                return self._parse_success(response, body, sent_at)
            if (response.status_code >= 500 or response.status_code == 429) and attempt <= self.max_retries:
                self._backoff(attempt, response.headers.get("Retry-After"))
                continue
            error = self._parse_error(response, body)
            if error.code == "MP-130" and not clock_retry_used:
                # Clock skew or a slow path: one retry with a fresh grant, and a warning (docs/protocol.md section 3).
                clock_retry_used = True
                log.warning("Skyporten says the grant was expired or from the future (MP-130): check the clock; "
                            "retrying once with a fresh grant", extra={"relay_retry": True})
                continue
            raise error

    def _backoff(self, attempt: int, retry_after: str | None) -> None:
        delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + self.jitter() / 2)
        if retry_after:
            try:
                delay = min(30.0, float(retry_after))
            except ValueError:
                pass
        log.warning("Skyporten token request failed; retry %d in %.1f s", attempt, delay, extra={"relay_retry": True})
        self.sleep(delay)

    def _note_date(self, response: requests.Response) -> None:
        date = response.headers.get("Date")
        if date:
            try:
                self.last_response_date = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                pass

    def _read_capped(self, response: requests.Response) -> bytes:
        """The answer's body, at most MAX_ANSWER_BYTES; a larger one is refused without reading the rest."""
        data = bytearray()
        try:
            for chunk in response.iter_content(64 * 1024):
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise MaskinportenError(
                        f"Skyporten's token endpoint {self.token_endpoint} answered with a body larger than "
                        f"{MAX_ANSWER_BYTES // 1024} KiB; a token answer is a few KiB.",
                        hint=_ENDPOINT_HINT, status=response.status_code)
        finally:
            response.close()
        return bytes(data)

    def _malformed(self, what: str, response: requests.Response, body: bytes) -> MaskinportenError:
        return MaskinportenError(
            f"Skyporten answered 200 {what} ({_describe_body(response, body)}).", hint=_ENDPOINT_HINT,
            status=response.status_code)

    def _parse_success(self, response: requests.Response, raw: bytes, sent_at: float) -> SkyportenToken:
        body = _json(raw)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise self._malformed("without an access_token", response, raw)
        access_token = body["access_token"]
        claims = decode_unverified(access_token)
        if not claims:
            raise self._malformed("with an access_token that is not a JWT with a JSON object as payload", response, raw)
        expires_in, exp = _number(body.get("expires_in")), _number(claims.get("exp"))
        if (expires_in is None or expires_in <= 0) and exp is None:
            raise self._malformed("with a token whose lifetime is unknown (no numeric expires_in or exp)",
                                  response, raw)
        # Valid until min(sent_at + expires_in, exp) (docs/protocol.md section 3).
        expires_at = min(t for t in (sent_at + expires_in if expires_in and expires_in > 0 else None, exp)
                         if t is not None)
        if _number(claims.get("iat")) is None:
            claims["iat"] = sent_at  # the refresh margin is measured from it
        scope: str = body["scope"] if isinstance(body.get("scope"), str) else (self.request.scope or "")
        log.info("Skyporten token issued: scope=%s expires_in=%s", scope, expires_in)
        return SkyportenToken(access_token, expires_at, scope, claims)

    def _parse_error(self, response: requests.Response, raw: bytes) -> MaskinportenError:
        status = response.status_code
        body = _json(raw)
        if not isinstance(body, dict) or "error" not in body:
            return MaskinportenError(
                f"Skyporten answered HTTP {status} without an OAuth error ({_describe_body(response, raw)}).",
                hint="check MASKINPORTEN_TOKEN_ENDPOINT; a proxy or the wrong host may be answering",
                status=status, transient=status >= 500,
            )
        error = str(body.get("error"))
        description = str(body.get("error_description") or "")[:500]
        match = _MP_CODE.search(description)
        code = match.group(0) if match else None
        meaning, fix = MP_CODES.get(code or "", (None, OAUTH_HINTS.get(error, "see docs/troubleshooting.md")))
        text = f"Skyporten refused the token request: {error}"
        if meaning:
            text += f" ({code}: {meaning})"
        text += f". Skyporten said: {description!r}" if description else "."
        return MaskinportenError(text, hint=fix, status=status, error=error, code=code,
                                 transient=status >= 500 or status == 429)


def _describe_body(response: requests.Response, body: bytes) -> str:
    ctype = response.headers.get("Content-Type", "no content type")
    return f"{ctype}, {len(body)} bytes" if body else "empty body"


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None


def _number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (strings, booleans, null)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def client_from_settings(skyporten: SkyportenSettings, keys: SigningKeyProvider, **kwargs: Any) -> SkyportenClient:
    """The Skyporten token client for these settings; `kwargs` go to SkyportenClient (`verify`: the CA
    bundle, `clock`, `sleep`, ...)."""
    request = GrantRequest(
        audience=skyporten.issuer,
        client_id=skyporten.client_id,
        scope=skyporten.scope,
        resource=skyporten.resource,
        resource_form=skyporten.resource_form,
    )
    return SkyportenClient(request, skyporten.token_endpoint, keys, **kwargs)
