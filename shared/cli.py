"""The command line: `.venv/bin/python -m shared <command>` for onboarding, manual sends and diagnosis.

Commands: doctor (its checks are shared/doctor.py's), token, send, sync, status, retry. Every command takes
`--json` and `--verbose`; a broken link prints one message (link, cause and fix) and exits with that link's code
(DOCTOR_EXIT), never a traceback. Grants are never printed; a token only when `token --raw` asks for it. Ctrl-C in
`send` and `sync` says at once what becomes of the file in flight (`on_interrupt`); a second Ctrl-C abandons it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from . import doctor, local_stack
from .config import ENV_FILE_FORMATS, load_settings, read_env_file
from .diagnosis import (
    LinkFailure,
    container_of,
    diagnose,
    gateway_unreachable,
)
from .doctor import DOCTOR_EXIT, token_facts
from .doctor import fmt_time as _fmt_time
from .errors import ConfigError, RelayError, scrub
from .links import describe as describe_link
from .terminal import (  # noqa: F401  (the terminal layer: importable from here as before)
    EXIT_INTERRUPTED,
    SDK_LOGGERS,
    Output,
    Progress,
    StderrLine,
    json_ready,
    on_interrupt,
    setup_logging,
)

# One exit-code table for every command (docs/troubleshooting.md): send and sync say what became of the files,
# a broken link says which link (doctor stops at the first broken one with the same codes).
EXIT_OK = 0  # every file delivered (or already delivered); the command did what was asked
EXIT_FAILED = 1  # some file failed (retried by the next sync) or is poisoned; or `retry` had nothing to retry
EXIT_CONFIG = 2  # a setting, the --env-file or the command line is wrong
EXIT_REJECTED = 3  # nothing failed, but some file is rejected for good (its name or extension)
ENV_FILE_FIX = ("give one of: " + ENV_FILE_FORMATS + "; `make stack` writes the local stack's to "
                ".local/settings.env")


def _runtime(args: argparse.Namespace) -> Any:
    from .runtime import get_runtime

    return get_runtime(settings=load_settings(), interactive=True)


class on_link:
    """Turns what a block meets into the LinkFailure of `link` (our errors keep their own link)."""

    def __init__(self, link: str | None, settings: Any = None) -> None:
        self.link, self.settings = link, settings

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, ConfigError | BrokenPipeError | KeyboardInterrupt):
            return False
        link = self.link
        if self.settings is not None and link in ("exports", "ledger"):
            link = container_of(exc, self.settings.exports) or link
        failure = diagnose(exc, link, self.settings.exports if self.settings is not None else None)
        if failure is None:
            return False
        raise failure from exc


# -- token ---------------------------------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    with on_link(None):
        token = rt.skyporten.get_token()
    facts = token_facts(token, time.time(), rt.skyporten.request.resource)
    if args.decode:
        facts["claims"] = {k: v for k, v in token.claims.items() if k not in ("jti",)}
    if args.raw:
        facts["access_token"] = token.access_token
    out.data(facts)
    out.line("Skyporten token issued")
    for key, value in facts.items():
        if key not in ("claims", "access_token"):
            out.line(f"  {key:<13} {'none' if value is None and key == 'resource_sent' else value}")
    if args.decode:
        out.line("  claims       " + json.dumps(facts["claims"], default=str))
    if args.raw:
        out.line(token.access_token)
    return EXIT_OK


def check_exports(rt: Any) -> None:
    """One small listing of the export container: the first link send and sync need, checked as doctor does, so
    a storage account that cannot be reached is reported as the export container (17). Raises LinkFailure."""
    check_partner(rt, "exports")


def check_partner(rt: Any, link: str) -> None:
    """One request to the partner's storage (a one-entry listing of the container of `link`, exports or ledger)
    with the command line's short bounds, before the work: a dead host is reported in about 10 s, while the work
    itself keeps the functions' bounds (a large listing may take a while). A ledger container that does not exist
    yet is no failure (it is created on first use). Raises LinkFailure."""
    from azure.core.exceptions import ResourceNotFoundError

    s = rt.settings
    container = s.exports.container if link == "exports" else s.exports.ledger_container
    with on_link(link, s):
        try:
            pages = rt.partner_probe.get_container_client(container).list_blobs(results_per_page=1).by_page()
            next(iter(pages), None)  # one page: one request
        except ResourceNotFoundError:
            if link == "exports":
                raise


def check_gateway(rt: Any) -> None:
    """Before any file: Bane NOR's gateway answers at all (one small listing of our directory; any HTTP answer,
    a refusal included, will do). A gateway that cannot be reached is the gateway link, not a failure charged to
    every file. Raises LinkFailure."""
    s = rt.settings
    with on_link(None, s):
        rt.relay.preflight()  # the token first: a broken chain of trust is its own link
    prefix = (s.banenor.directory + "/") if s.banenor.directory else None
    try:
        # One page, one request: a listing whose marker keeps coming must not hold the command (its items are
        # not needed, only the answer).
        next(iter(rt.destination.list_blobs(name_starts_with=prefix, results_per_page=1).by_page()), None)
    except Exception as exc:
        failure = gateway_unreachable(exc, s.banenor)
        if failure is not None:
            raise failure from exc


def delivery_exit(statuses: list[str] | set[str], error: bool = False) -> int:
    """send's and sync's exit code from what became of the files (EXIT_* above)."""
    if error or {"failed", "poisoned"} & set(statuses):
        return EXIT_FAILED
    if "rejected" in statuses:
        return EXIT_REJECTED
    return EXIT_OK


def _next_step(status: str, name: str) -> str:
    """What happens next to a file in this state: the same words in sync's, send's and status's output."""
    if status == "poisoned":
        return f"poisoned: not retried until `retry {name}` (after the cause is fixed)"
    if status == "failed":
        return "retried by the next sync"
    if status == "held":
        return "a link is broken: the next sync delivers it once the link answers"
    return ""


