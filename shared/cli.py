"""The command line: `.venv/bin/python -m shared <command>` for onboarding, manual sends and diagnosis.

This module parses the command line and dispatches to the commands: doctor and token (shared/cli_links.py), send
and sync (shared/cli_delivery.py), status and retry (shared/cli_ledger.py); the terminal side (output, exit codes,
Ctrl-C) is shared/terminal.py's. Every command takes `--json` and `--verbose`; a broken link prints one message
(link, cause and fix) and exits with that link's code (DOCTOR_EXIT), never a traceback. Grants are never printed;
a token only when `token --raw` asks for it. The public names of those modules are importable from here too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import local_stack
from .cli_delivery import SyncProgress, cmd_send, cmd_sync, missing_files
from .cli_ledger import TIME_PLACEHOLDERS, cmd_retry, cmd_status, destinations, why_not_poisoned
from .cli_links import check_exports, check_gateway, check_partner, cmd_doctor, cmd_token, command_runtime, on_link
from .config import ENV_FILE_FORMATS, read_env_file
from .diagnosis import LinkFailure, diagnose
from .doctor import DOCTOR_EXIT
from .errors import ConfigError, RelayError, scrub
from .terminal import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    SDK_LOGGERS,
    Output,
    Progress,
    StderrLine,
    delivery_exit,
    json_ready,
    on_interrupt,
    outcome_line,
    report,
    setup_logging,
)

__all__ = [
    "COMMANDS", "DOCTOR_EXIT", "ENV_FILE_FIX", "EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK",
    "EXIT_REJECTED", "SDK_LOGGERS", "TIME_PLACEHOLDERS", "Output", "Progress", "StderrLine", "SyncProgress",
    "build_parser", "check_exports", "check_gateway", "check_partner", "cmd_doctor", "cmd_retry", "cmd_send",
    "cmd_status", "cmd_sync", "cmd_token", "command_runtime", "delivery_exit", "destinations", "json_ready", "main",
    "missing_files", "on_interrupt", "on_link", "outcome_line", "report", "setup_logging", "why_not_poisoned",
]

ENV_FILE_FIX = ("give one of: " + ENV_FILE_FORMATS + "; `make stack` writes the local stack's to "
                ".local/settings.env")


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


def _read_env_file(args: argparse.Namespace) -> int | None:
    try:
        os.environ.update(read_env_file(args.env_file))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        if isinstance(exc, FileNotFoundError) and local_stack.is_stack_settings_file(args.env_file):
            return report(Output(args.json), EXIT_CONFIG, f"--env-file {args.env_file}: {local_stack.NOT_RUNNING}",
                          "run `make stack` (it writes this file; `make stack-stop` removes it)")
        reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else \
            "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        return report(Output(args.json), EXIT_CONFIG, f"--env-file {args.env_file}: {reason}", ENV_FILE_FIX)
    if local_stack.not_running(os.environ):
        return report(Output(args.json), EXIT_CONFIG, f"--env-file {args.env_file}: {local_stack.NOT_RUNNING}",
                      "run `make stack` (it starts the stack and writes its settings anew)")
    return None


def _run(args: argparse.Namespace, out: Output) -> int:
    try:
        return COMMANDS[args.command](args, out)
    except ConfigError as exc:
        return report(out, EXIT_CONFIG, exc.message, "set or rename the settings named above (docs/settings.md)",
                      problems=exc.problems)
    except LinkFailure as failure:
        return report(out, DOCTOR_EXIT[failure.link], failure.message, failure.fix, link=failure.link)
    except RelayError as exc:
        diagnosed = diagnose(exc, None)
        assert diagnosed is not None  # every RelayError has a link
        return report(out, DOCTOR_EXIT[diagnosed.link], diagnosed.message, diagnosed.fix, link=diagnosed.link)
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except Exception as exc:  # nothing we know: still one line (the traceback only with --verbose)
        if args.verbose:
            import traceback

            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        return report(out, EXIT_FAILED, f"unexpected error: {type(exc).__name__}: {scrub(first)[:300]}",
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
