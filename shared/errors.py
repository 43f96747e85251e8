"""The relay's error tree: one root, a few kinds that carry data and a remediation hint.

    RelayError
    ├── ConfigError            settings missing or malformed (lists every problem at once)
    ├── SigningKeyError        the Maskinporten key cannot be read or is unusable (Key Vault, PEM, JWK, PFX)
    ├── TokenError             a token request was refused or failed
    │   ├── MaskinportenError  Skyporten (Maskinporten) refused the grant: OAuth error + MP-nnn code
    │   └── EntraError         Entra ID refused the exchange: AADSTS code
    ├── GatewayError           Bane NOR's gateway or storage refused a request outside a copy (read-back, probe)
    ├── NameRejected           a source name or extension Bane NOR would refuse (recorded, never retried)
    ├── ListingError           a listing that does not end (a continuation marker that keeps coming)
    ├── LinkDown               every request to a link failed for a while: the link's state, not the files'
    └── DeliveryError          a copy failed (source changed, destination conflict, verification failed)
        └── CopyFailed         one storage request of a copy failed (`side`, `status`, `error_code`, `link`)
            ├── SourceChangedError      the export was rewritten or deleted during the copy
            ├── DestinationExistsError  a create-only write found the destination there
            ├── VerificationError       the bytes read differ from what the source declared
            └── ServerCopyRefusedError  COPY_MODE=server: Bane NOR's storage cannot pull from the source URL

    LinkFailure (not a RelayError: the command line's one message per broken link, shared/diagnosis.py makes it)

An answer from Bane NOR's side is read once, by `gateway_answers.read_answer` (transient, hint, link), whichever
path met it: the copy raises it as a `CopyFailed` (side "destination"), the read-back, listings and probes as a
`GatewayError`; the same answer carries the same `transient`, `link`, `hint`, `status` and `error_code` in both.

Every refusal is of one of three kinds, read from the error's own attributes (`kind_of`):
- about a link (`link` is set: key_vault, key, skyporten, entra, gateway, exports; doctor's names): the link is
  broken, no file is to blame; a run stops using it and charges no file (shared/links.py records its state);
- transient (`transient`): a later retry may succeed without anyone acting: backoff, poisoned after MAX_ATTEMPTS;
- about this file, for good (neither): rejected or poisoned at once, with its reason.

Every message names the cause and the fix; none ever contains a key, grant, assertion or token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


# Server-side copy: storage answers CannotVerifyCopySource with the status it met reading the source (403 or 404:
# the source URL is not reachable for Bane NOR's storage; 5xx: the partner's storage was busy, transient).
SERVER_COPY_CODES = ("CannotVerifyCopySource",)


def banenor_link_refusal(status: int, code: str | None, method: str | None = None) -> bool:
    """Whether an answer from Bane NOR's side refuses the link rather than one file: the token (401), the
    identity's RBAC or ACL on the directory (403, a role or ACL still propagating after onboarding), the container
    (404 ContainerNotFound, or a 404 to a write: Bane NOR redeploying). Nothing a file could change; every write
    would meet it."""
    if code in SERVER_COPY_CODES:
        return False
    if status in (401, 403):
        return True
    return status == 404 and (code == "ContainerNotFound" or method not in (None, "GET", "HEAD"))


class CopyFailed(DeliveryError):
    """A storage request of the copy failed. `side` is "source" or "destination"; `status` and
    `error_code` are the service's (None for a connection error); `blob` names the source export. A 401 from
    the destination is the trust chain's (the storage token was refused), not the file's: `link` names the link
    a refusal is about (`link_of`), None when it is about this file or transient."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        transient: bool = True,
        status: int | None = None,
        error_code: str | None = None,
        blob: str | None = None,
        side: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, transient=transient)
        self.status = status
        self.error_code = error_code
        self.blob = blob
        self.side = side
        self.link = link_of(status, error_code, side, None)


def link_of(status: int | None, code: str | None, side: str | None, method: str | None) -> str | None:
    """The link a storage answer refuses (`banenor_link_refusal` on Bane NOR's side), else None: the partner's own
    storage refusing to read one export is that file's problem."""
    if side == "destination" and status is not None and banenor_link_refusal(status, code, method):
        return "gateway"
    return None


class SourceChangedError(CopyFailed):
    """The export was rewritten or deleted while it was being copied; nothing was committed. Transient:
    the next run reads the new version."""


class DestinationExistsError(CopyFailed):
    """A create-only write found the destination already there (409 BlobAlreadyExists / 412).

    `same_content` is True when the existing blob has this copy's size and Content-MD5 (an earlier attempt
    whose answer was lost, say): the caller may count that as delivered. None when it could not be told.
    """

    def __init__(self, message: str, **kwargs: object) -> None:
        kwargs["transient"] = False
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.same_content: bool | None = None


class VerificationError(CopyFailed):
    """The bytes read do not match what the source declared (size or Content-MD5); nothing committed."""


class ServerCopyRefusedError(CopyFailed):
    """Mode "server" only: the destination could not or would not pull from the source SAS URL."""


def kind_of(exc: BaseException) -> str:
    """The one reading of a refusal: "link" (a link is broken, no file to blame), "transient" (retry with
    backoff), or "file" (this file, for good). Errors the relay did not classify (a connection reset inside an
    SDK) are transient."""
    if isinstance(exc, RelayError):
        return "link" if exc.link is not None else "transient" if exc.transient else "file"
    return "transient"



@dataclass  # not frozen: raising sets __traceback__
class LinkFailure(Exception):
    """One broken link as the command line reports it: `link` is one of doctor.DOCTOR_LINKS (its exit code), with
    the cause in one sentence and the fix. shared/diagnosis.py turns what a command met into one."""

    link: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}"
