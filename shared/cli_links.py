"""What every command stands on, and the commands about the links themselves.

`command_runtime` builds the command line's runtime; `on_link` turns what a block meets into its link's
`LinkFailure` (one message: cause and fix); `check_partner`/`check_exports`/`check_gateway` ask the partner's storage
and Bane NOR's gateway once, with short bounds, before a command's work. `doctor` (its checks are shared/doctor.py's)
and `token` are the commands whose work is the links.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Literal

from . import doctor
from .config import load_settings
from .diagnosis import container_of, diagnose, gateway_unreachable
from .doctor import token_facts
from .errors import ConfigError
from .terminal import EXIT_OK, Output


def command_runtime() -> Any:
    """The process-wide runtime with the command line's short bounds (`interactive`)."""
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


# -- before a command's work ---------------------------------------------------------------------------------
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


# -- token ---------------------------------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace, out: Output) -> int:
    rt = command_runtime()
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
