"""The Bane NOR credential: the Entra exchange in Bane NOR's tenant as an azure-core TokenCredential.

`BaneNorCredential` hands the Skyporten token to azure-identity's `ClientAssertionCredential` as the client
assertion (the managed identity Bane NOR created) and turns AADSTS refusals into clear errors from a table kept
as data (docs/protocol.md sections 4-5). The recovery after the gateway refuses a token (401) before its expiry is
`refused_token.RefusedTokenPolicy`, in the pipeline of the storage client that uses this credential.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import EntraError, MaskinportenError, RelayError, first_line
from .skyporten_token import UNSPECIFIED_AUDIENCE, SkyportenClient

log = logging.getLogger(__name__)

# After a gateway 401 a request is sent again at most this many times: once with a storage token Entra issues
# anew, once more with one exchanged for a new Skyporten token (`BaneNorCredential.invalidate`).


@dataclass(frozen=True)
class AadstsEntry:
    meaning: str
    fix: str
    kind: str = "fatal"  # "fatal" | "federation" (retried for a window) | "expired" (refetch once) | "transient"


_ISSUER_HINT = "check that MASKINPORTEN_ISSUER is the Skyporten issuer Bane NOR trusts (test vs prod)"

# AADSTS codes -> meaning, fix and how to react. Kept as data: Microsoft changes codes (docs/protocol.md section 5).
AADSTS: dict[int, AadstsEntry] = {
    70021: AadstsEntry(
        "no federated credential on the managed identity matches the Skyporten token",
        "ask Bane NOR to check the federated credential: issuer, subject and audience must equal the values "
        "shown (exact, case-sensitive). Right after onboarding, wait a few minutes for it to propagate.",
        "federation"),
    700211: AadstsEntry(
        "no federated credential matches the token's issuer",
        "test vs prod mix-up or a trailing slash: the credential's issuer must be exactly MASKINPORTEN_ISSUER",
        "federation"),
    700212: AadstsEntry(
        "no federated credential matches the token's audience",
        "the Skyporten token's audience differs from the credential's: check MASKINPORTEN_RESOURCE with Bane NOR",
        "federation"),
    700213: AadstsEntry(
        "no federated credential matches the token's subject",
        "the subject must be 0192:<your org no>;banenor:payloadmanager.storage: check the organisation number "
        "Bane NOR registered and that MASKINPORTEN_SCOPE is that one scope",
        "federation"),
    700024: AadstsEntry(
        "the client assertion (Skyporten token) is outside its valid time",
        "check the clock of the machine running the relay (NTP)", "expired"),
    700016: AadstsEntry(
        "the client id is not an application in Bane NOR's tenant",
        "BANENOR_CLIENT_ID must be the managed identity's client id (not its object/principal id), and "
        "BANENOR_TENANT_ID Bane NOR's tenant"),
    90002: AadstsEntry("the tenant does not exist", "check BANENOR_TENANT_ID (a GUID Bane NOR gives you)"),
    # The fix of these two names the presets other than the audience refused (_storage_audience_fix).
    70011: AadstsEntry("the scope is invalid", "check BANENOR_STORAGE_AUDIENCE (the external account URL)"),
    500011: AadstsEntry(
        "the resource (storage audience) is not in Bane NOR's tenant",
        "check BANENOR_STORAGE_AUDIENCE: the external storage account of your Bane NOR environment"),
    50027: AadstsEntry(
        "the client assertion is not a valid JWT",
        "the relay must send the Skyporten access token, whole; check MASKINPORTEN_TOKEN_ENDPOINT"),
    50013: AadstsEntry("the assertion failed signature validation", _ISSUER_HINT),
    700027: AadstsEntry("the client assertion failed signature validation", _ISSUER_HINT),
    53003: AadstsEntry("blocked by Conditional Access in Bane NOR's tenant", "escalate to Bane NOR"),
    90024: AadstsEntry("Entra ID is temporarily unavailable", "retry later", "transient"),
    90055: AadstsEntry("Entra ID throttled the request", "retry later", "transient"),
}
_AADSTS_CODE = re.compile(r"AADSTS(\d+)")
_ECHO = re.compile(r"Assertion (Issuer|Subject|Audience): '([^']*)'")


def aadsts_code(text: str) -> int | None:
    match = _AADSTS_CODE.search(text)
    return int(match.group(1)) if match else None


def entra_error(exc: Exception, assertion_claims: dict[str, Any], settings_view: dict[str, str | None]) -> EntraError:
    """One clear EntraError for an azure-identity ClientAuthenticationError (never quotes a token)."""
    text = str(getattr(exc, "message", None) or exc)
    code = aadsts_code(text)
    entry = AADSTS.get(code or -1)
    if code is None and "temporarily_unavailable" in text:
        entry = AadstsEntry("Entra ID is temporarily unavailable", "retry later", "transient")
    label = f"AADSTS{code}" if code else "no AADSTS code"
    message = f"Entra ID in Bane NOR's tenant refused the token exchange ({label}"
    message += f": {entry.meaning})." if entry else ")."
    fix = entry.fix if entry else None
    if entry is not None and entry.kind == "federation":
        seen = dict(_ECHO.findall(text))
        resource = settings_view.get("resource")
        aud = seen.get("Audience", assertion_claims.get("aud"))
        message += (
            " The Skyporten token carried"
            f" issuer={seen.get('Issuer', assertion_claims.get('iss'))!r},"
            f" subject={seen.get('Subject', assertion_claims.get('sub'))!r},"
            f" audience={aud!r} (resource sent: {resource or 'none'});"
            f" the federated credential on managed identity {settings_view.get('client_id')!r} must have exactly"
            f" issuer={settings_view.get('issuer')!r},"
            f" subject={assertion_claims.get('sub')!r}, audience="
            + ("<the one Bane NOR configured>." if aud == UNSPECIFIED_AUDIENCE else
               f"{assertion_claims.get('aud')!r}.")
        )
        if "resource" in settings_view:  # what was sent is known: say which reading of the audience is in play
            fix = _audience_fix(code, aud, resource) or fix
    if code in STORAGE_AUDIENCE_CODES and settings_view.get("audience"):
        refused = settings_view["audience"] or ""
        message += f" The storage audience asked for {refused!r}."
        fix = _storage_audience_fix(refused)
    description = _entra_description(text)
    if description:
        message += f" Entra said: {description}"
    if code is None and entry is None:
        empty = "no response content" in text.lower()
        message += " The answer was empty." if empty else \
            f" The answer carried no Entra error ({first_line(text)[:160]!r})."
    return EntraError(
        message,
        hint=fix if entry else (
            "see docs/troubleshooting.md for the AADSTS code" if code else
            "check BANENOR_AUTHORITY_HOST (https://login.microsoftonline.com) and BANENOR_TENANT_ID; "
            "a proxy may be answering instead of Entra ID"),
        error="invalid_client" if "invalid_client" in text else None,
        code=label if code else None,
        transient=bool(entry and entry.kind == "transient"),
    )


STORAGE_AUDIENCE_CODES = (70011, 500011)  # the storage audience (BANENOR_STORAGE_AUDIENCE) is unknown to the tenant


def _storage_audience_fix(refused: str) -> str:
    """The fix for a storage audience Bane NOR's tenant does not know: the environments' presets, never the very
    audience that was refused."""
    from .config import ENVIRONMENTS

    presets = [f"{e.name} {e.storage_audience}" for e in ENVIRONMENTS.values() if e.storage_audience != refused]
    return ("BANENOR_STORAGE_AUDIENCE must be the external storage account of the Bane NOR environment that "
            "BANENOR_TENANT_ID belongs to: unset it so that BANENOR_ENVIRONMENT presets it ("
            + ", ".join(presets) + "), or set the account URL Bane NOR gave you; check BANENOR_ENVIRONMENT too")


def _audience_fix(code: int | None, aud: Any, resource: str | None) -> str | None:
    """The fix for a federated credential that did not match the token's audience, from the two readings of the
    open point (docs/protocol.md sections 3-4): the audience bound to the scope, or taken from the grant's resource."""
    if aud == UNSPECIFIED_AUDIENCE and resource is None:
        return ("the Skyporten token has no audience (aud 'unspecified'): Skyporten takes it from the grant's "
                "resource here, and none was sent. Set MASKINPORTEN_RESOURCE to the audience of Bane NOR's "
                "federated credential (ask Bane NOR; Entra's default is api://AzureADTokenExchange)")
    if code != 700212:
        return None  # AADSTS70021 does not say which of issuer, subject and audience failed
    if resource is not None and aud == resource:
        return (f"the token's audience is MASKINPORTEN_RESOURCE ({resource!r}) and Bane NOR's federated credential "
                "expects another: set MASKINPORTEN_RESOURCE to exactly the audience Bane NOR configured")
    if resource is not None:
        return (f"Skyporten bound the audience {aud!r} to the scope and ignored MASKINPORTEN_RESOURCE: ask Bane NOR "
                "to check the federated credential's audience (unset MASKINPORTEN_RESOURCE unless they ask for it)")
    return (f"Skyporten bound the audience {aud!r} to the scope (no MASKINPORTEN_RESOURCE sent): if Bane NOR gave "
            "you a resource value, set MASKINPORTEN_RESOURCE to it; otherwise ask Bane NOR to check the "
            "federated credential's audience")


