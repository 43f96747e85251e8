"""The relay's error tree: one root, a few kinds that carry data and a remediation hint.

    RelayError
    ├── ConfigError            settings missing or malformed (lists every problem at once)
    ├── SigningKeyError        the Maskinporten key cannot be read or is unusable (Key Vault, PEM, JWK, PFX)
    ├── TokenError             a token request was refused or failed
    │   ├── MaskinportenError  Skyporten (Maskinporten) refused the grant: OAuth error + MP-nnn code
    │   └── EntraError         Entra ID refused the exchange: AADSTS code
    ├── GatewayError           Bane NOR's gateway or storage refused a request (401/403/400/413/404)
    ├── NameRejected           a source name or extension Bane NOR would refuse (recorded, never retried)
    ├── ListingError           a listing that does not end (a continuation marker that keeps coming)
    ├── LinkDown               every request to a link failed for a while: the link's state, not the files'
    └── DeliveryError          a copy failed (source changed, destination conflict, verification failed)

Every refusal is of one of three kinds, read from the error's own attributes (`kind_of`):
- about a link (`link` is set: key_vault, key, skyporten, entra, gateway, exports; doctor's names): the link is
  broken, no file is to blame; a run stops using it and charges no file (shared/links.py records its state);
- transient (`transient`): a later retry may succeed without anyone acting: backoff, poisoned after MAX_ATTEMPTS;
- about this file, for good (neither): rejected or poisoned at once, with its reason.

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

    `hint` says what to do about it (which setting, which portal step). Two attributes decide what happens next,
    and nothing else does (`kind_of`):
    - `link`: the link that refused (doctor's name for it), or None when the refusal is not about a link. A broken
      link blames no file: a run stops early, charges no file and records the link's state once;
    - `transient`: a later retry may succeed without anyone changing anything (backoff, then poisoned after
      MAX_ATTEMPTS); when False (and no link) the failure is terminal at once (poisoned, with its reason).
    `trust_chain` (a link is broken) is kept for readers of the older flag.
    """

    transient = False
    link: str | None = None

    @property
    def trust_chain(self) -> bool:
        return self.link is not None

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

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False,
                 stage: str = "material") -> None:
        super().__init__(message, hint=hint)
        self.transient = transient
        self.stage = stage
        self.link = "key_vault" if stage == "access" else "key"


class TokenError(RelayError):
    """A token request failed: a link of the chain of trust (Skyporten unless a subclass says), no file's fault."""

    link = "skyporten"

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

    link = "entra"


class GatewayError(RelayError):
    """Bane NOR's gateway or storage refused a request. `link` is "gateway" when the refusal is about the link
    (401, 403 RBAC/ACL, 404 container: `trust_chain=True` says the same), None when about one file."""

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
        self.link = "gateway" if trust_chain else None


class NameRejected(RelayError):
    """A source path cannot be delivered under Bane NOR's naming rules; never retried."""

    def __init__(self, source_name: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{source_name!r} cannot be delivered: {reason}", hint=hint)
        self.source_name = source_name
        self.reason = reason


class ListingError(RelayError):
    """A listing kept answering empty pages with a continuation marker past its bound (legal in Azure, endless in a
    misbehaving server): stopped, so no run loops for ever. Transient: the next run lists again."""

    transient = True


class LinkDown(RelayError):
    """Every request to a link failed for a while (a window of transient failures, past each file's own retries):
    the link's state, not many file failures. The run stops using it; the next run tries again."""

    transient = True

    def __init__(self, link: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.link = link


class DeliveryError(RelayError):
    """Copying one export failed; `transient` says whether a retry may help."""

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = True) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


def kind_of(exc: BaseException) -> str:
    """The one reading of a refusal: "link" (a link is broken, no file to blame), "transient" (retry with
    backoff), or "file" (this file, for good). Errors the relay did not classify (a connection reset inside an
    SDK) are transient."""
    if isinstance(exc, RelayError):
        return "link" if exc.link is not None else "transient" if exc.transient else "file"
    return "transient"
