"""Which link of the chain broke, why, and what to do: the command line's one message per failure.

`diagnose(exc, link, settings)` turns anything a command meets (our RelayErrors, azure-core's transport and HTTP
errors on the partner's storage) into a `LinkFailure`: the link (named as `doctor` names them, so the exit code
is the same), the cause in one sentence and the fix (which setting, which role, which portal step). The raw
exception is never shown; `--verbose` logs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    EntraError,
    GatewayError,
    LinkFailure,
    MaskinportenError,
    RelayError,
    SigningKeyError,
    TokenError,
    scrub,
)

if TYPE_CHECKING:
    from .config import BanenorSettings, ExportSettings

PARTNER_ROLES = {"exports": "Storage Blob Data Reader", "ledger": "Storage Blob Data Contributor"}
PARTNER_SETTINGS = {"exports": "EXPORT_CONTAINER", "ledger": "LEDGER_CONTAINER"}
STORAGE_SETTING = "EXPORT_STORAGE (local) or EXPORT_STORAGE__blobServiceUri (Azure)"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        inner = getattr(current, "inner_exception", None) or getattr(current, "error", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    return seen


def transport_cause(exc: BaseException) -> str | None:
    """What went wrong on the way to a server (no answer at all), in words; None if an answer came."""
    import ssl

    text = " ".join(f"{type(e).__name__}: {e}" for e in _chain(exc))
    chain = _chain(exc)
    if any(isinstance(e, ssl.SSLError) for e in chain) or "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
        return "TLS failed: the server's certificate is not trusted (or the server does not speak TLS)"
    if any(s in text for s in ("NameResolutionError", "Name or service not known", "nodename nor servname",
                               "getaddrinfo failed", "Temporary failure in name resolution", "No address associated")):
        return "the host name could not be resolved (DNS)"
    if "Connection refused" in text or any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "the connection was refused (nothing listens there, or a firewall refuses it)"
    if "timed out" in text.lower() or any(isinstance(e, TimeoutError) for e in chain):
        return "the connection timed out (a firewall or network rule drops it, or the host is down)"
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError):
        return "the connection failed or was cut"
    return None


def partner_storage_failure(exc: BaseException, link: str, container: str, endpoint: str | None) -> LinkFailure:
    """A failure on the partner's own storage account: the export container (`exports`) or the ledger."""
    role = PARTNER_ROLES[link]
    cause = transport_cause(exc)
    where = f" at {endpoint}" if endpoint else ""
    if cause is not None:
        fix = (f"check the account's blob endpoint in {STORAGE_SETTING}, and the account's network rules"
               + ("; give REQUESTS_CA_BUNDLE the CA that signed the endpoint's certificate" if "TLS" in cause else ""))
        return LinkFailure(link, f"the partner's storage{where} cannot be reached for container {container!r}: "
                           f"{cause}.", fix)
    status = getattr(exc, "status_code", None)
    if status == 404:
        return LinkFailure(link, f"container {container!r} does not exist in the partner's storage account.",
                           f"check {PARTNER_SETTINGS[link]}, or create the container")
    if status == 403:
        return LinkFailure(link, f"access to container {container!r} was denied (403).",
                           f"grant the function app's managed identity (or the account you run this as) '{role}' on "
                           "it, and check the account's network rules")
    from azure.core.exceptions import ClientAuthenticationError

    if isinstance(exc, ClientAuthenticationError) and status is None:
        return LinkFailure(link, f"no token for the partner's storage (container {container!r}): the managed "
                           "identity or your Azure sign-in is not available here.",
                           "run this in the function app's environment, or `az login` with an account that has "
                           f"'{role}'; locally, use EXPORT_STORAGE (a connection string)")
    detail = f"HTTP {status}" if status else type(exc).__name__
    return LinkFailure(link, f"the partner's storage failed on container {container!r} ({detail}).",
                       f"check {STORAGE_SETTING} and the account's network rules; --verbose shows the detail")


def diagnose(exc: BaseException, link: str | None, exports: ExportSettings | None = None) -> LinkFailure | None:
    """The LinkFailure for `exc` met while working on `link` (None: use the exception's own kind); None when
    `exc` is nothing we know (the caller reports it as an unexpected error). `exports`: the partner's storage
    settings, to name its container and endpoint."""
    if isinstance(exc, LinkFailure):
        return exc
    if isinstance(exc, SigningKeyError):
        return LinkFailure("key_vault" if exc.stage == "access" else "key", exc.message, exc.hint or "")
    if isinstance(exc, MaskinportenError):
        return LinkFailure("skyporten", exc.message, exc.hint or "check MASKINPORTEN_TOKEN_ENDPOINT")
    if isinstance(exc, EntraError):
        return LinkFailure("entra", exc.message, exc.hint or "check BANENOR_TENANT_ID and BANENOR_CLIENT_ID")
    if isinstance(exc, TokenError):
        return LinkFailure("skyporten", exc.message, exc.hint or "")
    if isinstance(exc, GatewayError):
        return LinkFailure("gateway", exc.message, exc.hint or "")
    if link in PARTNER_ROLES and exports is not None:
        from azure.core.exceptions import AzureError

        if isinstance(exc, AzureError | ConnectionError):
            container = exports.ledger_container if link == "ledger" else exports.container
            return partner_storage_failure(exc, link, container, partner_endpoint(exports))
    if isinstance(exc, RelayError):
        return LinkFailure(link or "gateway", exc.message, exc.hint or "")
    return None


def partner_endpoint(exports: ExportSettings) -> str | None:
    """The partner's blob endpoint, without any key or SAS."""
    if exports.service_uri:
        return scrub(exports.service_uri)
    for part in (exports.connection_string or "").split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "blobendpoint":
            return scrub(value.strip())
    return None


def container_of(exc: BaseException, exports: ExportSettings) -> str | None:
    """`ledger` or `exports`: which container a storage error's request was for, if it says."""
    response = getattr(exc, "response", None)
    url = str(getattr(getattr(response, "request", None), "url", "") or "")
    if not url:
        return None
    from urllib.parse import urlsplit

    segments = [s for s in urlsplit(url).path.split("/") if s]
    if exports.ledger_container in segments[:2]:
        return "ledger"
    if exports.container in segments[:2]:
        return "exports"
    return None


def gateway_unreachable(exc: BaseException, banenor: BanenorSettings) -> LinkFailure | None:
    """A LinkFailure when `exc` means Bane NOR's gateway gave no answer at all (any HTTP answer means it is
    reachable: what it answered is for the delivery to judge)."""
    cause = transport_cause(exc)
    if cause is None:
        return None
    fix = ("check BANENOR_STORAGE_URL (leave it unset in Azure: BANENOR_ENVIRONMENT presets it) and this machine's "
           "outbound network access (firewall, proxy)")
    if "TLS" in cause:
        fix += "; a proxy that inspects TLS needs its CA in REQUESTS_CA_BUNDLE"
    return LinkFailure("gateway", f"Bane NOR's gateway at {scrub(banenor.storage_url)} cannot be reached: "
                       f"{cause}.", fix)
