"""The recovery after Bane NOR's gateway refuses a storage token before its expiry: a pipeline policy in Bane NOR's
storage client (`storage.banenor_service_client`) that tells the credential which token was refused and sends the
request again. Imports nothing of the relay's: the credential is any object with `invalidate(refused)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

UNAUTHORIZED_RETRIES = 2  # after a 401: once with a new Entra token, once more after a new Skyporten token


class RefusedTokenPolicy:
    """The recovery after Bane NOR's gateway refuses a storage token before its expiry (401: revoked, say), for
    every request of the storage client it sits in: a write, a read-back, a listing.

    An azure-core pipeline policy (`send` and `next`; azure-core links any such object) that wraps the client's
    retry policy: the `retry_policy` option is where the storage SDK takes a policy of ours above its bearer-token
    policy. On a 401 the bearer policy below has already dropped the token it held (azure-core does that on
    every 401); this policy tells the credential which token was refused (the one on the request just sent), so
    the credential drops it too (`BaneNorCredential.invalidate`: one exchange anew for every caller, the
    Skyporten token as well when a fresh token is refused again), then sends the request again, and the bearer
    policy asks the credential for its token anew. At most `retries` times (UNAUTHORIZED_RETRIES); then the 401
    goes to the caller. A request whose body cannot be sent again (a stream that cannot seek back) is not: its
    401 goes to the caller at once, and the next request gets the new token. The token is compared, never logged.
    """

    def __init__(self, retry_policy: Any, credential: Any, retries: int = UNAUTHORIZED_RETRIES) -> None:
        self._retry_policy = retry_policy
        self.credential = credential
        self.retries = retries

    # azure-core links a pipeline by setting each policy's `next`: what follows this one follows the retries.
    @property
    def next(self) -> Any:
        return self._retry_policy.next

    @next.setter  # noqa: A003 - azure-core's name
    def next(self, policy: Any) -> None:
        self._retry_policy.next = policy

    def send(self, request: Any) -> Any:
        rewind = _rewinder(request.http_request.body)
        response = self._retry_policy.send(request)
        resends = self.retries
        while response.http_response.status_code == 401:
            refused = _bearer_token(request.http_request.headers)
            if refused is None:
                break
            self.credential.invalidate(refused)
            if resends == 0 or rewind is None:
                break
            resends -= 1
            rewind()
            response = self._retry_policy.send(request)
        return response


def _bearer_token(headers: Any) -> str | None:
    auth = headers.get("Authorization", "")
    return auth[7:].strip() if isinstance(auth, str) and auth[:7].lower() == "bearer " else None


def _rewinder(body: Any) -> Callable[[], None] | None:
    """What puts a request's body back where it started before it is sent again; None when it cannot be sent
    again (a stream that cannot tell or seek). Bytes, text and no body at all are sent again as they are."""
    if not hasattr(body, "read"):
        return lambda: None
    try:
        start = body.tell()
        seekable = body.seekable() if hasattr(body, "seekable") else True
    except (AttributeError, OSError, ValueError):
        return None
    if not seekable:
        return None
    return lambda: body.seek(start)
