"""The commands about what waits in the ledger: `status` (a broken link, the counts, the poisoned, failed and rejected
versions with their reasons and destinations) and `retry` (poisoned versions due again, or why a name is not).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .cli_links import check_partner, command_runtime, on_link
from .diagnosis import LinkFailure
from .doctor import DOCTOR_EXIT
from .doctor import fmt_time as _fmt_time
from .errors import RelayError
from .links import describe as describe_link
from .terminal import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Output, delivery_exit, next_step, report


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    rt = command_runtime()
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
            step = (next_step("poisoned", f["source_name"]) if title == "poisoned"
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
    rt = command_runtime()
    if not args.all_poisoned and not args.name:
        print("retry needs a NAME or --all-poisoned. Fix: `retry NAME` (as `status` shows it) or "
              "`retry --all-poisoned`", file=sys.stderr)
        return EXIT_CONFIG
    check_partner(rt, "ledger")
    with on_link("ledger", rt.settings):
        count = rt.ledger.retry_all_poisoned() if args.all_poisoned else rt.ledger.retry(args.name)
        nothing = why_not_poisoned(rt, args.name) if args.name and count == 0 else None
    if nothing:
        return report(out, EXIT_FAILED, nothing[0], nothing[1], retried=0)
    out.data({"retried": count})
    out.line(f"{count} poisoned version(s) will be retried by the next sync")
    return EXIT_OK
