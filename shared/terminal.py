"""The terminal side of the command line: output as text or JSON, the exit-code table and the one way a command
reports a failure (`report`), the words every command uses for a file's outcome, a progress bar and the line it
holds open on stderr, what Ctrl-C prints at once, and which log records reach the terminal without --verbose (by
their structured `extra`, never their wording).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .doctor import fmt_time as _fmt_time

# What the SDKs log (the raw Entra error body, retries, connection pool notes) and what the relay logs per file
# (the CLI prints each outcome itself) reach the terminal only with --verbose.
SDK_LOGGERS = ("azure", "msal", "urllib3")


class Output:
    def __init__(self, as_json: bool, stream: Any = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def line(self, text: str = "") -> None:
        if not self.as_json:
            print(text, file=self.stream, flush=True)

    def data(self, payload: Any) -> None:
        if self.as_json:
            print(json.dumps(json_ready(payload), indent=2, default=str), file=self.stream, flush=True)


def json_ready(value: Any, key: str = "") -> Any:
    """--json output in one form for every command: `*_at` times as ISO 8601 UTC strings, etags without the
    quotes HTTP puts around them, a failure's error under `reason` (as for every other outcome)."""
    if isinstance(value, dict):
        return {("reason" if k == "last_error" else k): json_ready(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        return _fmt_time(value) if value else None
    if key.endswith("etag") and isinstance(value, str):
        return value.strip('"')
    return value


# One exit-code table for every command (docs/troubleshooting.md): send and sync say what became of the files,
# a broken link says which link (doctor stops at the first broken one with the same codes: doctor.DOCTOR_EXIT).
EXIT_OK = 0  # every file delivered (or already delivered); the command did what was asked
EXIT_FAILED = 1  # some file failed (retried by the next sync) or is poisoned; or `retry` had nothing to retry
EXIT_CONFIG = 2  # a setting, the --env-file or the command line is wrong
EXIT_REJECTED = 3  # nothing failed, but some file is rejected for good (its name or extension)


def delivery_exit(statuses: list[str] | set[str], error: bool = False) -> int:
    """send's and sync's exit code from what became of the files (EXIT_* above)."""
    if error or {"failed", "poisoned"} & set(statuses):
        return EXIT_FAILED
    if "rejected" in statuses:
        return EXIT_REJECTED
    return EXIT_OK


def report(out: Output, code: int, message: str, fix: str | None, **extra: Any) -> int:
    """A command's failure: one message and its fix on stderr (with --json, also as data on stdout); returns `code`."""
    out.data({"error": message, "fix": fix, "exit_code": code, **extra})
    separator = "\n" if "\n" in message else " "  # a list of setting problems: the fix on a line of its own
    print(f"{message}{separator + 'Fix: ' + fix if fix else ''}", file=sys.stderr, flush=True)
    return code


def next_step(status: str, name: str) -> str:
    """What happens next to a file in this state: the same words in sync's, send's and status's output."""
    if status == "poisoned":
        return f"poisoned: not retried until `retry {name}` (after the cause is fixed)"
    if status == "failed":
        return "retried by the next sync"
    if status == "held":
        return "a link is broken: the next sync delivers it once the link answers"
    return ""


def outcome_line(o: dict[str, Any]) -> str:
    step = next_step(o["status"], o["source_name"])
    reason = o.get("reason") if o["status"] != "delivered" else None
    return (f"  {o['status']:<17} {o['source_name']}{' -> ' + o['destination'] if o.get('destination') else ''}"
            f"{'  ' + reason if reason else ''}{'  [' + step + ']' if step else ''}")


# -- Ctrl-C --------------------------------------------------------------------------------------------------
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class StderrLine:
    """Whether a progress line on stderr ("\r...", no newline yet) is open, so a message starts on a line of its
    own instead of being glued to the bar."""

    def __init__(self) -> None:
        self.open = False

    def write(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()
        self.open = not text.endswith("\n")

    def end(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False


class on_interrupt:
    """Ctrl-C during a send or a sync: says at once what becomes of the work in flight (`notice()`), then lets the
    command stop in order (KeyboardInterrupt: a sync finishes the deliveries in flight first). A second Ctrl-C
    says `abandon` and ends the process at once (exit 130) without waiting for them: nothing half-copied is ever
    committed at Bane NOR, and the next sync delivers what was cut off."""

    def __init__(self, line: StderrLine, notice: Callable[[], str], abandon: str) -> None:
        self.line, self.notice, self.abandon = line, notice, abandon
        self.interrupted = False
        self._previous: Any = None

    def __enter__(self) -> on_interrupt:
        import signal

        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.line.end()
        if self.interrupted:
            print(self.abandon, file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        print(self.notice(), file=sys.stderr, flush=True)
        raise KeyboardInterrupt


# -- send ----------------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr: bytes, rate, ETA."""

    def __init__(self, label: str, total: int, enabled: bool, line: StderrLine | None = None) -> None:
        self.label, self.total, self.enabled = label, total, enabled and total > 0
        self.line = line or StderrLine()
        self.started = time.monotonic()

    def __call__(self, current: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        total = total or self.total
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = current / elapsed
        eta = (total - current) / rate if rate > 0 else 0
        width = 30
        filled = int(width * current / total) if total else width
        self.line.write(f"\r{self.label[:30]:<30} [{'#' * filled}{'.' * (width - filled)}] "
                        f"{current / 2**20:8.1f}/{total / 2**20:.1f} MiB {rate / 2**20:6.1f} MiB/s ETA {eta:4.0f}s"
                        + ("\n" if current >= total else ""))


# The structured `extra` the relay attaches to a record: lines the command prints in its own words (an outcome, a
# sync's summary or stop, a link's state), and retry notes, which are detail until their end is reported.
PRINTED_BY_COMMAND = ("relay", "relay_sync", "relay_sync_error", "relay_link")
RETRY_NOTE_KEY = "relay_retry"


class _QuietFilter:
    """Without --verbose: no SDK log lines, no relay record the command prints itself, and no retry notes; read from
    each record's structured `extra`, never from its wording."""

    def filter(self, record: Any) -> bool:
        if record.name.split(".")[0] in SDK_LOGGERS:
            return False
        if any(hasattr(record, key) for key in PRINTED_BY_COMMAND):
            return False
        return not (getattr(record, RETRY_NOTE_KEY, False) and record.levelno < 40)


def setup_logging(verbose: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_QuietFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