def _entra_description(text: str) -> str:
    # Keep Entra's own sentence (it carries trace and correlation ids), bounded; it never holds the token.
    match = re.search(r"AADSTS\d+:.*", text, re.S)
    return (match.group(0) if match else "").strip().replace("\n", " ")[:600]


class BaneNorCredential:
    """azure-core TokenCredential for Bane NOR's tenant: Skyporten token -> Entra -> storage token.

    The storage token is cached by azure-identity (renewed from five minutes before expiry); one lock makes
    concurrent callers share one exchange. AADSTS70021-family refusals (a new federated credential propagating)
    are retried with backoff for `federation_retry_seconds`; AADSTS700024 drops the cached Skyporten token and
    retries once. `exchanges` counts the exchanges azure-identity made (each asks for an assertion). Raises
    `EntraError`, `MaskinportenError` or `SigningKeyError` (not azure-core errors, so the storage SDK does not
    retry them for a minute).
    """

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        skyporten: SkyportenClient,
        *,
        authority: str = "https://login.microsoftonline.com",
        federation_retry_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        ca_bundle: str | None = None,
        new_inner: Callable[[Callable[[], str]], Any] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.authority = authority
        self.skyporten = skyporten
        self.federation_retry_seconds = federation_retry_seconds
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        # The token last handed out per scope: compared with a refused one (`invalidate`), never handed out again.
        self._issued: dict[tuple[str, ...], Any] = {}
        self._federation_failing_since: float | None = None
        self.exchanges = 0
        self._last_assertion_claims: dict[str, Any] = {}
        self._ca_bundle = ca_bundle
        # After a 401 the next token comes from an exchange made anew; if that one is refused too, the Skyporten
        # token goes as well (`invalidate`).
        self._recovering = False
        self._recovery_token: str | None = None
        # The inner credential (azure-identity's, with its token cache), given the assertion callback; built anew
        # after a 401 (`invalidate`). `new_inner` stands in for it (tests: shorter retries, scripted answers).
        self._new_inner: Callable[[], Any] = (lambda: new_inner(self._assertion)) if new_inner is not None \
            else self._assertion_credential
        self._inner = self._new_inner()

    def _assertion_credential(self) -> Any:
        from azure.identity import ClientAssertionCredential

        kwargs: dict[str, Any] = {"authority": self.authority, "retry_total": 2}
        if self._ca_bundle:
            kwargs["connection_verify"] = self._ca_bundle
        return ClientAssertionCredential(self.tenant_id, self.client_id, self._assertion, **kwargs)

    def __repr__(self) -> str:
        return f"BaneNorCredential(tenant_id={self.tenant_id!r}, client_id={self.client_id!r})"

    def _assertion(self) -> str:
        # Called by azure-identity for every exchange: hand it a Skyporten token that is still valid. Whatever
        # fails in here is Skyporten's (or the key's) failure, never Entra's: keep it labelled so.
        self.exchanges += 1
        try:
            token = self.skyporten.get_token()
        except RelayError:
            raise
        except Exception as exc:
            raise MaskinportenError(
                f"The Skyporten token could not be obtained ({type(exc).__name__}: {first_line(str(exc))[:120]}).",
                hint="check MASKINPORTEN_TOKEN_ENDPOINT: it must be the Skyporten token endpoint itself",
            ) from None
        self._last_assertion_claims = token.claims
        return token.access_token

    # azure-core's TokenCredential and SupportsTokenInfo protocols
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        info = self._get(scopes, kwargs)
        return AccessToken(info.token, int(info.expires_on))

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self._get(scopes, dict(options or {}))

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()

    def _get(self, scopes: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            exchanges = self.exchanges
            info = self._exchange(scopes, kwargs)  # azure-identity answers from its cache while the token is good
            if self.exchanges != exchanges:  # Entra issued a token (the assertion was asked for): the workbook counts
                log.info("Entra token issued: scope=%s expires_in=%d", " ".join(scopes),
                         int(info.expires_on - self.clock()))
            self._issued[scopes] = info
            if self._recovering:
                self._recovery_token = info.token
                self._recovering = False
            return info

    def invalidate(self, refused: str | None = None) -> bool:
        """Drop the storage token the gateway refused (401) so the next caller gets one Entra issues anew.

        With `refused` (the bearer token that was refused) nothing happens when it is no longer the cached one:
        another delivery's 401 already replaced it, and every delivery in flight shares that one new exchange.
        When the refused token was itself issued anew after a 401, the Skyporten token is dropped too. Returns
        whether anything was dropped. azure-identity's token cache lives in the inner credential, so a new one
        replaces it: otherwise it would hand back the very token that was refused.
        """
        with self._lock:
            if refused is not None and refused not in {info.token for info in self._issued.values()}:
                return False
            if refused is not None and refused == self._recovery_token:
                log.warning("A storage token Entra issued anew was refused too: fetching a new Skyporten token")
                self.skyporten.invalidate()
            self._issued.clear()
            self._recovering = True
            self._recovery_token = None
            old, self._inner = self._inner, self._new_inner()
            if old is not self._inner:
                close = getattr(old, "close", None)
                if close:
                    close()
            return True

    def _exchange(self, scopes: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
        from azure.core.credentials import AccessTokenInfo
        from azure.core.exceptions import ClientAuthenticationError

        refetched = False
        attempt = 0
        while True:
            attempt += 1
            try:
                if hasattr(self._inner, "get_token_info"):
                    result = self._inner.get_token_info(*scopes, options=kwargs or None)
                else:  # pragma: no cover - older azure-identity
                    token = self._inner.get_token(*scopes, **kwargs)
                    result = AccessTokenInfo(token.token, token.expires_on)
                self._federation_failing_since = None
                return result
            except ClientAuthenticationError as exc:
                error = entra_error(exc, self._last_assertion_claims, {
                    "client_id": self.client_id, "issuer": self.skyporten.request.audience,
                    "resource": self.skyporten.request.resource,
                    "audience": scopes[0].removesuffix("/.default") if scopes else "",
                })
                entry = AADSTS.get(aadsts_code(str(exc)) or -1)
                kind = entry.kind if entry else ("transient" if error.transient else "fatal")
                if kind == "expired" and not refetched:
                    refetched = True
                    log.warning("Entra says the Skyporten token is outside its valid time (AADSTS700024): "
                                "fetching a new one and retrying once; check the clock", extra={"relay_retry": True})
                    self.skyporten.invalidate()
                    continue
                if kind == "federation" and not self._no_audience_sent() and self._federation_retry_due(attempt):
                    continue
                raise error from None
            except RelayError:
                raise  # from our assertion callback: Skyporten or the signing key, already clear
            except Exception as exc:  # e.g. a 200 without access_token: not Entra answering as Entra does
                detail = first_line(str(exc))[:120]
                raise EntraError(
                    f"The token exchange with Entra ID failed: the answer from {self.authority} could not be used "
                    f"({type(exc).__name__}: {detail}).",
                    hint="check BANENOR_AUTHORITY_HOST (https://login.microsoftonline.com); a proxy may be "
                    "answering instead of Entra ID",
                    transient=True,
                ) from None

    def _no_audience_sent(self) -> bool:
        """The mismatch is already diagnosed: the Skyporten token's aud is 'unspecified' because Skyporten takes
        it from a resource and none was sent. No federated credential can match that, so waiting for one to
        propagate cannot help: the error (naming MASKINPORTEN_RESOURCE) is raised at once."""
        return (self._last_assertion_claims.get("aud") == UNSPECIFIED_AUDIENCE
                and self.skyporten.request.resource is None)

    def _federation_retry_due(self, attempt: int) -> bool:
        """Back off and retry while a fresh federated credential may still be propagating."""
        now = self.clock()
        if self._federation_failing_since is None:
            self._federation_failing_since = now
        remaining = self._federation_failing_since + self.federation_retry_seconds - now
        if remaining <= 0:
            return False
        delay = min(remaining, 60.0, 5.0 * 2 ** (attempt - 1))
        log.warning("No federated credential matched yet (it may still be propagating); retrying in %.0f s, "
                    "giving up in %.0f s", delay, remaining, extra={"relay_retry": True})
        self.sleep(delay)
        return True
