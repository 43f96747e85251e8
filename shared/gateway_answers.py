"""What Bane NOR's side answers means: the one reading of an answer from the payload manager gateway or the storage
behind it, whichever component met it (the copier's writes, the read-back and the batch listing, `doctor`'s probes).

`read_answer` turns (status, storage error code, method) into transient or not, the hint, and the link it refuses;
the copy path (shared/copy_errors.py: the `CopyFailed` family) and every other path (`gateway_error`: a
`GatewayError`) both build their error from it, so one answer carries the same attributes on every path. The
hints are one table, by storage error code first, then by HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GatewayError, RelayError, banenor_link_refusal, first_line

BANENOR_HINTS: dict[int | str, str] = {
    401: "the gateway refused the storage token: BANENOR_STORAGE_AUDIENCE must be Bane NOR's external account URL "
         "for this environment, and BANENOR_ENVIRONMENT must match it; run `doctor` to check the trust chain",
    "AuthorizationPermissionMismatch": "only Bane NOR can fix this: ask them to grant the identity RBAC "
    "and ACL (-wx on the directory, --x on every parent) for this path",
    403: "the managed identity lacks RBAC or ACL rights on this path: only Bane NOR can grant them; report "
         "the container and directory shown (and check BANENOR_DIRECTORY)",
    "ContainerNotFound": "the container does not exist: check BANENOR_CONTAINER with Bane NOR",
    404: "the container does not exist: check BANENOR_CONTAINER with Bane NOR",
    400: "Bane NOR's gateway or storage refused the request (name, extension or API version): see docs/gateway.md",
    413: "a request was over the gateway's 100 MB limit: lower BLOCK_SIZE / SINGLE_PUT_LIMIT",
    409: "the destination already exists",
}
# What the gateway itself answers without a storage error code (token, request size, policy); any other answer
# without one is not from storage at all (a proxy's or a firewall's page).
GATEWAY_OWN_STATUSES = (400, 401, 413)
NOT_STORAGE_HINT = "the answer was not a storage error: check BANENOR_STORAGE_URL (Bane NOR's gateway)"


@dataclass(frozen=True)
class Answer:
    """One answer from Bane NOR's side as the relay reads it: `transient` (a later retry may succeed without anyone
    acting), `hint` (what to do), `link` ("gateway" when the answer refuses the link rather than one file: the
    token, RBAC/ACL, the container; else None). `errors.kind_of` decides from these, on any error built from it."""

    transient: bool
    hint: str
    link: str | None


def read_answer(status: int, code: str | None, method: str | None = None) -> Answer:
    """The one reading of an HTTP error answer from Bane NOR's gateway or the storage behind it.

    What may pass without anyone acting is transient: server trouble, throttling, a lease a reader holds for a
    moment, and an answer that is not a storage error at all (a proxy's or a firewall's page). A storage error
    with a meaning (403 ACL, 404 container, 400/413 policy) needs someone to act: terminal. Storage names its
    error in every answer with a body; a HEAD carries none, so no code there does not mean a proxy's page. Which
    answers refuse the link is `errors.banenor_link_refusal` (the same rule a bare `CopyFailed` uses).
    """
    transient, hint = banenor_answer(status, code, has_body=method != "HEAD")
    return Answer(transient, hint, "gateway" if banenor_link_refusal(status, code, method) else None)


def banenor_hint(status: int | None, code: str | None) -> str | None:
    """The hint for a refusal from Bane NOR's side (None: the table has none)."""
    return BANENOR_HINTS.get(code or "") or BANENOR_HINTS.get(status or 0)


def banenor_answer(status: int, code: str | None, *, has_body: bool = True) -> tuple[bool, str]:
    """(transient, hint) of an answer (`read_answer` says which; `has_body=False`: a HEAD's answer)."""
    not_storage = has_body and code is None
    transient = (status >= 500 or status in (408, 429) or (code or "").startswith("Lease")
                 or (not_storage and status not in (400, 401, 403, 404, 409, 412, 413)))
    if not_storage and status < 500 and status not in GATEWAY_OWN_STATUSES:
        return transient, f"{NOT_STORAGE_HINT}; the next run retries it"
    if transient:
        return True, "transient: the next run retries it"
    return False, banenor_hint(status, code) or (NOT_STORAGE_HINT if has_body else "retry later")


def answer_of(exc: Exception) -> tuple[int | None, str | None, str | None]:
    """(status, storage error code, request method) of an azure-core error: what `read_answer` reads. The code is
    None when the answer is not a storage error (HTML, empty, JSON) or a HEAD's; the method None when unknown."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    return status, None if code is None else str(getattr(code, "value", code)), request_method(exc)


def request_method(exc: Exception) -> str | None:
    """The HTTP method of the request an azure-core error answers (None: not known)."""
    request = getattr(getattr(exc, "response", None), "request", None)
    return getattr(request, "method", None)


def gateway_error(exc: Exception, blob: str | None) -> RelayError:
    """Translate a storage SDK error from Bane NOR's side into a GatewayError (SAS and tokens never quoted): the
    probes', the read-back's and the listings' error; the copy's is `copy_errors.translate`, from the same
    `read_answer`."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return GatewayError(f"Bane NOR's gateway could not be reached writing {blob!r} ({type(exc).__name__}).",
                            hint="check BANENOR_STORAGE_URL and outbound network access", blob=blob,
                            transient=True)
    status, code, method = answer_of(exc)
    if isinstance(exc, HttpResponseError) and status is not None:
        text = f"Bane NOR's gateway answered HTTP {status}{f' {code}' if code else ''} for {blob!r}"
        reason = first_line(getattr(exc, "reason", "") or "")
        if reason:
            text += f" ({reason})"
        answer = read_answer(status, code, method)
        return GatewayError(text + ".", hint=answer.hint, status=status, error_code=code, blob=blob,
                            transient=answer.transient, trust_chain=answer.link is not None)
    return GatewayError(f"Writing {blob!r} to Bane NOR failed ({type(exc).__name__}).", hint="retry later",
                        blob=blob, transient=True)