def outcome_line(o: dict[str, Any]) -> str:
    step = _next_step(o["status"], o["source_name"])
    reason = o.get("reason") if o["status"] != "delivered" else None
    return (f"  {o['status']:<17} {o['source_name']}{' -> ' + o['destination'] if o.get('destination') else ''}"
            f"{'  ' + reason if reason else ''}{'  [' + step + ']' if step else ''}")


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


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    """Put local files into the export container, then deliver them with the same engine as the triggers."""
    problems = missing_files(args.files)
    if problems:
        return _report(out, EXIT_CONFIG, "send: " + "; ".join(problems) + ". Nothing was sent.",
                       "give the paths of existing local files (each FILE is uploaded, then delivered)")
    rt = _runtime(args)
    s = rt.settings
    check_exports(rt)
    with on_link("ledger", s):
        rt.relay  # noqa: B018 - builds the ledger (creates its container if missing)
    check_gateway(rt)
    results: list[dict[str, Any]] = []
    line = StderrLine()
    at: dict[str, Any] = {"name": None, "phase": None, "index": 0}  # where Ctrl-C finds the command

    def notice() -> str:
        name, rest = at["name"], [str(p) for p in args.files[at["index"] + 1:]]
        if at["phase"] == "upload":
            text = (f"interrupted: {name} never reached the export container (an upload cut off is not committed), "
                    "so nothing of it was delivered and no sync will send it: run send again for it")
        elif at["phase"] == "deliver":
            text = (f"interrupted while delivering {name}: it is in the export container, and the next sync "
                    "delivers it (after this delivery's claim lapses, at most 10 minutes; a copy cut off is never "
                    "committed at Bane NOR)")
        else:
            text = "interrupted before any file was sent"
        done = len(results)
        return (text + (f"; {done} file(s) before it are done" if done else "")
                + (f"; not sent: {', '.join(rest)}" if rest else "") + ".")

    abandon = "abandoned at once (second Ctrl-C); the line above says what becomes of the file."
    with on_interrupt(line, notice, abandon):
        try:
            for index, path_text in enumerate(args.files):
                path = Path(path_text)
                name = f"{args.to.strip('/')}/{path.name}" if args.to else path.name
                size = path.stat().st_size
                at.update(name=name, phase="upload", index=index)
                with path.open("rb") as handle, on_link("exports", s):
                    rt.exports.get_blob_client(name).upload_blob(
                        handle, length=size, overwrite=True, max_concurrency=4,
                        progress_hook=Progress(name, size, not args.json and size > 8 * 2**20, line),
                    )
                at["phase"] = "deliver"
                with on_link("ledger", s):
                    relay = rt.relay  # builds the ledger (creates its container if missing)
                with on_link("ledger", s):
                    results.append(relay.deliver(name).as_dict())
                at["phase"] = None
        except KeyboardInterrupt:
            line.end()
            out.data({"interrupted": True, "results": results, "exit_code": EXIT_INTERRUPTED})
            return EXIT_INTERRUPTED
    out.data(results)
    for r in results:
        out.line(outcome_line(r))
    held = [r for r in results if r["status"] == "held"]
    if held:  # a broken link met by the delivery: the link's code, as doctor numbers it
        return DOCTOR_EXIT.get(held[0].get("link") or "gateway", DOCTOR_EXIT["gateway"])
    return delivery_exit([r["status"] for r in results])


