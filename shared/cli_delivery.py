"""The commands that deliver: `send` (local files into the export container, then delivered at once, with a progress
bar) and `sync` (one batch sync now, or its dry run), each with its summary, its exit code (what this run did), and
what Ctrl-C says at once about the work in flight (`terminal.on_interrupt`).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from .cli_links import check_exports, check_gateway, command_runtime, on_link
from .doctor import DOCTOR_EXIT
from .terminal import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Output,
    Progress,
    StderrLine,
    delivery_exit,
    on_interrupt,
    outcome_line,
    report,
)

# -- send ----------------------------------------------------------------------------------------------------
SEND_ABANDON = "abandoned at once (second Ctrl-C); the line above says what becomes of the file."


def missing_files(paths: list[str]) -> list[str]:
    """Each FILE of `send` that is no readable regular file, with why: a command-line mistake, found before
    anything is uploaded (nothing reached the export container, so no sync could retry it)."""
    problems = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            problems.append(f"{text}: is a directory, not a file")
        elif not path.is_file():
            problems.append(f"no such file: {text}")
    return problems


class SendPosition:
    """Where Ctrl-C finds `send`: the file (`index` in `files`), its phase (upload, deliver or between files) and the
    results so far; `notice()` says what becomes of that file and of the rest."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.name: str | None = None
        self.phase: str | None = None
        self.index = 0
        self.results: list[dict[str, Any]] = []

    def notice(self) -> str:
        name, rest = self.name, [str(p) for p in self.files[self.index + 1:]]
        if self.phase == "upload":
            text = (f"interrupted: {name} never reached the export container (an upload cut off is not committed), "
                    "so nothing of it was delivered and no sync will send it: run send again for it")
        elif self.phase == "deliver":
            text = (f"interrupted while delivering {name}: it is in the export container, and the next sync "
                    "delivers it (after this delivery's claim lapses, at most 10 minutes; a copy cut off is never "
                    "committed at Bane NOR)")
        else:
            text = "interrupted before any file was sent"
        done = len(self.results)
        return (text + (f"; {done} file(s) before it are done" if done else "")
                + (f"; not sent: {', '.join(rest)}" if rest else "") + ".")


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    """Put local files into the export container, then deliver them with the same engine as the triggers."""
    problems = missing_files(args.files)
    if problems:
        return report(out, EXIT_CONFIG, "send: " + "; ".join(problems) + ". Nothing was sent.",
                      "give the paths of existing local files (each FILE is uploaded, then delivered)")
    rt = command_runtime()
    check_exports(rt)
    with on_link("ledger", rt.settings):
        rt.relay  # noqa: B018 - builds the ledger (creates its container if missing)
    check_gateway(rt)
    at = SendPosition(args.files)
    line = StderrLine()
    with on_interrupt(line, at.notice, SEND_ABANDON):
        try:
            for index, path_text in enumerate(args.files):
                _send_one(rt, args, index, path_text, at, line)
        except KeyboardInterrupt:
            line.end()
            out.data({"interrupted": True, "results": at.results, "exit_code": EXIT_INTERRUPTED})
            return EXIT_INTERRUPTED
    return _send_summary(out, at.results)


def _send_one(rt: Any, args: argparse.Namespace, index: int, path_text: str, at: SendPosition,
              line: StderrLine) -> None:
    """Upload FILE `path_text` into the export container, then deliver it; its result goes to `at.results`."""
    s = rt.settings
    path = Path(path_text)
    name = f"{args.to.strip('/')}/{path.name}" if args.to else path.name
    size = path.stat().st_size
    at.name, at.phase, at.index = name, "upload", index
    with path.open("rb") as handle, on_link("exports", s):
        rt.exports.get_blob_client(name).upload_blob(
            handle, length=size, overwrite=True, max_concurrency=4,
            progress_hook=Progress(name, size, not args.json and size > 8 * 2**20, line),
        )
    at.phase = "deliver"
    with on_link("ledger", s):
        relay = rt.relay  # builds the ledger (creates its container if missing)
    with on_link("ledger", s):
        at.results.append(relay.deliver(name).as_dict())
    at.phase = None


def _send_summary(out: Output, results: list[dict[str, Any]]) -> int:
    """Each file's outcome, and send's exit code from them."""
    out.data(results)
    for r in results:
        out.line(outcome_line(r))
    held = [r for r in results if r["status"] == "held"]
    if held:  # a broken link met by the delivery: the link's code, as doctor numbers it
        return DOCTOR_EXIT.get(held[0].get("link") or "gateway", DOCTOR_EXIT["gateway"])
    return delivery_exit([r["status"] for r in results])


# -- sync ----------------------------------------------------------------------------------------------------
SYNC_NOTICE = ("interrupted: finishing the deliveries in flight, then stopping (Ctrl-C again abandons them); "
               "nothing else starts, and the next sync delivers everything not delivered yet; nothing is lost")
