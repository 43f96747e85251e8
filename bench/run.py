"""`make bench`: the relay's benchmarks, in one run on the local stack, each figure against a baseline of the
same run; writes bench/RESULTS.md (the last run in full, and one history row per run).

    .venv/bin/python -m bench.run            # full: 1 GiB, 2,000 x 4 KiB, idle sync over 20,000 (about 5-10 minutes)
    .venv/bin/python -m bench.run --quick    # 64 MiB, 200 files; prints, writes RESULTS.md only with --write

This process hosts the stack (Azurite and the simulators, the gateway included); every contender runs in its
own process (`bench/contenders.py`), one after another, so its peak RSS is its own and nothing else competes
for the two cores while it runs. What each figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
WORK = REPO / "bench" / ".work"  # git-ignored
MiB = 1024 * 1024
HISTORY_ROWS = 30
CONTENDER_TIMEOUT = 600  # seconds; a stuck contender fails the run instead of hanging it

TARGETS = {
    "stream_vs_best": 0.9,  # relay stream throughput / best plain SDK copy through the gateway
    "rss_mib": 150.0,  # peak RSS of the relay process copying the large file
    "sync_vs_loop": 1.0,  # sync throughput / sequential plain SDK loop
    "sync_vs_threaded": 0.9,  # sync throughput (ledger and destination evidence included) / threaded plain copy
    "tokens": 1,  # Skyporten and Entra requests per batch of deliveries
    "cold_ms": 50.0,  # function_app import time over bare azure.functions
    "server_bytes": 0,  # file bytes through the function in COPY_MODE=server
    # issue 30, the relay at its defaults:
    "many_vs_same": 1.0,  # sync over 1,500 and 10,000 small exports / plain copy on as many threads
    "many_vs_best": 0.9,  # ... / plain copy at its best thread count (8, 16, 32, 64)
    "rss_growth": 1.10,  # peak RSS of a sync of 10,000 / of 1,500
    "idle_vs_listing": 1.1,  # idle sync / bare listing of the exports and the ledger
}


# --- helpers ----------------------------------------------------------------------------------------------

_SECRETS = re.compile(r"(?i)(AccountKey=|sig=|Bearer\s+|IDENTITY_HEADER['\"]?\s*[:=]\s*['\"]?)[^;&\s'\"]+")


def scrub(text: str) -> str:
    """Contender errors are shown, never a key, signature, token or the MSI secret."""
    return _SECRETS.sub(r"\1[secure]", text)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def contender(which: str, settings: dict[str, str], /, **params: Any) -> dict[str, Any]:
    """Run one contender in a fresh process; its settings go through stdin, its numbers come back on stdout."""
    job = json.dumps({"settings": settings, "params": params})
    started = time.monotonic()
    # The idle sync's setup writes two blobs per export one by one: 100,000 take longer than any contender.
    timeout = max(CONTENDER_TIMEOUT, params["count"] // 50) if which == "setup-scale" else CONTENDER_TIMEOUT
    done = subprocess.run(
        [sys.executable, "-m", "bench.contenders", which], input=job, capture_output=True, text=True,
        cwd=REPO, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"contender {which} failed (exit {done.returncode}):\n{scrub(tail)}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall"] = time.monotonic() - started
    return row


def nreq(row: dict[str, Any]) -> int:
    """HTTP requests a contender sent in its timed part (every server; connections opened are counted apart)."""
    return sum(v for k, v in row["requests"].items() if k != "connections")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- machine ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    azurite = json.loads((REPO / "node_modules" / "azurite" / "package.json").read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {
        "cores": os.cpu_count(), "cpu": model, "memory_gib": round(total_kib / 1024 / 1024, 1),
        "python": platform.python_version(), "azurite": azurite, "node": node or "?",
        "azure_storage_blob": version("azure-storage-blob"), "azure_functions": version("azure-functions"),
        "kernel": platform.release(), "commit": commit or "?", "load_start": os.getloadavg()[0],
    }


# --- cold start -------------------------------------------------------------------------------------------

_IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def _fresh_env() -> dict[str, str]:
    # The function host's indexing environment: no app settings are needed to import function_app.
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BLOB_TRIGGER"))}


def import_seconds(module: str) -> float:
    done = subprocess.run([sys.executable, "-c", _IMPORT.format(module=module)], cwd=REPO, env=_fresh_env(),
                          capture_output=True, text=True, check=True, timeout=60)
    return float(done.stdout.strip())


def import_tree(module: str) -> list[tuple[int, str, int]]:
    """(depth, module, cumulative µs) rows of `-X importtime`, in its order (children before parents)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=REPO,
                          env=_fresh_env(), capture_output=True, text=True, check=True, timeout=60)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((len(m.group(3)) // 2, m.group(4), int(m.group(2))))
    return rows


def children(rows: list[tuple[int, str, int]], parent: str) -> dict[str, int]:
    """Direct children of `parent` in an importtime listing, with their cumulative µs."""
    found: dict[str, int] = {}
    for index, (depth, name, _) in enumerate(rows):
        if name != parent:
            continue
        for child_depth, child, cumulative in reversed(rows[:index]):
            if child_depth <= depth:
                break
            if child_depth == depth + 1:
                found[child] = cumulative
        break
    return found


def cold_start(runs: int) -> dict[str, Any]:
    modules = ("azure.functions", "function_app")
    for module in modules:  # warm the .pyc caches and the page cache; not counted
        import_seconds(module)
    times: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(runs):  # interleaved, so a noisy moment hits both
        for module in modules:
            times[module].append(import_seconds(module))
    trees = [import_tree("function_app") for _ in range(3)]
    base_trees = [import_tree("azure.functions") for _ in range(3)]

    def med(tree_list: list[list[tuple[int, str, int]]], parent: str) -> dict[str, float]:
        seen: dict[str, list[int]] = {}
        for tree in tree_list:
            for name, us in children(tree, parent).items():
                seen.setdefault(name, []).append(us)
        return {name: median(v) / 1000 for name, v in seen.items()}

    def expand(parent: str, depth: int) -> list[tuple[int, str, float]]:
        # Children of `parent` worth showing, each followed by its own where the weight is.
        rows: list[tuple[int, str, float]] = []
        threshold = 1.0 if depth == 0 else 4.0
        for name, ms in sorted(med(trees, parent).items(), key=lambda kv: -kv[1]):
            if ms < threshold:
                continue
            rows.append((depth, name, ms))
            if ms >= 20 and depth < 5:
                rows += expand(name, depth + 1)
        return rows

    return {
        "runs": runs,
        "azure_functions_ms": median(times["azure.functions"]) * 1000,
        "function_app_ms": median(times["function_app"]) * 1000,
        "azure_functions_all_ms": [round(t * 1000, 1) for t in times["azure.functions"]],
        "function_app_all_ms": [round(t * 1000, 1) for t in times["function_app"]],
        "tree_ms": expand("function_app", 0),
        "importtime_azure_functions_ms": median([next((us for d, n, us in t if d == 0 and n == "azure.functions"), 0)
                                                 for t in base_trees]) / 1000,
        "importtime_function_app_ms": median([next((us for d, n, us in t if d == 0 and n == "function_app"), 0)
                                              for t in trees]) / 1000,
    }


# --- the stack --------------------------------------------------------------------------------------------


def start_stack(workdir: Path, azurite_memory_mib: int) -> Any:
    """The local stack (in memory), with Azurite's in-memory store sized for the benchmark: `Stack` caps it at
    1024 MiB by default, less than one 1 GiB source plus its copies, and Azurite frees deleted blobs only in a
    garbage collection every 10 minutes."""
    import sim.stack as stack_module

    stack = stack_module.Stack(workdir, memory_limit_mb=azurite_memory_mib)
    stack.start()
    return stack


def process_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Probe:
    """Counters of the simulators (in this process) around one contender."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def snapshot(self) -> dict[str, Any]:
        s = self.stack
        own = os.times()
        return {"stack_cpu": own.user + own.system, "azurite_cpu": process_cpu(s.azurite.process.pid),
                "skyporten": s.skyporten.token_requests, "entra": s.entra.token_requests,
                "msi": s.entra.msi_requests, "gateway_bytes_in": s.gateway.bytes_in,
                "gateway_requests": Counter(s.gateway.requests)}

    def run(self, which: str, settings: dict[str, str], /, **params: Any) -> dict[str, Any]:
        before = self.snapshot()
        row = contender(which, settings, **params)
        after = self.snapshot()
        row["skyporten_requests"] = after["skyporten"] - before["skyporten"]
        row["entra_requests"] = after["entra"] - before["entra"]
        row["msi_requests"] = after["msi"] - before["msi"]
        row["gateway_bytes_in"] = after["gateway_bytes_in"] - before["gateway_bytes_in"]
        # CPU seconds over the contender's whole process (start-up and warm token included): the simulators (this
        # process: the gateway's TLS and forwarding) and Azurite. On 2 cores, CPU one side spends the other lacks.
        row["sim_cpu"] = after["stack_cpu"] - before["stack_cpu"]
        row["azurite_cpu"] = after["azurite_cpu"] - before["azurite_cpu"]
        row["gateway_requests"] = dict(after["gateway_requests"] - before["gateway_requests"])
        return row


# --- the benchmarks ---------------------------------------------------------------------------------------


def large_file(probe: Probe, settings: dict[str, str], size: int, block: int, parallelism: int,
               repeat: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    container, name = f"bench-large-{tag}", "large/export.csv"
    common = {"container": container, "name": name, "block": block, "parallelism": parallelism}
    log(f"large file: uploading a {size // MiB} MiB source with Content-MD5")
    setup = probe.run("setup-large", settings, size=size, **common)
    results: dict[str, list[dict[str, Any]]] = {}

    def relay(label: str, mode: str, run: int) -> None:
        log(f"large file: {label} (run {run})")
        row = probe.run("relay-deliver", settings, mode=mode, ledger=f"bench-ledger-{tag}-{label}-{run}",
                        folder=f"b{tag}-{label}-{run}", **common)
        results.setdefault(label, []).append(row)

    def plain(label: str, style: str, target: str, run: int) -> None:
        log(f"large file: {label} (run {run})")
        row = probe.run("plain-copy", settings, style=style, target=target, folder=f"b{tag}-{label}-{run}",
                        dest_name="large-export.csv", **common)
        results.setdefault(label, []).append(row)

    # A B C C B A per round: drift on the shared machine hits the relay and its baselines alike.
    for run in range(1, repeat + 1):
        relay("relay-stream", "stream", run)
        plain("plain-best-gateway", "best", "gateway", run)
        plain("plain-best-direct", "best", "direct", run)
        plain("plain-best-direct", "best", "direct", run + repeat)
        plain("plain-best-gateway", "best", "gateway", run + repeat)
        relay("relay-stream", "stream", run + repeat)
    plain("naive-gateway", "naive", "gateway", 1)
    relay("relay-server", "server", 1)
    log("large file: relay-sync (the sync entry point, copy on a pool thread)")
    results["relay-sync"] = [probe.run("relay-sync-large", settings, ledger=f"bench-ledger-{tag}-sync",
                                       folder=f"b{tag}-sync", **common)]
    for rows in results.values():
        for row in rows:
            if row["size"] != size:
                raise RuntimeError(f"a contender copied {row['size']} bytes, not {size}")
            row["mib_s"] = size / MiB / row["seconds"]
    return {"size": size, "block": block, "parallelism": parallelism, "setup": setup, "contenders": results}


def small_files(probe: Probe, settings: dict[str, str], count: int, file_size: int,
                rounds: int = 2) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    container = f"bench-small-{tag}"
    log(f"small files: uploading {count} x {file_size // 1024} KiB exports")
    setup = probe.run("setup-small", settings, container=container, count=count, size=file_size)
    if setup["count"] != count:
        raise RuntimeError(f"setup put {setup['count']} exports, not {count}")
    # A B C C B A, like the large file: the machine's load drifts, and each contender is judged by its best run.
    order = ["relay-sync", "plain-threaded", "copies-with-evidence", "copies-with-readback", "copies-without-ledger",
             "plain-loop"]
    titles = {"relay-sync": "relay sync (with the ledger)", "plain-threaded": "plain SDK copy on SYNC_CONCURRENCY "
              "threads", "copies-with-evidence": "the same copies and their listing evidence without the ledger",
              "copies-with-readback": "the same copies, each read back, without the ledger",
              "copies-without-ledger": "the same copies without evidence or ledger",
              "plain-loop": "plain SDK loop, one file after another"}
    runs: list[tuple[str, dict[str, Any]]] = []
    # Runs of one contender 10-20% apart are common on a shared 2-core machine: best of 2 x `rounds` runs each.
    for index, which in enumerate((order + order[::-1]) * rounds):
        log(f"small files: {titles[which]} (run {1 + index // len(order)})")
        run = f"{tag}-{index}"
        row = probe.run(which, settings, container=container, ledger=f"bench-ledger-{run}", count=count,
                        folder=f"b{run}")
        if which != "relay-sync" and row["count"] != count:
            raise RuntimeError(f"{which} copied {row['count']} files, not {count}")
        runs.append((which, row))

    def best(which: str) -> dict[str, Any]:
        return min((row for name, row in runs if name == which), key=lambda row: row["seconds"])

    return {"count": count, "file_size": file_size, "setup": setup, "runs": runs, "sync": best("relay-sync"),
            "bare": best("copies-without-ledger"), "evidence": best("copies-with-evidence"),
            "readback": best("copies-with-readback"),
            "threaded": best("plain-threaded"), "loop": best("plain-loop")}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and the spread (max / min) of a contender's runs or of per-round ratios."""
    return {"median": median(values), "min": min(values), "max": max(values),
            "spread": max(values) / min(values) if min(values) > 0 else float("nan"), "n": len(values)}


def scaling(fresh: Callable[[int], Any], counts: list[int], threads: list[int], rounds: list[int],
            relay_concurrency: list[int], file_size: int, relay_widths: tuple[int, ...] = ()) -> dict[str, Any]:
    """Issue 30: the relay's `sync` at its defaults (and, for experiments, at other SYNC_CONCURRENCY values, or held at
    one width of small deliveries in flight: `relay_widths`, the pace's ladder patched in the contender) against a
    plain azure-storage-blob copy on 8, 16, 32 and 64 threads, over `counts` small exports each. Rounds are
    interleaved, forward then backward (A B C D E, E D C B A, ...), so the machine's drift hits every contender;
    each contender's figure is the median of its runs, its spread max / min, and each ratio the median of the
    per-round ratios (relay run / plain run of the same round) with their range. The relay's runs also give its
    peak RSS at each count, each run in a fresh process (VmHWM): whether memory grows with the files delivered.

    Every run has a stack of its own (`fresh(count)`: a context giving (Probe, settings)), the exports uploaded to it
    untimed: Azurite lists by scanning every blob it holds, so a run after others (their copies, their ledgers) paid
    for their leftovers in each listing, and the relay lists more than a plain copy (its ledger, its evidence): its
    Azurite CPU per file rose 4.74 -> 6.81 ms between two runs over 10,000 on one stack."""
    out: dict[str, Any] = {"threads": threads, "rounds": rounds, "counts": {}, "fresh_stack_per_run": True}
    contenders = [("relay", None)] + [(f"relay-{n}", n) for n in relay_concurrency] + \
        [(f"relay-w{n}", n) for n in relay_widths] + [(f"plain-{n}", n) for n in threads]
    for count, count_rounds in zip(counts, rounds, strict=True):
        tag = uuid.uuid4().hex[:8]
        container = f"bench-many-{tag}"
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in contenders}
        setups: list[float] = []
        for round_index in range(count_rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]
            for label, n in order:
                run = f"{tag}-{round_index}-{label}"
                common = {"container": container, "count": count, "folder": f"m{run}"}
                with fresh(count) as (probe, settings):
                    setup = probe.run("setup-small", settings, container=container, count=count, size=file_size)
                    if setup["count"] != count:
                        raise RuntimeError(f"setup put {setup['count']} exports, not {count}")
                    setups.append(setup["seconds"])
                    log(f"scaling {count:,}: {label} (round {round_index + 1} of {count_rounds}; load "
                        f"{os.getloadavg()[0]:.2f})")
                    if label.startswith("plain"):
                        row = probe.run("plain-threaded", settings, threads=n, **common)
                    elif label.startswith("relay-w"):
                        row = probe.run("relay-sync", settings, ledger=f"bench-ledger-{run}", width=n, **common)
                    else:
                        overrides = {"SYNC_CONCURRENCY": str(n)} if n else {}
                        row = probe.run("relay-sync", settings, ledger=f"bench-ledger-{run}", overrides=overrides,
                                        **common)
                if row["count"] != count:
                    raise RuntimeError(f"{label} copied {row['count']} files, not {count}")
                row["round"] = round_index
                runs[label].append(row)
        out["counts"][count] = {"setup": {"seconds": median(setups), "count": count}, "runs": runs,
                                "rounds": count_rounds}
    return out


NOT_COUNTS = ("rss", "rss_by")  # the scaling summary's keys that are not export counts


def summarize_scaling(sc: dict[str, Any]) -> dict[str, Any]:
    """Per count: each contender's median files/s and spread; the relay's ratios to plain on its own thread count
    and to plain at its best thread count (by median), each as the median and range of per-round ratios."""
    result: dict[str, Any] = {}
    for count, data in sc["counts"].items():
        runs = data["runs"]
        per: dict[str, Any] = {}
        for label, rows in runs.items():
            if not rows:
                continue
            per[label] = {"files_s": spread([int(count) / r["seconds"] for r in rows]),
                          "seconds": [r["seconds"] for r in rows], "load": [r["load"][0] for r in rows],
                          "rss": spread([r["rss_peak"] for r in rows]),
                          "connections": median([r["requests"].get("connections", 0) for r in rows]),
                          "requests": median([nreq(r) for r in rows]),
                          "cpu": median([r["cpu"] for r in rows]),
                          "sim_cpu": median([r["sim_cpu"] for r in rows]),
                          "azurite_cpu": median([r["azurite_cpu"] for r in rows]),
                          "concurrency": rows[0].get("concurrency"), "held": rows[0].get("held")}
        plains = {label: v for label, v in per.items() if label.startswith("plain-")}
        best_plain = max(plains, key=lambda label: plains[label]["files_s"]["median"])
        ratios: dict[str, Any] = {}
        for label, v in per.items():
            if not label.startswith("relay"):
                continue
            same = f"plain-{v['held'] or v['concurrency']}"  # held at a width: plain on as many threads

            def per_round(base: str, relay_label: str = label, runs: dict[str, Any] = runs) -> dict[str, float] | None:
                if base not in runs:
                    return None
                pairs = [(r, b) for r in runs[relay_label] for b in runs[base] if r["round"] == b["round"]]
                return spread([b["seconds"] / r["seconds"] for r, b in pairs])

            ratios[label] = {"same": same, "vs_same": per_round(same), "best": best_plain,
                             "vs_best": per_round(best_plain),
                             "vs_best_medians": v["files_s"]["median"] / plains[best_plain]["files_s"]["median"]}
        result[count] = {"contenders": per, "best_plain": best_plain, "ratios": ratios}
    counts = sorted(int(c) for c in sc["counts"])
    if len(counts) >= 2 and "relay" in result[counts[0]]["contenders"]:
        result["rss"] = _rss_growth(sc, result, counts, "relay")
        result["rss_by"] = {label: _rss_growth(sc, result, counts, label)
                            for label in result[counts[0]]["contenders"]
                            if label.startswith("relay-") and label in result[counts[-1]]["contenders"]}
    return result


def _rss_growth(sc: dict[str, Any], result: dict[str, Any], counts: list[int], label: str) -> dict[str, Any]:
    """A relay contender's peak RSS over the largest count against the smallest, with the widest width each run
    reached (the peak follows it: each small delivery in flight holds its connection, buffers and SDK objects)."""
    small, large = (result[c]["contenders"][label]["rss"] for c in (counts[0], counts[-1]))

    def widest(count: int) -> list[int]:
        rows = sc["counts"].get(count) or sc["counts"].get(str(count)) or {"runs": {}}
        return [max([w for w, _ in r.get("paces") or []] + [r.get("width") or 0]) for r in rows["runs"][label]]

    return {"small_count": counts[0], "large_count": counts[-1], "small": small, "large": large,
            "growth": large["median"] / small["median"], "widest": {"small": widest(counts[0]),
                                                                  "large": widest(counts[-1])}}


def idle_sync(probe: Probe, settings: dict[str, str], count: int, rounds: int = 3) -> dict[str, Any]:
    """What every timer run costs a long-running relay: `sync` over `count` exports that are all delivered, against
    a bare listing of the exports and of the ledger (`bare-listing`), interleaved rounds (A B, B A, A B)."""
    tag = uuid.uuid4().hex[:8]
    params = {"container": f"bench-scale-{tag}", "ledger": f"bench-scale-ledger-{tag}", "count": count}
    log(f"scale: {count:,} delivered exports (uploading; a receipt each, one by one)")
    setup = probe.run("setup-scale", settings, **params)
    if setup["count"] != count:
        raise RuntimeError(f"setup put {setup['count']} exports, not {count}")
    syncs: list[dict[str, Any]] = []
    bares: list[dict[str, Any]] = []
    for index in range(rounds):
        pair = [("sync", "relay-sync-idle", syncs), ("bare", "bare-listing", bares)]
        for label, which, rows in pair if index % 2 == 0 else pair[::-1]:
            log(f"scale {count:,}: {label} (round {index + 1} of {rounds}; load {os.getloadavg()[0]:.2f})")
            rows.append(probe.run(which, settings, **params))
    ratio = spread([s["seconds"] / b["seconds"] for s, b in zip(syncs, bares, strict=True)])
    return {"count": count, "setup": setup, "sync": min(syncs, key=lambda r: r["seconds"]), "syncs": syncs,
            "bares": bares, "ratio": ratio}


# --- report -----------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (each a ratio of two contenders of this run) and whether each target is met."""
    large, small, cold = r["large"], r["small"], r["cold"]
    c = large["contenders"]

    def best(label: str) -> dict[str, Any]:
        return max(c[label], key=lambda row: row["mib_s"])

    stream, plain_best = best("relay-stream"), best("plain-best-gateway")
    direct, naive, server = best("plain-best-direct"), c["naive-gateway"][0], c["relay-server"][0]
    sync, bare, loop = small["sync"], small["bare"], small["loop"]
    evidence, threaded = small["evidence"], small["threaded"]
    n = small["count"]
    s = {
        "stream_mib_s": stream["mib_s"], "best_mib_s": plain_best["mib_s"], "direct_mib_s": direct["mib_s"],
        "naive_mib_s": naive["mib_s"], "server_mib_s": server["mib_s"],
        "stream_vs_best": stream["mib_s"] / plain_best["mib_s"],
        "stream_vs_naive": stream["mib_s"] / naive["mib_s"],
        "gateway_cost": plain_best["mib_s"] / direct["mib_s"],
        "rss_relay": max(row["rss_peak"] for row in c["relay-stream"] + c["relay-sync"]),
        "rss_relay_sync": c["relay-sync"][0]["rss_peak"],
        "rss_relay_idle": min(row["rss_idle"] for row in c["relay-stream"]),
        "rss_best": max(row["rss_peak"] for row in c["plain-best-gateway"]),
        "rss_naive": naive["rss_peak"], "rss_server": server["rss_peak"],
        "sync_files_s": n / sync["seconds"], "loop_files_s": n / loop["seconds"], "bare_files_s": n / bare["seconds"],
        "sync_vs_loop": loop["seconds"] / sync["seconds"],
        "threaded_files_s": n / threaded["seconds"],
        "sync_vs_threaded": threaded["seconds"] / sync["seconds"],
        "ledger_ms_per_file": (sync["seconds"] - evidence["seconds"]) / n * 1000,
        "evidence_ms_per_file": (evidence["seconds"] - bare["seconds"]) / n * 1000,
        "evidence_requests_per_file": (nreq(evidence) - nreq(bare)) / n,
        "readback_ms_per_file": (small["readback"]["seconds"] - bare["seconds"]) / n * 1000,
        "readback_requests_per_file": (nreq(small["readback"])
                                       - nreq(bare)) / n,
        "sky_tokens": sync["skyporten_requests"], "entra_tokens": sync["entra_requests"],
        "cold_delta_ms": cold["function_app_ms"] - cold["azure_functions_ms"],
        "server_gateway_bytes": server["gateway_bytes_in"],
        "server_process_bytes": server["read_bytes"] + server["written_bytes"],
        "stream_process_bytes": stream["read_bytes"] + stream["written_bytes"],
        "stream_gateway_bytes": stream["gateway_bytes_in"],
    }
    s["met"] = {
        "stream_vs_best": s["stream_vs_best"] >= TARGETS["stream_vs_best"],
        "rss": s["rss_relay"] <= TARGETS["rss_mib"],
        "sync_vs_loop": s["sync_vs_loop"] >= TARGETS["sync_vs_loop"],
        "sync_vs_threaded": s["sync_vs_threaded"] >= TARGETS["sync_vs_threaded"],
        "tokens": s["sky_tokens"] == TARGETS["tokens"] and s["entra_tokens"] == TARGETS["tokens"],
        "cold": s["cold_delta_ms"] <= TARGETS["cold_ms"],
        # The file moves in blocks: had any block passed through the process or the gateway, either count
        # would be at least one block. What remains is requests, the block list and the ledger's records.
        "server_bytes": max(s["server_gateway_bytes"], s["server_process_bytes"]) < large["block"],
    }
    return s


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def issue30_headline(r: dict[str, Any]) -> list[str]:
    """The headline rows of issue 30 (each the median of per-round ratios, with their range)."""
    rows: list[str] = []
    ss = r.get("scaling_summary") or {}
    for count, res in ss.items():
        if count in NOT_COUNTS or "relay" not in res["ratios"]:
            continue
        x = res["ratios"]["relay"]
        same, best = x["vs_same"], x["vs_best"]
        rows.append(f"| sync of {int(count):,} x 4 KiB at the relay's defaults vs plain copy on the same "
                    f"{x['same'].split('-')[1]} threads (median of rounds, range) | {_ratio(same)} | "
                    f">= {TARGETS['many_vs_same']}x | "
                    f"{verdict(bool(same) and same['median'] >= TARGETS['many_vs_same'])} |")
        rows.append(f"| sync of {int(count):,} x 4 KiB at the relay's defaults vs plain copy at its best thread count "
                    f"({x['best'].split('-')[1]} of {', '.join(map(str, r['scaling']['threads']))}) | {_ratio(best)} | "
                    f">= {TARGETS['many_vs_best']}x | "
                    f"{verdict(bool(best) and best['median'] >= TARGETS['many_vs_best'])} |")
    if "rss" in ss:
        g = ss["rss"]
        rows.append(f"| peak RSS of a sync, {g['large_count']:,} vs {g['small_count']:,} exports (median of runs) | "
                    f"{g['growth']:.3f}x ({g['large']['median']:.0f} vs {g['small']['median']:.0f} MiB) | "
                    f"<= {TARGETS['rss_growth']:.2f}x | {verdict(g['growth'] <= TARGETS['rss_growth'])} |")
    for label, y in (ss.get("rss_by") or {}).items():
        rows.append(f"| the same at SYNC_CONCURRENCY={label.split('-', 1)[1]} (the pace has fewer widths to reach) | "
                    f"{y['growth']:.3f}x ({y['large']['median']:.0f} vs {y['small']['median']:.0f} MiB) | - | |")
    for x in r.get("idle") or []:
        rows.append(f"| idle sync over {x['count']:,} delivered exports vs a bare listing of the exports and the "
                    f"ledger | {_ratio(x['ratio'])} | <= {TARGETS['idle_vs_listing']}x | "
                    f"{verdict(x['ratio']['median'] <= TARGETS['idle_vs_listing'])} |")
    return rows


def _idle_sync_row(scale: dict[str, Any] | None) -> list[str]:
    if not scale:
        return []
    row, count = scale["sync"], scale["count"]
    requests = nreq(row)
    return [f"| idle sync over {count:,} delivered exports (what each timer run costs) | {row['seconds']:.1f} s "
            f"({row['seconds'] / count * 1000:.2f} ms per export), {requests} requests, peak RSS "
            f"{row['rss_peak']:.0f} MiB ({row['rss_idle']:.0f} before) | - | |"]


def _label(label: str, default_concurrency: Any) -> str:
    if label == "relay":
        return f"relay sync, defaults (SYNC_CONCURRENCY={default_concurrency})"
    if label.startswith("relay-w"):
        return f"relay sync, held at {label[len('relay-w'):]} in flight (bench only)"
    if label.startswith("relay-"):
        return f"relay sync, SYNC_CONCURRENCY={label.split('-', 1)[1]}"
    return f"plain SDK copy, {label.split('-', 1)[1]} threads"


def _ratio(x: dict[str, float] | None) -> str:
    if not x:
        return "-"
    return f"{x['median']:.2f}x ({x['min']:.2f}-{x['max']:.2f}, {x['n']} rounds)"


def scaling_lines(r: dict[str, Any]) -> list[str]:
    sc, ss = r.get("scaling"), r.get("scaling_summary")
    if not sc or not ss:
        return []
    lines = [f"### Many small files at scale: plain copy on {', '.join(map(str, sc['threads']))} threads vs the "
             f"relay's sync at its defaults (issue 30; interleaved rounds: {', '.join(map(str, sc['rounds']))})", ""]
    for count, res in ss.items():
        if count in NOT_COUNTS:
            continue
        per = res["contenders"]
        default = per.get("relay", {}).get("concurrency")
        lines += [f"**{int(count):,} x 4 KiB exports.** Best plain thread count (by median): "
                  f"{res['best_plain'].split('-')[1]}.", "",
                  "| contender | median files/s | runs (s) | spread (max/min) | load average at each run's start | "
                  "peak RSS (median) | requests per file | connections opened | CPU ms per file: contender / "
                  "simulators / Azurite |", "|---|---|---|---|---|---|---|---|---|"]
        for label, v in per.items():
            f = v["files_s"]
            lines.append(f"| {_label(label, default)} | {f['median']:.1f} | "
                         f"{', '.join(f'{t:.2f}' for t in v['seconds'])} | {f['spread']:.2f}x | "
                         f"{', '.join(f'{x:.2f}' for x in v['load'])} | {v['rss']['median']:.0f} MiB | "
                         f"{v['requests'] / int(count):.3f} | {v['connections']:.0f} | "
                         f"{v['cpu'] / int(count) * 1000:.2f} / {v['sim_cpu'] / int(count) * 1000:.2f} / "
                         f"{v['azurite_cpu'] / int(count) * 1000:.2f} |")
        lines += ["", "| relay contender | vs plain on the same threads | vs plain at its best thread count "
                  "(per-round) | vs best (medians) |", "|---|---|---|---|"]
        for label, x in res["ratios"].items():
            lines.append(f"| {_label(label, default)} | {_ratio(x['vs_same'])} (plain {x['same'].split('-')[1]}) | "
                         f"{_ratio(x['vs_best'])} (plain {x['best'].split('-')[1]}) | {x['vs_best_medians']:.2f}x |")
        lines += ["", *_pace_lines(sc, count, default), ""]
    if "rss" in ss:
        x = ss["rss"]
        lines += [f"Peak RSS of the relay's sync (each run its own process, VmHWM), {x['small_count']:,} vs "
                  f"{x['large_count']:,} exports: {x['small']['median']:.0f} MiB ({x['small']['min']:.0f}-"
                  f"{x['small']['max']:.0f}) vs {x['large']['median']:.0f} MiB ({x['large']['min']:.0f}-"
                  f"{x['large']['max']:.0f}): {x['growth']:.3f}x (target <= 1.10x: "
                  f"{verdict(x['growth'] <= 1.10)}).{_widest(x)}", ""]
        for label, y in (ss.get("rss_by") or {}).items():
            lines += [f"The same at {_label(label, None)}: {y['small']['median']:.0f} vs {y['large']['median']:.0f} "
                      f"MiB, {y['growth']:.3f}x.{_widest(y)}", ""]
    lines += ["Ratios are per round (the plain run's seconds / the relay run's seconds of the same round), their "
              "median and range; spread is a contender's slowest run over its fastest. Each run is a fresh process "
              "on a fresh ledger into its own destination folder" + (
                  ", on a stack of its own (Azurite and the simulators started afresh, the exports uploaded untimed: "
                  "Azurite's listings scan every blob it holds, so on a shared stack a run paid for the ones before "
                  "it)." if sc.get("fresh_stack_per_run") else "."), ""]
    return lines


def _widest(x: dict[str, Any]) -> str:
    w = x.get("widest")
    if not w:
        return ""
    return (f" The widest width each run reached (small deliveries in flight): {', '.join(map(str, w['small']))} "
            f"over {x['small_count']:,}; {', '.join(map(str, w['large']))} over {x['large_count']:,}.")


def _pace_lines(sc: dict[str, Any], count: str, default: Any) -> list[str]:
    """The widths each relay run's pace measured, epoch by epoch (shared.pace), repeats folded: `8 x12`."""
    runs = (sc.get("counts", {}).get(count) or sc.get("counts", {}).get(int(count)) or {}).get("runs", {})
    lines = []
    for label, rows in runs.items():
        if not label.startswith("relay"):
            continue
        told = []
        for row in rows:
            if "paces" not in row:
                continue
            folded: list[list[int]] = []
            for width, _rate in row["paces"]:
                if folded and folded[-1][0] == width:
                    folded[-1][1] += 1
                else:
                    folded.append([width, 1])
            steps = ", ".join(f"{w}" if n == 1 else f"{w} x{n}" for w, n in folded) or "no full epoch"
            told.append(f"{steps} (ended at {row.get('width', '?')})")
        if told:
            lines.append(f"- {_label(label, default)}, small deliveries in flight epoch by epoch (shared.pace), "
                         f"each run: " + "; ".join(told) + ".")
    if lines:
        lines.insert(0, "The relay's pace: an epoch is at least 100 deliveries at one width; the width it settles "
                        "at is tried against its neighbours again every 12 epochs.")
    return lines


def idle_lines(r: dict[str, Any]) -> list[str]:
    idle = r.get("idle")
    if not idle:
        return []
    lines = ["### Idle sync vs a bare listing of the exports and the ledger", "",
             "| delivered exports | idle sync (s, each run) | bare listing (s, each run) | ratio, per round | "
             "requests sync / bare | peak RSS sync | load at each sync | target <= 1.1x |",
             "|---|---|---|---|---|---|---|---|"]
    for x in idle:
        sync_req = nreq(x["syncs"][0])
        bare_req = nreq(x["bares"][0])
        sync_s = ", ".join(f"{row['seconds']:.2f}" for row in x["syncs"])
        bare_s = ", ".join(f"{row['seconds']:.2f}" for row in x["bares"])
        loads = ", ".join(f"{row['load'][0]:.2f}" for row in x["syncs"])
        lines.append(f"| {x['count']:,} | {sync_s} | {bare_s} | {_ratio(x['ratio'])} | "
                     f"{sync_req} / {bare_req} | {max(row['rss_peak'] for row in x['syncs']):.0f} MiB | {loads} | "
                     f"{verdict(x['ratio']['median'] <= 1.1)} |")
    lines += ["", "The bare listing lists every page of the export container and of the whole ledger container "
              "(names only, 5,000 a page, ElementTree), in the same kind of process, interleaved with the syncs "
              "(A B, B A, ...); the receipts were written one by one by the product's `Ledger.record_receipt`.", ""]
    return lines


def partial_report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"## Partial run: {r['started']} UTC ({', '.join(r['sections'])}, {r['minutes']:.1f} min)", "",
             f"Commit {m['commit']}; load average {m['load_start']:.2f} at the start, {r['load_end']:.2f} at the end.",
             ""]
    return "\n".join(lines + scaling_lines(r) + idle_lines(r)) + "\n"


def report(r: dict[str, Any]) -> str:
    m, large, small, cold, s = r["machine"], r["large"], r["small"], r["cold"], r["summary"]
    size_label = fmt_bytes(large["size"])
    n, block_mib = small["count"], large["block"] // MiB
    lines = [
        f"## Last run: {r['started']} UTC ({r['kind']}, {r['minutes']:.1f} min)",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, Linux {m['kernel']}; "
        f"Python {m['python']}, Node {m['node']}, Azurite {m['azurite']} (in memory, HTTPS, OAuth), "
        f"azure-storage-blob {m['azure_storage_blob']}, azure-functions {m['azure_functions']}; commit "
        f"{m['commit']}. Load average {m['load_start']:.2f} at the start, {r['load_end']:.2f} at the end "
        "(the machine is shared: compare ratios, not absolute figures).",
        "",
        "### Headline (each figure a ratio against a baseline of this run)",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| large file: relay stream vs best plain SDK copy, through the gateway | {s['stream_vs_best']:.2f}x "
        f"({s['stream_mib_s']:.1f} vs {s['best_mib_s']:.1f} MiB/s) | >= {TARGETS['stream_vs_best']}x | "
        f"{verdict(s['met']['stream_vs_best'])} |",
        f"| large file: relay stream vs naive readall + upload_blob | {s['stream_vs_naive']:.2f}x "
        f"({s['naive_mib_s']:.1f} MiB/s naive) | - | |",
        f"| gateway simulator's cost: best plain copy through it vs straight to Azurite | {s['gateway_cost']:.2f}x "
        f"({s['best_mib_s']:.1f} vs {s['direct_mib_s']:.1f} MiB/s) | - | |",
        f"| peak RSS of the relay process copying {size_label} (deliver and sync) | {s['rss_relay']:.0f} MiB "
        f"(sync: {s['rss_relay_sync']:.0f} MiB; naive: {s['rss_naive']:.0f} MiB) | <= {TARGETS['rss_mib']:.0f} MiB | "
        f"{verdict(s['met']['rss'])} |",
        f"| sync of {n:,} x {small['file_size'] // 1024} KiB vs sequential plain SDK loop | {s['sync_vs_loop']:.2f}x "
        f"({s['sync_files_s']:.1f} vs {s['loop_files_s']:.1f} files/s) | >= {TARGETS['sync_vs_loop']}x | "
        f"{verdict(s['met']['sync_vs_loop'])} |",
        f"| sync of {n:,} x {small['file_size'] // 1024} KiB (ledger and destination evidence included) vs plain "
        f"SDK copy on as many threads | {s['sync_vs_threaded']:.2f}x ({s['sync_files_s']:.1f} vs "
        f"{s['threaded_files_s']:.1f} files/s) | >= {TARGETS['sync_vs_threaded']}x | "
        f"{verdict(s['met']['sync_vs_threaded'])} |",
        f"| destination evidence per file, as the sync gathers it: a listing per batch (copies with it minus "
        f"copies without, / {n:,}) | {s['evidence_ms_per_file']:.2f} ms, {s['evidence_requests_per_file']:.3f} "
        "requests | - | |",
        f"| the alternative: a read-back per file (copies with it minus copies without, / {n:,}) | "
        f"{s['readback_ms_per_file']:.2f} ms, {s['readback_requests_per_file']:.2f} requests | - | |",
        f"| ledger cost per file (sync minus the same copies and evidence without it, / {n:,}) | "
        f"{s['ledger_ms_per_file']:.1f} ms | - | |",
        *_idle_sync_row(r.get("scale")),
        *issue30_headline(r),
        f"| Skyporten / Entra token requests per {n:,} deliveries | {s['sky_tokens']} / {s['entra_tokens']} | "
        f"1 / 1 | {verdict(s['met']['tokens'])} |",
        f"| cold start: import function_app over bare azure.functions (median of {cold['runs']}) | "
        f"{s['cold_delta_ms']:+.0f} ms ({cold['function_app_ms']:.0f} vs {cold['azure_functions_ms']:.0f} ms) | "
        f"<= +{TARGETS['cold_ms']:.0f} ms | {verdict(s['met']['cold'])} |",
        f"| bytes through the function, {size_label} in COPY_MODE=server | gateway bytes_in "
        f"{s['server_gateway_bytes']:,} B; process I/O {fmt_bytes(s['server_process_bytes'])} (stream mode: "
        f"{fmt_bytes(s['stream_process_bytes'])}) | 0 file bytes | {verdict(s['met']['server_bytes'])} |",
        "",
        "Server mode: the gateway's `bytes_in` is the Put Block List body (the block ids); the process I/O is "
        "requests, TLS and the ledger's records; stream mode's process I/O (the file in and out) shows what the "
        "measure would catch. Speeds are best of the runs below.",
        "",
        f"### Large file: {size_label}, {block_mib} MiB blocks, parallelism {large['parallelism']}",
        "",
        "Source: random bytes in the partner's export container with a declared Content-MD5. Each row is one "
        "process. The token chain (Key Vault, Skyporten, Entra) is fetched before the clock starts; its time is "
        "shown apart. `process I/O` is the contender's read+write system-call bytes during the copy "
        "(sockets, so TLS included); `gateway in` is what the gateway simulator received in request bodies.",
        "",
        "| contender | seconds | MiB/s | vs best plain | RSS before | RSS peak | process I/O | gateway in | "
        "token chain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["relay-stream", "plain-best-gateway", "plain-best-direct", "naive-gateway", "relay-server", "relay-sync"]
    for label in order:
        for row in large["contenders"][label]:
            lines.append(
                f"| {label} | {row['seconds']:.2f} | {row['mib_s']:.1f} | {row['mib_s'] / s['best_mib_s']:.2f}x | "
                f"{row['rss_idle']:.0f} MiB | {row['rss_peak']:.0f} MiB | "
                f"{fmt_bytes(row['read_bytes'] + row['written_bytes'])} | {fmt_bytes(row['gateway_bytes_in'])} | "
                f"{row['chain_seconds']:.2f} s |"
            )
    setup = large["setup"]
    lines += [
        "",
        f"Setup (not a contender): uploading the source took {setup['seconds']:.1f} s "
        f"({large['size'] / MiB / setup['seconds']:.1f} MiB/s straight to Azurite). Azurite's own peak RSS (the "
        f"largest of the sections' stacks): {r['azurite_hwm_mib']:.0f} MiB.",
        "",
        f"### Many small files: {n:,} x {small['file_size'] // 1024} KiB",
        "",
        "| contender | seconds | files/s | vs plain loop | time per file | requests per file: partner storage / "
        "gateway / other | RSS peak | Skyporten | Entra | MSI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"relay-sync": "relay sync (ledger, evidence)", "plain-threaded": "plain SDK copy, threaded",
              "copies-with-evidence": "same copies + listing evidence, no ledger",
              "copies-with-readback": "same copies + read-back each, no ledger",
              "copies-without-ledger": "same copies, no evidence, no ledger",
              "plain-loop": "plain SDK loop, sequential"}
    for which, row in small["runs"]:
        label = labels[which]
        req = row["requests"]
        per = " / ".join(f"{req.get(k, 0) / n:.2f}" for k in ("storage", "gateway", "other"))
        lines.append(
            f"| {label} | {row['seconds']:.2f} | {n / row['seconds']:.1f} | "
            f"{small['loop']['seconds'] / row['seconds']:.2f}x | {row['seconds'] / n * 1000:.1f} ms | {per} | "
            f"{row['rss_peak']:.0f} MiB | {row['skyporten_requests']} | {row['entra_requests']} | "
            f"{row['msi_requests']} |"
        )
    lines += [
        "",
        f"Sync, the threaded plain copy and the no-ledger copies run on SYNC_CONCURRENCY="
        f"{small['sync']['concurrency']} threads; the plain loop on one. The runs are interleaved (A B C D E E D C B "
        "A) and each contender's best run makes the "
        "headline; `vs plain loop` is against the loop's best run. Requests are counted in the contender's "
        "process (urllib3) during the timed part; partner storage is Azurite's partner account (exports and "
        "ledger). Token columns count the simulators' token endpoints during each contender's whole process "
        "(the warm-up fetch included): Skyporten grants, Entra client-assertion exchanges, managed identity "
        "(Key Vault) tokens.",
        "",
        *scaling_lines(r),
        *idle_lines(r),
        f"### Cold start (fresh interpreters, median of {cold['runs']}, in-process import time)",
        "",
        f"- `import azure.functions`: {cold['azure_functions_ms']:.0f} ms "
        f"(runs: {', '.join(f'{v:.0f}' for v in cold['azure_functions_all_ms'])})",
        f"- `import function_app`: {cold['function_app_ms']:.0f} ms "
        f"(runs: {', '.join(f'{v:.0f}' for v in cold['function_app_all_ms'])})",
        f"- `-X importtime` (median of 3): function_app {cold['importtime_function_app_ms']:.0f} ms, of which:",
    ]
    for depth, name, ms in cold["tree_ms"]:
        lines.append(f"{'  ' * (depth + 1)}- `{name}` {ms:.0f} ms")
    lines += [
        "",
        "(-X importtime charges a module shared by two importers to the first; its own overhead inflates "
        "absolute figures.)",
    ]
    return "\n".join(lines) + "\n"


def history_row(r: dict[str, Any]) -> str:
    s, m = r["summary"], r["machine"]
    return (
        f"| {r['started']} | {m['commit']} | {r['kind']} | {fmt_bytes(r['large']['size'])} | "
        f"{s['stream_vs_best']:.2f}x | {s['stream_mib_s']:.0f} | {s['gateway_cost']:.2f}x | "
        f"{s['rss_relay']:.0f} / {s['rss_naive']:.0f} | {r['small']['count']} | {s['sync_vs_loop']:.2f}x | "
        f"{s['ledger_ms_per_file']:.1f} | {s['sky_tokens']}/{s['entra_tokens']} | {s['cold_delta_ms']:+.0f} | "
        f"{s['server_gateway_bytes']} / {fmt_bytes(s['server_process_bytes'])} | {m['load_start']:.1f} | "
        f"{s.get('sync_vs_threaded', 0):.2f}x | {s.get('evidence_ms_per_file', 0):.2f} | {_history30(r)} |"
    )


def _history30(r: dict[str, Any]) -> str:
    ss = r.get("scaling_summary") or {}
    parts = []
    for count, res in ss.items():
        if count not in NOT_COUNTS and "relay" in res["ratios"]:
            x = res["ratios"]["relay"]
            same = x["vs_same"]["median"] if x["vs_same"] else float("nan")
            parts.append(f"{int(count):,}: {same:.2f}x / {x['vs_best']['median']:.2f}x")
    many = "; ".join(parts) or "-"
    growth = f"{ss['rss']['growth']:.2f}x" if "rss" in ss else "-"
    idle = "; ".join(f"{x['count']:,}: {x['ratio']['median']:.2f}x" for x in r.get("idle") or []) or "-"
    return f"{many} | {growth} | {idle}"


HISTORY_HEADER = (
    "| date (UTC) | commit | run | large | stream/best | stream MiB/s | gateway/direct | RSS relay / naive MiB | "
    "files | sync/loop | ledger ms/file | tokens S/E | cold ms | server: gateway B / process | load | "
    "sync/threaded | evidence ms/file | sync at defaults vs plain same / best threads | RSS 10k/1.5k | "
    "idle/listing |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def write_results(path: Path, r: dict[str, Any]) -> None:
    old_rows: list[str] = []
    if path.exists():
        text = path.read_text()
        if "## History" in text:
            tail = text.split("## History", 1)[1]
            old_rows = [line for line in tail.splitlines()
                        if line.startswith("| ") and not line.startswith(("| date", "|---"))]
    rows = [*old_rows, history_row(r)][-HISTORY_ROWS:]
    text = (
        "# Benchmark results\n\n"
        "Written by `make bench` (`.venv/bin/python -m bench.run`): the last run in full, then one row per run. "
        "What each figure means and how it is measured: [README.md](README.md).\n\n"
        + report(r)
        + "\n## History\n\n" + HISTORY_HEADER + "\n".join(rows) + "\n"
    )
    path.write_text(text)


# --- main -------------------------------------------------------------------------------------------------


SECTIONS = ("cold", "large", "small", "scaling", "idle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (64 MiB, 200 files) for development")
    parser.add_argument("--size-mib", type=int, help="large file size (default 1024; quick 64)")
    parser.add_argument("--files", type=int, help="number of small exports (default 2000; quick 200)")
    parser.add_argument("--scale-files", help="delivered exports for the idle sync, comma-separated (default "
                        "20000; quick 2000; 0 skips it)")
    parser.add_argument("--idle-rounds", type=int, default=3, help="idle sync vs bare listing rounds (default 3)")
    parser.add_argument("--many", help="small-export counts of the scaling section, comma-separated (default "
                        "1500,10000; quick 300,1000)")
    parser.add_argument("--threads", default="8,16,32,64", help="plain copy thread counts of the scaling section")
    parser.add_argument("--relay-concurrency", default="4",
                        help="extra relay-sync contenders with SYNC_CONCURRENCY set, comma-separated (default 4: 8 in "
                        "flight whatever the run, so its peak RSS over 1,500 and 10,000 shows growth with files "
                        "apart from the widths the pace reaches; '' for none)")
    parser.add_argument("--relay-width", default="",
                        help="extra relay-sync contenders held at these widths of small deliveries in flight "
                             "(comma-separated; the pace's ladder patched in the contender: what the relay delivers "
                             "at one width, against plain on as many threads; default none)")
    parser.add_argument("--rounds", help="interleaved rounds of the scaling section, one number or one per count "
                        "(default 3,2: 3 over 1,500, 2 over 10,000, to stay within ~25 minutes; quick 2)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"what to run, comma-separated (default all: {','.join(SECTIONS)}); RESULTS.md is "
                        "written only when all run")
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--block-mib", type=int, default=8, help="the relay's BLOCK_SIZE default")
    parser.add_argument("--parallelism", type=int, default=4, help="the relay's PARALLELISM default")
    parser.add_argument("--repeat", type=int, default=1, help="A-B-B-A rounds of relay stream vs best plain copy")
    parser.add_argument("--small-rounds", type=int, default=1,
                        help="A..F F..A rounds of the issue-17 small-file contenders (default 1: best of 2 runs each)")
    parser.add_argument("--import-runs", type=int, help="fresh interpreters per module (default 11; quick 5)")
    parser.add_argument("--write", action="store_true", help="write RESULTS.md after a --quick run too")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size = (args.size_mib or (64 if args.quick else 1024)) * MiB
    count = args.files or (200 if args.quick else 2000)
    scale_arg = args.scale_files if args.scale_files is not None else ("2000" if args.quick else "20000")
    scales = [int(v) for v in scale_arg.split(",") if int(v)]
    many = [int(v) for v in (args.many or ("300,1000" if args.quick else "1500,10000")).split(",") if v]
    threads = [int(v) for v in args.threads.split(",") if v]
    relay_concurrency = [int(v) for v in args.relay_concurrency.split(",") if v]
    rounds_list = [int(v) for v in (args.rounds or ("2" if args.quick else "3,2")).split(",") if v]
    rounds = [rounds_list[min(i, len(rounds_list) - 1)] for i in range(len(many))]
    import_runs = args.import_runs or (5 if args.quick else 11)
    sections = [v for v in args.sections.split(",") if v]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    complete = set(sections) == set(SECTIONS)
    kind = ("quick" if args.quick else "full") if complete else "partial"

    started = time.monotonic()
    r: dict[str, Any] = {"kind": kind, "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
                         "machine": machine(), "sections": sections}
    log(f"{kind} run ({', '.join(sections)}): {size // MiB} MiB large file, {count} small files, scaling over "
        f"{many}, idle over {scales}; machine {r['machine']['cores']} cores, Python {r['machine']['python']}, "
        f"Azurite {r['machine']['azurite']}")
    if "cold" in sections:
        log("cold start: fresh interpreters")
        r["cold"] = cold_start(import_runs)

    # Azurite lists blobs by scanning every blob the instance holds (LokiJS: a regex on the name, then a sort), so
    # its listings slow down as a run piles up copies; the relay lists more than a plain copy (its evidence, its
    # ledger). Each section therefore runs on a stack of its own, and the scaling section on one per export count.
    # Every contender's bytes stay in Azurite's memory until its GC (10 min): the large section holds the source,
    # 6 x repeat + 3 copies of it (naive, server, sync); the small ones their copies and ledgers.
    @contextlib.contextmanager
    def stack_for(label: str, extra_mib: int, quiet: bool = False) -> Iterator[tuple[Probe, dict[str, str]]]:
        workdir = WORK / f"run-{uuid.uuid4().hex[:8]}"
        if not quiet:
            log(f"{label}: starting the local stack (Azurite capped at {1024 + extra_mib} MiB)")
        stack = start_stack(workdir, 1024 + extra_mib)
        try:
            yield Probe(stack), dict(stack.settings)
            hwm[label] = max(hwm.get(label, 0.0), process_hwm_mib(stack.azurite.process.pid))
        finally:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def on_stack(label: str, extra_mib: int, work: Callable[[Probe, dict[str, str]], Any]) -> Any:
        with stack_for(label, extra_mib) as (probe, settings):
            return work(probe, settings)

    hwm: dict[str, float] = {}
    if "large" in sections:
        r["large"] = on_stack("large", (6 * args.repeat + 4) * size // MiB, lambda probe, settings: large_file(
            probe, settings, size, args.block_mib * MiB, args.parallelism, args.repeat))
    if "small" in sections:
        r["small"] = on_stack("small", count * (12 * args.small_rounds + 1) * (args.file_kib + 2) // 1024,
                              lambda probe, settings: small_files(probe, settings, count, args.file_kib * 1024,
                                                                  args.small_rounds))
    if "scaling" in sections:
        def fresh(n: int) -> Any:
            return stack_for(f"scaling {n:,}", 2 * n * (args.file_kib + 2) // 1024, quiet=True)

        r["scaling"] = scaling(fresh, many, threads, rounds, relay_concurrency, args.file_kib * 1024,
                               tuple(int(v) for v in args.relay_width.split(",") if v))
    if "idle" in sections and scales:
        r["idle"] = [on_stack(f"idle {n:,}", n // 200, lambda probe, settings, n=n: idle_sync(
            probe, settings, n, args.idle_rounds)) for n in scales]
        r["scale"] = r["idle"][0]
    r["azurite_hwm_mib"] = max(hwm.values(), default=float("nan"))
    r["azurite_hwm_by_section"] = hwm
    r["load_end"] = os.getloadavg()[0]
    r["minutes"] = (time.monotonic() - started) / 60
    if "scaling" in r:
        r["scaling_summary"] = summarize_scaling(r["scaling"])
    if complete:
        r["summary"] = summarize(r)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / f"last-{kind}.json").write_text(json.dumps(r, indent=2, default=str))
    text = report(r) if complete else partial_report(r)
    print()
    print(text)
    if complete and (kind == "full" or args.write):
        write_results(args.results, r)
        log(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