# -- sync ----------------------------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    s = rt.settings
    check_exports(rt)
    with on_link("ledger", s):
        relay = rt.relay  # builds the ledger (creates its container if missing)
    if not args.dry_run:
        check_gateway(rt)  # a broken chain of trust or an unreachable gateway: its link's code, before any file
    count = [0]
    lock = threading.Lock()
    # What this run did, for the output and the exit code (the summary itself keeps only counts and what needs
    # attention, so a timer run's memory does not grow with the files it delivers).
    shown: list[dict[str, Any]] = []
    keep = ("delivered", "would_deliver") if (args.json or args.verbose or args.dry_run) else ()
    line = StderrLine()

    def progress(outcome: Any) -> None:  # called from the sync's worker threads
        with lock:
            count[0] += 1
            if outcome.status != "already_delivered" and (outcome.status not in ("delivered", "would_deliver")
                                                          or outcome.status in keep):
                shown.append(outcome.as_dict())
            if not args.json and sys.stderr.isatty():
                line.write(f"\r{count[0]} processed, last: {outcome.status} {outcome.source_name[:50]:<50}")

    notice = ("interrupted: the dry run stops; nothing was written" if args.dry_run else
              "interrupted: finishing the deliveries in flight, then stopping (Ctrl-C again abandons them); "
              "nothing else starts, and the next sync delivers everything not delivered yet; nothing is lost")
    abandon = ("abandoned the deliveries in flight: a copy cut off is never committed at Bane NOR, and the next sync "
               "delivers those files again (a large one once its claim lapses, at most 10 minutes, resuming from "
               "its staged blocks)")
    try:
        with on_interrupt(line, lambda: notice, abandon), on_link("ledger", s):
            # a ledger or listing failure that ends the run (per-file ones are outcomes)
            summary = relay.sync(dry_run=args.dry_run, progress=progress)
    except KeyboardInterrupt:
        line.end()
        print(f"stopped: the deliveries in flight ended ({count[0]} file(s) processed in this run); the next sync "
              "delivers the rest", file=sys.stderr, flush=True)
        out.data({"interrupted": True, "processed": count[0], "exit_code": EXIT_INTERRUPTED})
        return EXIT_INTERRUPTED
    line.end()
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
    now = {o["status"] for o in shown}
    earlier = sum(getattr(summary, k) for k in ("rejected", "poisoned", "pending")) - \
        sum(1 for o in shown if o["status"] in ("rejected", "poisoned", "pending"))
    if earlier > 0:
        out.line(f"  ({earlier} version(s) rejected, poisoned or failed in earlier runs are counted above and do not "
                 "change this run's exit code; `status` lists them with their reasons)")
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
    return delivery_exit(now)


