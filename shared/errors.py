"""The relay's error tree: one root, a few kinds that carry data and a remediation hint.

    RelayError
    ├── ConfigError            settings missing or malformed (lists every problem at once)
    ├── SigningKeyError        the Maskinporten key cannot be read or is unusable (Key Vault, PEM, JWK, PFX)
    ├── TokenError             a token request was refused or failed
    │   ├── MaskinportenError  Skyporten (Maskinporten) refused the grant: OAuth error + MP-nnn code
    │   └── EntraError         Entra ID refused the exchange: AADSTS code
    ├── GatewayError           Bane NOR's gateway or storage refused a request (401/403/400/413/404)
    ├── NameRejected           a source name or extension Bane NOR would refuse (recorded, never retried)
    └── DeliveryError          a copy failed (source changed, destination conflict, verification failed)

Every message names the cause and the fix; none ever contains a key, grant, assertion or token.
"""

from __future__ import annotations

import re

_SIG = re.compile(r"(?i)(sig=)[^&\s\"'<>]*")
_URL_QUERY = re.compile(r"(?i)(https?://[^\s?\"'<>]+)\?[^\s\"'<>]*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ACCOUNT_KEY = re.compile(r"(?i)(AccountKey|SharedAccessSignature)\s*=\s*[^;\s]*")


def scrub(text: str) -> str:
    """Remove SAS signatures, URL query strings, JWTs and account keys from text headed for a message or log."""
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    text = _SIG.sub(r"\1<redacted>", text)
    text = _ACCOUNT_KEY.sub(r"\1=<redacted>", text)
    return _JWT.sub("[jwt]", text)


def first_line(text: str) -> str:
    """The first line of an error's text, scrubbed of secrets and bounded: what a message may quote of it."""
    return scrub((text.splitlines() or [""])[0])[:200]


class RelayError(Exception):
    """Root of every error the relay raises on purpose.

    `hint` says what to do about it (which setting, which portal step). Two flags decide what happens next, and
    nothing else does (see `shared.relay`):
    - `transient`: a later retry may succeed without anyone changing anything (backoff, then poisoned after
      MAX_ATTEMPTS); when False the failure is terminal at once (poisoned, with its reason, until `retry`);
    - `trust_chain`: the chain of trust is broken (key, Skyporten, Entra, the gateway's 401), so no file is to
      blame: a sync stops early and charges no file.
    """

    transient = False
    trust_chain = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.hint}" if self.hint else self.message


class ConfigError(RelayError):
    """One or more settings are missing or malformed; `problems` lists each (setting, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {name}: {text}" for name, text in self.problems)
        super().__init__(f"{len(self.problems)} setting problem(s):\n{lines}")


class SigningKeyError(RelayError):
    """The Maskinporten signing key cannot be loaded or used.

    `stage` is "access" when the key could not be read (vault unreachable, denied, not found) and "material"
    when it was read but is unusable (malformed, too short, expired certificate).
    """

    trust_chain = True

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False,
                 stage: str = "material") -> None:
        super().__init__(message, hint=hint)
        self.transient = transient
        self.stage = stage


class TokenError(RelayError):
    """A token request failed. `trust_chain` is True: no file is to blame for it."""

    trust_chain = True

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        error: str | None = None,
        code: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error = error
        self.code = code
        self.transient = transient


class MaskinportenError(TokenError):
    """Skyporten (Maskinporten) refused or failed a token request; `code` is the MP-nnn code if any."""


class EntraError(TokenError):
    """Entra ID refused the client-assertion exchange; `code` is the AADSTS code (e.g. "AADSTS70021")."""


class GatewayError(RelayError):
    """Bane NOR's gateway or storage refused a request."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        error_code: str | None = None,
        blob: str | None = None,
        transient: bool = False,
        trust_chain: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error_code = error_code
        self.blob = blob
        self.transient = transient
        self.trust_chain = trust_chain


class NameRejected(RelayError):
    """A source path cannot be delivered under Bane NOR's naming rules; never retried."""

    def __init__(self, source_name: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{source_name!r} cannot be delivered: {reason}", hint=hint)
        self.source_name = source_name
        self.reason = reason


class DeliveryError(RelayError):
    """Copying one export failed; `transient` says whether a retry may help."""

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = True) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient
