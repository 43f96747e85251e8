"""The command line: `python -m shared <command>` for onboarding, manual sends and diagnosis.

Commands: doctor, token, send, sync, status, retry. Every command takes `--json`; a refusal prints one clear
message (cause and fix) and exits non-zero without a traceback. Tokens and grants are never printed unless
`token --raw` asks for it explicitly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import Settings, read_env_file
from .errors import ConfigError, RelayError, SigningKeyError, scrub

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
ENV_FILE_FIX = "give a file of KEY=value lines; `make stack` writes the local stack's to .local/settings.env"
# doctor: the exit code says which link failed first
DOCTOR_LINKS = ("settings", "clock", "key_vault", "key", "skyporten", "entra", "gateway", "exports", "ledger")
DOCTOR_EXIT = {name: 10 + i for i, name in enumerate(DOCTOR_LINKS)}
KEY_LIFETIME_DAYS = 365  # self-service keys expire a year after upload
KEY_WARN_DAYS = 30


class Output:
    def __init__(self, as_json: bool, stream: Any = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def line(self, text: str = "") -> None:
        if not self.as_json:
            print(text, file=self.stream, flush=True)

    def data(self, payload: Any) -> None:
        if self.as_json:
            print(json.dumps(payload, indent=2, default=str), file=self.stream, flush=True)


def _fmt_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _runtime(args: argparse.Namespace) -> Any:
    from .runtime import get_runtime

    return get_runtime()


# -- token ---------------------------------------------------------------------------------------------------
def token_facts(token: Any, now: float, resource: str | None = None) -> dict[str, Any]:
    """What a Skyporten token says (never the token), with the resource the grant sent (None: none)."""
    from .maskinporten import audience_reading

    claims = token.claims
    consumer = claims.get("consumer") or {}
    return {
        "scope": token.scope,
        "resource_sent": resource,
        "audience": claims.get("aud"),
        "audience_from": audience_reading(resource, claims.get("aud")),
        "subject": claims.get("sub"),
        "issuer": claims.get("iss"),
        "consumer_org": consumer.get("ID") if isinstance(consumer, dict) else None,
        "client_id": claims.get("client_id"),
        "expires_at": _fmt_time(token.expires_at),
        "expires_in": int(token.expires_at - now),
    }


def cmd_token(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    token = rt.maskinporten.get_token()
    facts = token_facts(token, time.time(), rt.maskinporten.request.resource)
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


# -- send ----------------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr: bytes, rate, ETA."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled and total > 0
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
        sys.stderr.write(f"\r{self.label[:30]:<30} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{current / 2**20:8.1f}/{total / 2**20:.1f} MiB {rate / 2**20:6.1f} MiB/s ETA {eta:4.0f}s")
        if current >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    """Put local files into the export container, then deliver them with the same engine as the triggers."""
    rt = _runtime(args)
    results = []
    for path_text in args.files:
        path = Path(path_text)
        if not path.is_file():
            results.append({"status": "failed", "source_name": str(path), "reason": "no such file"})
            continue
        name = f"{args.to.strip('/')}/{path.name}" if args.to else path.name
        size = path.stat().st_size
        with path.open("rb") as handle:
            rt.exports.get_blob_client(name).upload_blob(
                handle, length=size, overwrite=True, max_concurrency=4,
                progress_hook=Progress(name, size, not args.json and size > 8 * 2**20),
            )
        results.append(rt.relay.deliver(name).as_dict())
    out.data(results)
    for r in results:
        out.line(f"{r['status']:<18} {r['source_name']} -> {r.get('destination') or '-'}"
                 f"{'  ' + r['reason'] if r.get('reason') and r['status'] != 'delivered' else ''}")
    return EXIT_OK if all(r["status"] in ("delivered", "already_delivered") for r in results) else EXIT_FAIL


# -- sync ----------------------------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    count = [0]
    lock = threading.Lock()

    def progress(outcome: Any) -> None:  # called from the sync's worker threads
        with lock:
            count[0] += 1
        if not args.json and sys.stderr.isatty():
            sys.stderr.write(f"\r{count[0]} processed, last: {outcome.status} {outcome.source_name[:50]:<50}")

    summary = rt.relay.sync(dry_run=args.dry_run, progress=progress)
    if count[0] and not args.json and sys.stderr.isatty():
        sys.stderr.write("\n")
    out.data(summary.as_dict())
    if summary.error:
        out.line(f"sync stopped: {summary.error}")
    out.line(f"{'dry run: ' if args.dry_run else ''}listed {summary.listed}, delivered {summary.delivered}, "
             f"already delivered {summary.already_delivered}, rejected {summary.rejected}, failed {summary.failed}, "
             f"poisoned {summary.poisoned}, pending retry {summary.pending}, in progress {summary.in_progress}; "
             f"{summary.bytes / 2**20:.1f} MiB in {summary.seconds:.1f} s")
    for o in summary.outcomes:
        if o.status != "delivered" or args.verbose:
            out.line(f"  {o.status:<10} {o.source_name}{' -> ' + o.destination if o.destination else ''}"
                     f"{'  ' + o.reason if o.reason else ''}")
    if summary.error:
        return EXIT_FAIL
    return EXIT_OK if summary.failed == 0 and summary.poisoned == 0 else EXIT_FAIL


# -- status and retry ------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    ledger = rt.ledger
    counts = ledger.counts()
    failures = [f for f in ledger.failures()]
    rejected = list(ledger.rejections())
    payload = {
        "counts": counts,
        "poisoned": [asdict(f) for f in failures if f.poisoned],
        "failed": [asdict(f) for f in failures if not f.poisoned],
        "rejected": [asdict(r) for r in rejected],
    }
    out.data(payload)
    out.line("ledger: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for title, items in (("poisoned", payload["poisoned"]), ("failed", payload["failed"])):
        for f in items:
            out.line(f"  {title:<9} {f['source_name']} (attempts {f['attempts']}, next retry "
                     f"{_fmt_time(f['next_retry_at']) if title == 'failed' else 'after `retry`'}): {f['last_error']}")
    for r in payload["rejected"]:
        out.line(f"  rejected  {r['source_name']}: {r['reason']}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, out: Output) -> int:
    rt = _runtime(args)
    if args.all_poisoned:
        count = rt.ledger.retry_all_poisoned()
    elif args.name:
        count = rt.ledger.retry(args.name)
    else:
        raise SystemExit("retry needs a NAME or --all-poisoned")
    out.data({"retried": count})
    out.line(f"{count} poisoned version(s) will be retried by the next sync")
    return EXIT_OK


# -- doctor --------------------------------------------------------------------------------------------------
class Doctor:
    """Checks each link of the chain in order and stops at the first broken one."""

    def __init__(self, out: Output, read_only: bool) -> None:
        self.out = out
        self.read_only = read_only
        self.results: list[dict[str, Any]] = []

    def check(self, link: str, title: str, fn: Callable[[], list[str] | None]) -> bool:
        try:
            notes = fn() or []
        except RelayError as exc:
            self._record(link, title, "fail", [exc.message], exc.hint)
            return False
        except Exception as exc:  # an unexpected failure: still one line, no traceback
            first = (str(exc).splitlines() or [""])[0]
            self._record(link, title, "fail", [f"{type(exc).__name__}: {scrub(first)[:300]}"], None)
            return False
        status = "warn" if any(n.startswith("WARNING") for n in notes) else "ok"
        self._record(link, title, status, notes, None)
        return True

    def _record(self, link: str, title: str, status: str, notes: list[str], fix: str | None) -> None:
        self.results.append({"link": link, "title": title, "status": status, "details": notes, "fix": fix})
        mark = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}[status]
        self.out.line(f"[{mark}] {title}")
        for note in notes:
            self.out.line(f"       {note}")
        if fix:
            self.out.line(f"       Fix: {fix}")


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    doc = Doctor(out, args.read_only)
    state: dict[str, Any] = {}

    def settings() -> list[str]:
        try:
            s = Settings.load()
        except ConfigError as exc:
            raise RelayError(exc.message, hint="set the settings named above (docs/settings.md)") from None
        from .naming import NamePolicy
        from .runtime import get_runtime

        problems = NamePolicy(mode=s.name_policy, allowed_extensions=s.allowed_extensions, folders=s.folder_mode,
                              template=s.destination_template).validate()
        if problems:
            raise RelayError("the name policy is invalid: " + "; ".join(problems),
                             hint="fix DESTINATION_TEMPLATE / ALLOWED_EXTENSIONS / NAME_POLICY (docs/gateway.md)")
        state["rt"] = get_runtime()
        state["s"] = s
        return [f"environment {s.environment}: issuer {s.maskinporten_issuer}, gateway {s.banenor_storage_url}, "
                f"audience {s.banenor_storage_audience}",
                f"key source {s.signing_key_source}, container {s.banenor_container}/{s.banenor_directory}"]

    def clock() -> list[str]:
        from email.utils import parsedate_to_datetime

        import requests

        s = state["s"]
        url = s.maskinporten_issuer + "/.well-known/openid-configuration"
        response = requests.get(url, timeout=15, verify=s.ca_bundle or True)
        date = response.headers.get("Date")
        if not date:
            return ["WARNING: Skyporten's metadata endpoint sent no Date header; clock not checked"]
        skew = time.time() - parsedate_to_datetime(date).timestamp()
        if abs(skew) > 10:
            raise RelayError(f"this machine's clock is {skew:+.0f} s off Skyporten's; Skyporten allows 10 s.",
                             hint="fix the clock (NTP)")
        return [f"skew {skew:+.1f} s against {s.maskinporten_issuer} (allowed: 10 s)"]

    def key_vault() -> list[str]:
        s = state["s"]
        where = s.key_vault_url if s.signing_key_source.startswith("keyvault") else s.signing_key_file
        try:
            state["key"] = state["rt"].signing_keys.get()
        except SigningKeyError as exc:
            if exc.stage != "material":
                raise
            state["key_error"] = exc  # it was read; what is wrong with it is the next link's finding
        return [f"{s.signing_key_source} {s.signing_key_name or s.signing_key_file!r} read from {where}"]

    def key() -> list[str]:
        if "key_error" in state:
            raise state["key_error"]
        info = state["key"].info
        notes = [f"RSA {info.bits} bits, kid {info.kid or '-'}"
                 + (f", x5c certificate {info.certificate_subject}" if info.certificate_subject else "")]
        if info.source != "keyvault-certificate" and not info.kid:
            raise RelayError("the key has no kid.", hint="set MASKINPORTEN_KEY_ID to the kid registered on the "
                             "integration in Samarbeidsportalen")
        now = dt.datetime.now(dt.UTC)
        expires = info.certificate_not_after or info.expires_on
        if expires is None and info.created_on is not None and info.source != "keyvault-certificate":
            expires = info.created_on + dt.timedelta(days=KEY_LIFETIME_DAYS)
            notes.append(f"stored {info.created_on:%Y-%m-%d}; self-service keys expire a year after upload")
        if expires is not None:
            days = (expires - now).days
            if days < 0:
                raise RelayError(f"the key expired {expires:%Y-%m-%d} (Skyporten answers MP-121).",
                                 hint="register a new key in Samarbeidsportalen, store it, switch MASKINPORTEN_KEY_ID")
            note = f"expires about {expires:%Y-%m-%d} ({days} days)"
            notes.append(("WARNING: " if days <= KEY_WARN_DAYS else "") + note +
                         ("; register the next key now (docs/key-rotation.md)" if days <= KEY_WARN_DAYS else ""))
        return notes

    def skyporten() -> list[str]:
        client = state["rt"].maskinporten
        token = client.get_token()
        facts = token_facts(token, time.time(), client.request.resource)
        state["sky"] = facts
        reading = facts["audience_from"]
        aud_line = f"aud {facts['audience']}: {reading}"
        return [f"sub {facts['subject']}", f"resource sent: {facts['resource_sent'] or 'none'}",
                ("WARNING: " if reading.startswith("no audience") else "") + aud_line,
                f"scope {facts['scope']}", f"consumer {facts['consumer_org']}", f"expires {facts['expires_at']}"]

    def entra() -> list[str]:
        from .errors import EntraError

        s = state["s"]
        try:
            token = state["rt"].banenor_credential.get_token(s.banenor_storage_audience + "/.default")
        except EntraError as exc:
            sky = state.get("sky") or {}
            if exc.code in ("AADSTS70021", "AADSTS700212"):
                # Which reading of the audience is in play, and what was sent: MASKINPORTEN_RESOURCE is the one
                # setting of the partner's that decides the token's aud.
                exc.message += (f" MASKINPORTEN_RESOURCE: resource sent: {sky.get('resource_sent') or 'none'};"
                                f" the Skyporten token's aud {sky.get('audience')!r} ({sky.get('audience_from')}).")
            raise
        from .maskinporten import decode_unverified

        claims = decode_unverified(token.token)
        return [f"token for {claims.get('aud')} (tenant {claims.get('tid')}, identity {claims.get('oid')}), "
                f"expires {_fmt_time(token.expires_on)}"]

    def gateway() -> list[str]:
        from .skyporten import gateway_error

        s = state["s"]
        rt = state["rt"]
        directory = s.banenor_directory
        if doc.read_only:
            prefix = (directory + "/") if directory else None
            try:
                listing = rt.destination.list_blobs(name_starts_with=prefix)
                names = [b.name for _, b in zip(range(5), listing, strict=False)]
            except Exception as exc:
                raise gateway_error(exc, f"{s.banenor_container}/{directory}") from None
            return [f"listed {s.banenor_container}/{directory}: {len(names)} item(s) seen (read-only check)"]
        # A name no export can have (a fresh uuid), written create-only: the probe never overwrites a delivery.
        name = f"relay-doctor-probe-{uuid.uuid4().hex}.txt"
        probe = f"{directory}/{name}" if directory else name
        blob = rt.destination.get_blob_client(probe)
        try:
            blob.upload_blob(b"skyporten relay doctor probe\n", overwrite=False)
        except Exception as exc:
            raise gateway_error(exc, probe) from None
        try:
            blob.delete_blob()  # tidy up where Bane NOR allows it; otherwise it goes with the 8-day retention
        except Exception:  # noqa: S110 - a probe left behind is harmless
            pass
        return [f"wrote {s.banenor_container}/{probe} through {s.banenor_storage_url}"]

    def exports() -> list[str]:
        rt = state["rt"]
        container = state["s"].export_container
        try:
            names = [b.name for _, b in zip(range(1), rt.exports.list_blobs(), strict=False)]
        except Exception as exc:
            raise partner_storage_error(exc, container, "Storage Blob Data Reader", "EXPORT_CONTAINER") from None
        return [f"container {container} readable ({'not empty' if names else 'empty'})"]

    def ledger() -> list[str]:
        rt = state["rt"]
        container = state["s"].ledger_container
        try:
            probe = rt.ledger.container.get_blob_client("doctor/probe.txt")
            probe.upload_blob(b"probe", overwrite=True)
            probe.delete_blob()
        except Exception as exc:
            raise partner_storage_error(exc, container, "Storage Blob Data Contributor", "LEDGER_CONTAINER") from None
        return [f"container {state['s'].ledger_container} writable; " +
                ", ".join(f"{k} {v}" for k, v in rt.ledger.counts().items())]

    steps = [("settings", "Settings", settings), ("clock", "Clock against Skyporten", clock),
             ("key_vault", "Signing key readable", key_vault), ("key", "Signing key valid", key),
             ("skyporten", "Skyporten token", skyporten), ("entra", "Entra exchange in Bane NOR's tenant", entra),
             ("gateway", "Bane NOR gateway " + ("read" if args.read_only else "write"), gateway),
             ("exports", "Export container readable", exports), ("ledger", "Ledger writable", ledger)]
    code = EXIT_OK
    for link, title, fn in steps:
        if not doc.check(link, title, fn):
            code = DOCTOR_EXIT[link]
            break
    rows = state["s"].describe() if args.settings and "s" in state else []
    if rows:
        width = max(len(name) for name, _, _ in rows)
        out.line("Settings in force (connection-string keys redacted):")
        for name, value, origin in rows:
            out.line(f"  {name.ljust(width)}  {value or '-'}  ({origin or 'derived'})")
    payload: dict[str, Any] = {"ok": code == EXIT_OK, "exit_code": code, "checks": doc.results}
    if args.settings:
        payload["settings"] = [{"name": n, "value": v, "origin": o} for n, v, o in rows]
    out.data(payload)
    out.line("All links work." if code == EXIT_OK else f"Stopped at the first broken link (exit code {code}).")
    return code


def partner_storage_error(exc: Exception, container: str, role: str, setting: str) -> RelayError:
    """One clear message for a failure on the partner's own storage account."""
    status = getattr(exc, "status_code", None)
    if status == 404:
        return RelayError(f"container {container!r} does not exist in the partner's storage account.",
                          hint=f"check {setting}, or create the container")
    if status == 403:
        return RelayError(f"access to container {container!r} was denied (403).",
                          hint=f"grant the function app's managed identity '{role}' on it")
    return RelayError(f"the partner's storage failed on container {container!r} "
                      f"({type(exc).__name__}{f', HTTP {status}' if status else ''}).",
                      hint="check EXPORT_STORAGE / EXPORT_STORAGE__blobServiceUri and the account's network rules")