# -- status and retry ------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    check_partner(rt, "ledger")
    with on_link("ledger", rt.settings):
        ledger = rt.ledger
        counts = ledger.counts()
        failures = [f for f in ledger.failures()]
        rejected = list(ledger.rejections())
        links = ledger.link_states()
    where = destinations(rt)

    def entry(record: Any, status: str) -> dict[str, Any]:  # the fields every command's --json has
        return {**asdict(record), "status": status, "destination": where(record.source_name, status)}

    payload = {
        "counts": counts,
        "links": [{**asdict(state), "since_at": state.since, "description": describe_link(state)}
                  for state in links],
        "poisoned": [entry(f, "poisoned") for f in failures if f.poisoned],
        "failed": [entry(f, "failed") for f in failures if not f.poisoned],
        "rejected": [entry(r, "rejected") for r in rejected],
    }
    for state in payload["links"]:
        del state["since"]
    out.data(payload)
    for state in links:
        out.line(f"LINK BROKEN  {describe_link(state)}")
    out.line("ledger: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for title, items in (("poisoned", payload["poisoned"]), ("failed", payload["failed"])):
        for f in items:
            step = (_next_step("poisoned", f["source_name"]) if title == "poisoned"
                    else f"next retry {_fmt_time(f['next_retry_at'])}")
            out.line(f"  {title:<9} {f['source_name']} (attempts {f['attempts']}; {step}): {f['last_error']}")
    for r in payload["rejected"]:
        out.line(f"  rejected  {r['source_name']}: {r['reason']}")
    # The same table as every command: a broken link first (its code), then what waits for a person.
    if links:
        return DOCTOR_EXIT.get(links[0].link, DOCTOR_EXIT["gateway"])
    return delivery_exit([k for k in ("failed", "poisoned", "rejected") if counts.get(k)])


TIME_PLACEHOLDERS = ("{yyyy}", "{MM}", "{dd}", "{HH}")


def destinations(rt: Any) -> Callable[[str, str], str | None]:
    """`status`'s destination of an export: the name the policy gives it at Bane NOR (as sync's and send's
    outcomes show it), None for a rejected one (it has none) or one the policy refuses. A template with time
    folders needs the export's last-modified time: one properties read each, None if the export is gone."""
    import datetime as dt

    from .naming import NamePolicy, destination_path

    s = rt.settings
    policy = NamePolicy.from_settings(s.relay)
    timed = any(p in s.relay.destination_template for p in TIME_PLACEHOLDERS)

    def where(name: str, status: str) -> str | None:
        if status == "rejected" or policy.validate():
            return None
        when = dt.datetime.now(dt.UTC)
        if timed:
            try:
                when = rt.exports.get_blob_client(name).get_blob_properties().last_modified
            except Exception:  # gone, or unreadable: status still answers
                return None
        try:
            return destination_path(name, s.banenor.directory, policy, when)
        except RelayError:  # NameRejected: the policy refuses the name now
            return None

    return where


def why_not_poisoned(rt: Any, name: str) -> tuple[str, str]:
    """Why `retry NAME` found nothing to retry (unknown, delivered, rejected, failing but not poisoned, new), and
    what to do instead: (message, fix)."""
    from azure.core.exceptions import ResourceNotFoundError

    ledger = rt.ledger
    failing = [f for f in ledger.failures() if f.source_name == name]
    if failing:
        f = failing[0]
        return (f"{name!r} is not poisoned: it failed {f.attempts} time(s), and the sync retries it at "
                f"{_fmt_time(f.next_retry_at)}.", "nothing to do; `status` shows its last error")
    try:
        with on_link("exports", rt.settings):
            props = rt.exports.get_blob_client(name).get_blob_properties()
    except LinkFailure as failure:
        if not isinstance(failure.__cause__, ResourceNotFoundError):
            raise
        props = None
    if props is None:
        return (f"no export named {name!r} in container {rt.settings.exports.container!r}, and no failure "
                "recorded for it.", "give the name as `status` shows it, with its folders")
    if ledger.delivered(name, props.etag):
        return f"{name!r} is delivered (its current version).", "nothing to retry"
    rejection = ledger.rejection(name, props.etag)
    if rejection is not None:
        reason = rejection.reason.split(" Fix: ")[0]
        return (f"{name!r} was rejected, and a rejection is never retried: {reason}.",
                "remove the cause the rejection names, then upload the export again: a new version is delivered")
    return f"{name!r} is not delivered yet and has not failed.", "nothing to retry: the next sync delivers it"


def cmd_retry(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    if not args.all_poisoned and not args.name:
        print("retry needs a NAME or --all-poisoned. Fix: `retry NAME` (as `status` shows it) or "
              "`retry --all-poisoned`", file=sys.stderr)
        return EXIT_CONFIG
    check_partner(rt, "ledger")
    with on_link("ledger", rt.settings):
        count = rt.ledger.retry_all_poisoned() if args.all_poisoned else rt.ledger.retry(args.name)
        nothing = why_not_poisoned(rt, args.name) if args.name and count == 0 else None
    if nothing:
        return _report(out, EXIT_FAILED, nothing[0], nothing[1], retried=0)
    out.data({"retried": count})
    out.line(f"{count} poisoned version(s) will be retried by the next sync")
    return EXIT_OK


# -- doctor --------------------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    """Runs shared/doctor.py's checks and prints each as it finishes; stops at the first broken link."""
    run = doctor.Run(args.read_only)
    checks = []
    code = EXIT_OK
    for result in doctor.run_checks(doctor.CHECKS, args.read_only, run):
        checks.append(result.as_dict())
        _print_check(out, result)
        if result.status == "fail":
            code = result.exit_code
    rows = run.settings.describe() if args.settings and run.settings is not None else []
    if rows:
        width = max(len(name) for name, _, _ in rows)
        out.line("Settings in force (connection-string keys redacted):")
        for name, value, origin in rows:
            out.line(f"  {name.ljust(width)}  {value or '-'}  ({origin or 'derived'})")
    payload: dict[str, Any] = {"ok": code == EXIT_OK, "exit_code": code, "checks": checks}
    if args.settings:
        payload["settings"] = [{"name": n, "value": v, "origin": o} for n, v, o in rows]
    out.data(payload)
    out.line("All links work." if code == EXIT_OK else f"Stopped at the first broken link (exit code {code}).")
    return code


def _print_check(out: Output, result: doctor.Result) -> None:
    mark = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}[result.status]
    out.line(f"[{mark}] {result.title}")
    for note in result.details:
        for text in note.splitlines():
            out.line(f"       {text.strip()}")
    if result.fix:
        out.line(f"       Fix: {result.fix}")


# -- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    console = Path(sys.argv[0]).name == "skyporten-relay"  # the console command (pyproject.toml), else -m shared
    parser = argparse.ArgumentParser(
        prog="skyporten-relay" if console else ".venv/bin/python -m shared",
        description="The Skyporten relay: deliver export files into Bane NOR's storage through Skyporten. "
        "Settings come from the environment (app settings), or from --env-file.",
        epilog="Exit codes: 0 all delivered, 1 some failed or poisoned, 2 a setting or the command line is wrong, "
        "3 some rejected (nothing failed), 10-18 a broken link (10 settings, 11 clock, 12 key vault, 13 key, "
        "14 Skyporten, 15 Entra, 16 gateway, 17 export container, 18 ledger). docs/troubleshooting.md",
    )
    parser.add_argument("--env-file", help="read settings from a file (" + ENV_FILE_FORMATS + "), e.g. "
                        ".local/settings.env written by `make stack`; they override the environment")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--verbose", action="store_true",
                       help="also show the SDKs' raw detail (and, for sync, the delivered files)")
        return p

    p = add("doctor", "check every link: settings, clock, key, Skyporten, Entra, gateway, exports, ledger")
    p.add_argument("--read-only", action="store_true", help="list Bane NOR's directory instead of writing a probe")
    p.add_argument("--settings", action="store_true",
                   help="also list every setting in force, its value and where it came from (set, preset, default)")
    p = add("token", "get a Skyporten token and show its non-secret facts (scope, audience, consumer, expiry)")
    p.add_argument("--decode", action="store_true", help="also show all claims (never the token itself)")
    p.add_argument("--raw", action="store_true", help="print the token itself (secret: do not paste it anywhere)")
    p = add("send", "put local files into the export container and deliver them now")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--to", metavar="PATH", help="folder inside the export container (default: its root)")
    p = add("sync", "deliver everything not yet delivered, now, and print the summary")
    p.add_argument("--dry-run", action="store_true", help="decide for each file as the sync would (name policy, size, "
                   "extensions, delivered, due retry or new) and show it with its destination; write nothing")
    add("status", "ledger counts, and the poisoned, failed and rejected versions with their reasons")
    p = add("retry", "retry a poisoned export (all its versions) or every poisoned one")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--all-poisoned", action="store_true")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "doctor": cmd_doctor, "token": cmd_token, "send": cmd_send, "sync": cmd_sync, "status": cmd_status,
    "retry": cmd_retry,
}


