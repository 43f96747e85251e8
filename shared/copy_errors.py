"""What a storage error met while copying means: the one translation of an azure-core error into the CopyFailed
family (shared/errors.py), scrubbed of every secret, for both sides of a copy (the partner's source, Bane NOR's
destination, whose answers shared.gateway_answers.read_answer reads as on every other path), and when a
server-side copy is refused for good.
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError

from .errors import (
    SERVER_COPY_CODES,
    CopyFailed,
    DestinationExistsError,
    ServerCopyRefusedError,
    SourceChangedError,
    scrub,
)
from .gateway_answers import answer_of, read_answer


class ServerRefusal(Exception):
    """The destination cannot pull from the source URL; `error` is what mode "server" raises."""

    def __init__(self, reason: str, cause: CopyFailed) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = ServerCopyRefusedError(
            f"server-side copy of {cause.blob!r} refused: {reason}",
            hint="use mode 'auto' or 'stream', or ask Bane NOR to allow copy from the partner's source URL",
            transient=False,
            status=cause.status,
            error_code=cause.error_code,
            blob=cause.blob,
            side=cause.side,
        )


def scrub_in_place(err: BaseException) -> None:
    """The original error is chained as __cause__ and shows in tracebacks: make sure it carries no SAS.

    azure-core's HttpResponseError.__str__ appends the raw response body, and a service may echo the
    x-ms-copy-source header (SAS included) there; the response also holds the request and its headers.
    So an error whose request carried a copy source, or whose body holds a signature, loses its response
    (status_code, reason and error_code stay).
    """
    if isinstance(err, AzureError):
        err.message = scrub(str(err.message))
        if isinstance(getattr(err, "exc_msg", None), str):
            err.exc_msg = scrub(err.exc_msg)
    err.args = tuple(scrub(a) if isinstance(a, str) else a for a in err.args)
    response = getattr(err, "response", None)
    if response is None:
        return
    try:
        carried_source = "x-ms-copy-source" in {k.lower() for k in response.request.headers}
        body = response.text() or ""
    except Exception:  # a response we cannot inspect is dropped, to be safe
        carried_source, body = True, ""
    if carried_source or "sig=" in body.lower():
        err.response = None  # type: ignore[attr-defined]


def _source_answer(status: int, code: str | None) -> tuple[bool, str | None]:
    """(transient, hint) for an error answer from the partner's storage while reading an export."""
    transient = (status >= 500 or status in (408, 429) or (code or "").startswith("Lease")
                 or (code is None and status not in (400, 401, 403, 404, 409, 412, 413)))
    if transient:
        return True, "transient: the next run retries it"
    if status in (401, 403):
        return False, "the relay's identity cannot read the partner's export: check its role on the source account"
    return False, None


def translate(err: AzureError, *, blob: str, side: str, action: str) -> CopyFailed:
    """One storage error -> the DeliveryError subclass that says what happened. Never includes a URL query."""
    scrub_in_place(err)
    if not isinstance(err, HttpResponseError) or err.status_code is None:
        reason = scrub(str(err).splitlines()[0] if str(err) else type(err).__name__)
        return CopyFailed(
            f"{action} {blob!r} failed: connection error ({reason})",
            hint="transient: the next run retries it",
            transient=True,
            blob=blob,
            side=side,
        )
    status, code, method = answer_of(err)
    assert status is not None  # an HttpResponseError with a status (checked above)
    detail = scrub((err.reason or "").strip() or str(err).splitlines()[0])
    label = f"{status} {code or ''}".strip()
    kwargs: dict[str, Any] = {"status": status, "error_code": code, "blob": blob, "side": side}
    if code == "SourceConditionNotMet" or (side == "source" and status in (404, 412)):
        what = "was deleted" if status == 404 else "was rewritten or deleted"
        return SourceChangedError(
            f"{action} {blob!r}: the source {what} during the copy ({label}); nothing was committed",
            hint="transient: the next run copies the new version",
            transient=True,
            **kwargs,
        )
    # 409 BlobAlreadyExists answers If-None-Match: *, 412 ConditionNotMet answers If-Match (a HEAD has no code);
    # other 412s (LeaseIdMissing: Bane NOR holds a lease) are not about what is there and fall through.
    if side == "destination" and (code == "BlobAlreadyExists" or (status == 412 and code in (None, "ConditionNotMet"))):
        return DestinationExistsError(
            f"{action} {blob!r}: the destination already exists, or changed since it was read ({label})",
            hint="the export was delivered before; the relay looks at what is there",
            **kwargs,
        )
    if side != "destination":
        transient, source_hint = _source_answer(status, code)
        return CopyFailed(f"{action} {blob!r} failed: {label}: {detail}", hint=source_hint, transient=transient,
                          **kwargs)
    # Bane NOR's side is read in one place (shared.gateway_answers.read_answer), whichever component met the answer.
    answer = read_answer(status, code, method)
    failed = CopyFailed(f"{action} {blob!r} failed: {label}: {detail}", hint=answer.hint,
                        transient=answer.transient, **kwargs)
    failed.link = answer.link
    return failed


def is_server_refusal(err: CopyFailed) -> bool:
    """Auto mode falls back to streaming when the destination cannot pull from the source URL.

    403 AuthorizationPermissionMismatch is about the destination's own RBAC/ACL (docs/protocol.md section 6)
    and would fail a streamed write too, so it is not a reason to switch modes.
    """
    if err.error_code in SERVER_COPY_CODES:
        # 5xx: the partner's storage was busy answering Bane NOR's read (throttled): transient, not a refusal
        return err.status is None or err.status < 500
    if err.status in (403, 501):
        return err.error_code != "AuthorizationPermissionMismatch"
    return False
