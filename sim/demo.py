"""`make demo`: the product's main job end to end on the local stack, with a delivery report.

Starts the local stack (Azurite + Skyporten, Entra, Key Vault and gateway simulators), drops a realistic set of
exports into the partner's container, runs the blob-trigger handler for each as the Functions host would, then
writes a backlog "while the trigger was down" and runs the timer handler, and prints what landed at Bane NOR:
files, bytes, throughput, checksums verified at the destination, names the policy changed, rejections and why,
and how many tokens were requested. Stops everything it started.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def make_exports(large_mib: int) -> dict[str, bytes]:
    """A partner's morning: one large export, many small ones, a nested folder, Norwegian names."""
    rows = "".join(f"{i};sensor-{i % 97};{(i * 7919) % 1000 / 10:.1f}\n" for i in range(2000)).encode()
    files: dict[str, bytes] = {
        "Målinger 2024_01 (rev B).csv": b"tidspunkt;sensor;verdi\n" + rows,
        "kjørebok.xlsx": os.urandom(48 * 1024),
        "sporveksler/nord/inspeksjon 2026-11-25.json": json.dumps({"veksel": "N-12", "status": "ok"}).encode(),
        "sporveksler/sor/inspeksjon_2026-11-25.json": json.dumps({"veksel": "S-3", "status": "avvik"}).encode(),
        "verktøy.exe": b"MZ" + os.urandom(1024),  # an extension Bane NOR refuses
        "store/punktsky-2026-11-25.zip": os.urandom(large_mib * 2**20),
    }
    for i in range(40):
        files[f"daglig/2026-11-25/sensor-{i:03}.csv"] = b"tidspunkt;verdi\n" + rows[: 200 + i]
    return files


def make_backlog() -> dict[str, bytes]:
    return {f"etterslep/logg-{i:02}.log": f"linje {i}\n".encode() * 100 for i in range(15)}


def run(large_mib: int, keep: bool) -> dict[str, Any]:
    from azure.functions.blob import InputStream  # the concrete classes (func.InputStream is the abstract one)
    from azure.functions.timer import TimerRequest

    from shared.config import Settings
    from shared.runtime import reset_runtime
    from sim.stack import Stack

    workdir = Path(tempfile.mkdtemp(prefix="relay-demo-"))
    log_file = workdir / "relay.log"
    warnings = log_to_file(log_file)
    print(f"Starting the local stack in {workdir} ...", flush=True)
    stack = Stack(workdir).start()
    try:
        settings = dict(stack.settings, BLOB_TRIGGER_SOURCE="LogsAndContainerScan", SYNC_SCHEDULE="0 */5 * * * *")
        os.environ.update(settings)  # as the Functions host would: app settings are environment variables
        reset_runtime()
        import function_app
        from shared.runtime import get_runtime

        rt = get_runtime()
        handlers = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
        print(f"Functions indexed: {', '.join(sorted(handlers))}", flush=True)
        exports = make_exports(large_mib)
        backlog = make_backlog()
        sky0, entra0 = stack.skyporten.token_requests, stack.entra.token_requests

        started = time.monotonic()
        print(f"Writing {len(exports)} exports and firing the blob trigger for each ...", flush=True)
        trigger_failures = 0
        for name, data in exports.items():
            blob = rt.exports.get_blob_client(name)
            blob.upload_blob(data, overwrite=True, max_concurrency=4)
            try:
                handlers["on_export"](InputStream(name=f"{rt.settings.exports.container}/{name}", data=b"",
                                                      length=len(data), uri=blob.url))
            except RuntimeError:
                trigger_failures += 1
        print(f"Trigger down: writing a backlog of {len(backlog)} exports, then the timer sync runs ...",
              flush=True)
        for name, data in backlog.items():
            rt.exports.get_blob_client(name).upload_blob(data, overwrite=True)
        handlers["sync"](TimerRequest(past_due=True))
        elapsed = time.monotonic() - started

        report = build_report(rt, stack, {**exports, **backlog}, elapsed, trigger_failures)
        report["tokens"] = {"skyporten": stack.skyporten.token_requests - sky0,
                            "entra": stack.entra.token_requests - entra0}
        print_report(report, Settings.load(settings))
        print(f"Log of the host and the relay ({plural(warnings.count, 'warning')}, "
              f"{plural(warnings.errors, 'error')}): {log_file}")
        if keep:
            stack.write_settings()
            print(f"\nThe stack keeps running (settings in {workdir / 'settings.env'}); Ctrl-C stops it.")
            while True:
                time.sleep(3600)
        return report
    finally:
        stack.stop()


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.errors += record.levelno >= logging.ERROR


