"""The state of the links the relay depends on: a broken link is one record and one log line, not a failure per file.

A link (doctor's names: key_vault, key, skyporten, entra, gateway, exports) that refuses is recorded once in the
ledger (`links/<link>.json`, create-only, so concurrent runs agree on one broken period) and logged once, as the
line the broken-link alert matches. Every later run probes the link first and, once it answers, removes the record
and logs that it works again. A run never waits for a person: the next run after the cause is gone delivers.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from .errors import RelayError, first_line
from .ledger import Ledger, LinkState

log = logging.getLogger(__name__)

# The links the token preflight proves (one token for the storage audience needs all four).
TOKEN_LINKS = ("key_vault", "key", "skyporten", "entra")
# What each link is, in an operator's words (status, doctor).
LINK_TITLES = {
    "key_vault": "the Key Vault holding the Maskinporten key",
    "key": "the Maskinporten signing key",
    "skyporten": "Skyporten",
    "entra": "Entra ID in Bane NOR's tenant",
    "gateway": "Bane NOR's storage (through the payload manager gateway)",
    "exports": "the partner's export storage",
    "ledger": "the ledger in the partner's storage",
}


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_of(exc: RelayError, now: float) -> LinkState:
    """The record for a refusal about a link (`exc.link` set)."""
    assert exc.link is not None
    return LinkState(link=exc.link, since=now, cause=first_line(exc.message), fix=exc.hint or "run `doctor`",
                     status=getattr(exc, "status", None),
                     code=_text(getattr(exc, "error_code", None) or getattr(exc, "code", None)),
                     transient=bool(exc.transient))


def _text(code: Any) -> str | None:
    return None if code is None else str(getattr(code, "value", code))


def describe(state: LinkState) -> str:
    """One sentence for `status` and `doctor`: what is broken since when, the refusal, the fix, what happens next."""
    refusal = " ".join(str(p) for p in (state.status, state.code) if p)
    return (f"{LINK_TITLES.get(state.link, state.link)} {'stopped answering' if state.transient else 'refuses'} "
            f"since {iso(state.since)}{f' ({refusal})' if refusal else ''}: {state.cause} Fix: {state.fix}; "
            "the relay tries the link again every run and resumes by itself")


class Links:
    """One process's view of the links, kept in the ledger. Thread-safe; one per Relay."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.clock = clock
        self._lock = threading.Lock()
        self.known: dict[str, LinkState] = {}  # links this process knows to be broken

    def load(self) -> dict[str, LinkState]:
        """The broken links the ledger records (one listing); {} when the ledger cannot say (the run finds out)."""
        try:
            states = {s.link: s for s in self.ledger.link_states()}
        except Exception:  # the ledger's own link; the run meets it and reports it
            return dict(self.known)
        with self._lock:
            self.known = dict(states)
        return states

    def broken(self, exc: RelayError) -> LinkState:
        """Record that `exc.link` is broken; logs the alert's line only when this starts a broken period."""
        state = state_of(exc, self.clock())
        try:
            held = self.ledger.record_link(state)
        except Exception:  # the ledger cannot be written (its own link): log the line all the same
            held = state
        with self._lock:
            new = held is state  # created now: a broken period begins
            self.known[state.link] = held
        if new:
            log.error("link broken link=%s since=%s status=%s code=%s cause=%s", state.link, iso(state.since),
                      state.status or "-", state.code or "-", state.cause,
                      extra={"relay_link": {"link": state.link, "state": "broken", "since": iso(state.since),
                                            "status": state.status, "code": state.code}})
        return held

    def working(self, *links: str) -> None:
        """`links` answered: forget each that was recorded broken, and log the end of its broken period once."""
        with self._lock:
            ended = [self.known.pop(link) for link in links if link in self.known]
        for state in ended:
            try:
                if not self.ledger.clear_link(state.link):
                    continue  # another run recorded the end already
            except Exception as exc:  # the next run tries again
                log.info("link %s answers again; its record stays until the ledger can be written (%s)",
                         state.link, type(exc).__name__)
                continue
            seconds = max(0, int(self.clock() - state.since))
            log.warning("link restored link=%s since=%s seconds=%d", state.link, iso(state.since), seconds,
                        extra={"relay_link": {"link": state.link, "state": "working", "since": iso(state.since),
                                              "seconds": seconds}})