DRY_RUN_NOTICE = "interrupted: the dry run stops; nothing was written"
SYNC_ABANDON = ("abandoned the deliveries in flight: a copy cut off is never committed at Bane NOR, and the next sync "
                "delivers those files again (a large one once its claim lapses, at most 10 minutes, resuming from "
                "its staged blocks)")


class SyncProgress:
    """The sync's `progress`, called from its worker threads with each outcome: counts them, keeps what this run
    shows (for the output and the exit code: the summary itself keeps only counts and what needs attention, so a
    timer run's memory does not grow with the files it delivers), and updates the line on a terminal."""

    def __init__(self, args: argparse.Namespace, line: StderrLine) -> None:
        self.count = 0
        self.shown: list[dict[str, Any]] = []
        self.keep = ("delivered", "would_deliver") if (args.json or args.verbose or args.dry_run) else ()
        self.as_json = args.json
        self.line = line
        self._lock = threading.Lock()

    def __call__(self, outcome: Any) -> None:
        with self._lock:
            self.count += 1
            if outcome.status != "already_delivered" and (outcome.status not in ("delivered", "would_deliver")
                                                          or outcome.status in self.keep):
                self.shown.append(outcome.as_dict())
            if not self.as_json and sys.stderr.isatty():
                self.line.write(f"\r{self.count} processed, last: {outcome.status} {outcome.source_name[:50]:<50}")


def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    rt = command_runtime()
    s = rt.settings
    check_exports(rt)
    with on_link("ledger", s):
        relay = rt.relay  # builds the ledger (creates its container if missing)
    if not args.dry_run:
        check_gateway(rt)  # a broken chain of trust or an unreachable gateway: its link's code, before any file
    line = StderrLine()
    progress = SyncProgress(args, line)
    notice = DRY_RUN_NOTICE if args.dry_run else SYNC_NOTICE
    try:
        with on_interrupt(line, lambda: notice, SYNC_ABANDON), on_link("ledger", s):
            # a ledger or listing failure that ends the run (per-file ones are outcomes)
            summary = relay.sync(dry_run=args.dry_run, progress=progress)
    except KeyboardInterrupt:
        line.end()
        print(f"stopped: the deliveries in flight ended ({progress.count} file(s) processed in this run); the next "
              "sync delivers the rest", file=sys.stderr, flush=True)
        out.data({"interrupted": True, "processed": progress.count, "exit_code": EXIT_INTERRUPTED})
        return EXIT_INTERRUPTED
    line.end()
    _print_sync_summary(out, args, summary, progress.shown)
    return _sync_exit(args, summary, progress.shown)


def _print_sync_summary(out: Output, args: argparse.Namespace, summary: Any, shown: list[dict[str, Any]]) -> None:
    out.data({**summary.counts(), "outcomes": shown})
    if args.dry_run:
        out.line(f"dry run (nothing written): listed {summary.listed}, would deliver {summary.would_deliver}, "
                 f"already delivered {summary.already_delivered}, rejected {summary.rejected}, would fail "
                 f"{summary.failed}, poisoned {summary.poisoned}, waiting for a retry {summary.pending}")
    else:
        out.line(f"listed {summary.listed}, delivered {summary.delivered}, already delivered "
                 f"{summary.already_delivered}, rejected {summary.rejected}, failed {summary.failed}, poisoned "
                 f"{summary.poisoned}, waiting for a retry {summary.pending}, in progress {summary.in_progress}; "
                 f"{summary.bytes / 2**20:.1f} MiB in {summary.seconds:.1f} s")
    for o in shown:
        if o["status"] != "delivered" or args.verbose:
            out.line(outcome_line(o))
    earlier = sum(getattr(summary, k) for k in ("rejected", "poisoned", "pending")) - \
        sum(1 for o in shown if o["status"] in ("rejected", "poisoned", "pending"))
    if earlier > 0:
        out.line(f"  ({earlier} version(s) rejected, poisoned or failed in earlier runs are counted above and do not "
                 "change this run's exit code; `status` lists them with their reasons)")


def _sync_exit(args: argparse.Namespace, summary: Any, shown: list[dict[str, Any]]) -> int:
    if summary.link is not None:
        # A broken link stopped the run (the preflight passed): recorded once, probed by every later run.
        print(f"sync stopped: link {summary.link} is broken: {summary.error}", file=sys.stderr)
        return DOCTOR_EXIT.get(summary.link, DOCTOR_EXIT["gateway"])
    if summary.error:
        print(f"sync stopped: {summary.error}", file=sys.stderr)
        return EXIT_FAILED
    if args.dry_run:
        return EXIT_OK
    # This run's outcomes only: a version rejected or poisoned earlier waits for a person (`status` exits 1 or 3
    # for it); a cron job tells "this run went wrong" from "something waits" by the two commands.
    return delivery_exit({o["status"] for o in shown})