# -- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared",
        description="The Skyporten relay: deliver export files into Bane NOR's storage through Skyporten. "
        "Settings come from the environment (app settings), or from --env-file.",
    )
    parser.add_argument("--env-file", help="read settings from KEY=value lines (e.g. .local/settings.env written "
                        "by `make stack`); they override the environment")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
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
    p.add_argument("--dry-run", action="store_true", help="only list what would be delivered")
    p.add_argument("--verbose", action="store_true", help="list delivered files too")
    add("status", "ledger counts, and the poisoned, failed and rejected versions with their reasons")
    p = add("retry", "retry a poisoned export (all its versions) or every poisoned one")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--all-poisoned", action="store_true")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "doctor": cmd_doctor, "token": cmd_token, "send": cmd_send, "sync": cmd_sync, "status": cmd_status,
    "retry": cmd_retry,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.env_file:
        try:
            os.environ.update(read_env_file(args.env_file))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else \
                "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            message = f"--env-file {args.env_file}: {reason}"
            Output(args.json).data({"error": message, "fix": ENV_FILE_FIX})
            print(f"{message}. Fix: {ENV_FILE_FIX}", file=sys.stderr)
            return EXIT_CONFIG
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    out = Output(args.json)
    try:
        return COMMANDS[args.command](args, out)
    except ConfigError as exc:
        out.data({"error": exc.message, "problems": exc.problems})
        print(exc.message, file=sys.stderr)
        return EXIT_CONFIG
    except RelayError as exc:
        out.data({"error": exc.message, "fix": exc.hint})
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
