"""Settings that the local stack (`make stack`, sim/stack.py) wrote, read while that stack is not running.

After `make stack-stop` the stack's `.local/settings.env` is gone and its `local.settings.json` points at loopback
ports where nothing listens: every command would fail at its first link, with a fix meant for Azure (network rules,
firewalls). The command line asks here once, before any command runs, and says what is wrong instead."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from pathlib import Path

# A setting only the local stack writes (sim/stack.py): settings without it are never taken for the stack's.
MARKER = "STACK_PARTNER_ORGNO"
NOT_RUNNING = "the local stack is not running: `make stack`"
_LOOPBACK = re.compile(r"\bhttps?://(127\.0\.0\.1|localhost|\[::1\]):(\d+)", re.IGNORECASE)


def is_stack_settings_file(path: str | Path) -> bool:
    """True for the stack's own `.local/settings.env` (it exists only while the stack runs)."""
    parts = Path(path).parts
    return parts[-2:] == (".local", "settings.env")


def not_running(env: Mapping[str, str], timeout: float = 1.0) -> bool:
    """True when `env` was written by the local stack and none of the loopback endpoints in it accepts a
    connection. One endpoint down while the others answer is that link's failure, reported as such."""
    if MARKER not in env:
        return False
    endpoints = {(host.strip("[]"), int(port)) for value in env.values() for host, port in _LOOPBACK.findall(value)}
    return bool(endpoints) and not any(_accepts(host, port, timeout) for host, port in sorted(endpoints))


def _accepts(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