def log_to_file(path: Path) -> _Counter:
    """The host's and the relay's log lines (a rejection's WARNING, the timer's past-due note, the Functions
    library's notes) go to `path`, as Application Insights would keep them, so the report is alone on the
    terminal; returns the counter of warnings and errors that the report quotes."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    counter = _Counter()
    root = logging.getLogger()
    root.handlers[:] = [handler, counter]  # before any import logs: no logging.basicConfig to stderr
    root.setLevel(logging.INFO)
    return counter


def build_report(rt: Any, stack: Any, files: dict[str, bytes], elapsed: float, trigger_failures: int) -> dict:
    from azure.storage.blob import BlobServiceClient

    backend = BlobServiceClient.from_connection_string(
        stack.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"],
        connection_verify=stack.settings["REQUESTS_CA_BUNDLE"],
    ).get_container_client(rt.settings.banenor.container)
    rows, rejected = [], []
    delivered_bytes = 0
    for name, data in sorted(files.items()):
        etag = rt.exports.get_blob_client(name).get_blob_properties().etag
        receipt = rt.ledger.receipt(name, etag)
        if receipt is None:
            rejection = rt.ledger.rejection(name, etag)
            rejected.append({"source": name, "reason": rejection.reason if rejection else "not delivered"})
            continue
        props = backend.get_blob_client(receipt.destination_path).get_blob_properties()
        expected = hashlib.md5(data).digest()  # Content-MD5 is what storage keeps
        stored = bytes(props.content_settings.content_md5 or b"")
        rows.append({
            "source": name, "destination": receipt.destination_path, "bytes": props.size,
            "md5_verified": stored == expected and props.size == len(data), "mode": receipt.mode,
            "renamed": receipt.destination_path != f"{rt.settings.banenor.directory}/{name}",
        })
        delivered_bytes += props.size
    return {
        "files": len(files), "delivered": len(rows), "rejected": rejected, "bytes": delivered_bytes,
        "seconds": round(elapsed, 2), "throughput_mib_s": round(delivered_bytes / 2**20 / elapsed, 1),
        "all_md5_verified": all(r["md5_verified"] for r in rows), "trigger_failures": trigger_failures,
        "deliveries": rows, "ledger": rt.ledger.counts(),
    }


def print_report(report: dict, settings: Any) -> None:
    print("\n=== Delivery report " + "=" * 60)
    print(f"Bane NOR container {settings.banenor.container}, directory {settings.banenor.directory}, "
          f"through {settings.banenor.storage_url}")
    shown = [r for r in report["deliveries"] if r["renamed"] or r["bytes"] > 2**20 or not r["md5_verified"]]
    for row in shown:
        mark = "MD5 ok" if row["md5_verified"] else "MD5 MISMATCH"
        renamed = "  (renamed by the name policy)" if row["renamed"] else ""
        print(f"  {mark:<7} {row['bytes']:>10} B  {row['mode']:<6} {row['source']}\n"
              f"{'':>30}-> {row['destination']}{renamed}")
    rest = [r for r in report["deliveries"] if r not in shown]
    if rest:
        folders = sorted({r["source"].rsplit("/", 1)[0] if "/" in r["source"] else "." for r in rest})
        print(f"  ... and {len(rest)} more small files ({sum(r['bytes'] for r in rest):,} B) from "
              f"{', '.join(folders)}: {'all MD5 ok' if all(r['md5_verified'] for r in rest) else 'NOT ALL MD5 ok'}")
    for item in report["rejected"]:
        print(f"  REJECTED {item['source']}: {item['reason']}")
    renamed = sum(1 for r in report["deliveries"] if r["renamed"])
    print(f"\nFiles {report['files']}: delivered {report['delivered']}, rejected {len(report['rejected'])}, "
          f"renamed by the name policy {renamed}")
    print(f"Bytes {report['bytes']:,} in {report['seconds']} s end to end, including writing the exports "
          f"({report['throughput_mib_s']} MiB/s)")
    print(f"Checksums verified at the destination: {'all' if report['all_md5_verified'] else 'NOT ALL'}")
    print(f"Tokens requested: Skyporten {report['tokens']['skyporten']}, Entra {report['tokens']['entra']}")
    print(f"Ledger: {', '.join(f'{k} {v}' for k, v in report['ledger'].items())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=64, help="size of the large export (MiB)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running after the report")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    report = run(args.large_mib, args.keep)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    ok = report["all_md5_verified"] and report["delivered"] == report["files"] - len(report["rejected"])
    return 0 if ok and len(report["rejected"]) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())