def _report(out: Output, code: int, message: str, fix: str | None, **extra: Any) -> int:
    out.data({"error": message, "fix": fix, "exit_code": code, **extra})
    separator = "\n" if "\n" in message else " "  # a list of setting problems: the fix on a line of its own
    print(f"{message}{separator + 'Fix: ' + fix if fix else ''}", file=sys.stderr, flush=True)
    return code


def _read_env_file(args: argparse.Namespace) -> int | None:
    try:
        os.environ.update(read_env_file(args.env_file))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        if isinstance(exc, FileNotFoundError) and local_stack.is_stack_settings_file(args.env_file):
            return _report(Output(args.json), EXIT_CONFIG, f"--env-file {args.env_file}: {local_stack.NOT_RUNNING}",
                           "run `make stack` (it writes this file; `make stack-stop` removes it)")
        reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else \
            "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        return _report(Output(args.json), EXIT_CONFIG, f"--env-file {args.env_file}: {reason}", ENV_FILE_FIX)
    if local_stack.not_running(os.environ):
        return _report(Output(args.json), EXIT_CONFIG, f"--env-file {args.env_file}: {local_stack.NOT_RUNNING}",
                       "run `make stack` (it starts the stack and writes its settings anew)")
    return None


def _run(args: argparse.Namespace, out: Output) -> int:
    try:
        return COMMANDS[args.command](args, out)
    except ConfigError as exc:
        return _report(out, EXIT_CONFIG, exc.message, "set or rename the settings named above (docs/settings.md)",
                       problems=exc.problems)
    except LinkFailure as failure:
        return _report(out, DOCTOR_EXIT[failure.link], failure.message, failure.fix, link=failure.link)
    except RelayError as exc:
        diagnosed = diagnose(exc, None)
        assert diagnosed is not None  # every RelayError has a link
        return _report(out, DOCTOR_EXIT[diagnosed.link], diagnosed.message, diagnosed.fix, link=diagnosed.link)
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except Exception as exc:  # nothing we know: still one line (the traceback only with --verbose)
        if args.verbose:
            import traceback

            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        return _report(out, EXIT_FAILED, f"unexpected error: {type(exc).__name__}: {scrub(first)[:300]}",
                       "run it again with --verbose for the detail, and report it with that output")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.env_file:
        code = _read_env_file(args)
        if code is not None:
            return code
    setup_logging(args.verbose)
    try:
        return _run(args, Output(args.json))
    except BrokenPipeError:
        # The reader went away (`status | head`): end quietly, as Unix tools do; nothing more is written to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C elsewhere (send and sync say more): the ledger keeps what was delivered
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
