"""One benchmark contender per process: `python -m bench.contenders NAME`, with a JSON job on stdin.

The job carries the local stack's settings (connection strings and the MSI secret included: they come through
a pipe, never argv, and are never printed) and the contender's parameters. The process prints one JSON line of
numbers on stdout. Peak RSS is this process's VmHWM (/proc/self/status), read before and after the measured
part; network bytes are this process's rchar/wchar (/proc/self/io: every read and write system call, sockets
included, so TLS framing counts too) over the measured part.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
# azure-identity's managed identity credential and requests read these from the process environment.
PROCESS_ENV = ("REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER")


def vmhwm_mib() -> float:
    """Peak resident set of this process in MiB (VmHWM starts afresh at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vmrss_mib() -> float:
    """Resident set of this process now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def io_counters() -> dict[str, int]:
    """This process's /proc/self/io (all threads): rchar and wchar count socket and file bytes alike."""
    values = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = int(value)
    return values


class Measure:
    """Wall time, peak RSS and I/O bytes of one measured block."""

    def __enter__(self) -> Measure:
        self._requests = REQUESTS.snapshot() if REQUESTS else {}
        self.load_start = os.getloadavg()[0]
        self._cpu = os.times()
        self.rss_idle = vmhwm_mib()
        self._io = io_counters()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        cpu = os.times()
        self.cpu = (cpu.user - self._cpu.user) + (cpu.system - self._cpu.system)
        io = io_counters()
        self.read_bytes = io["rchar"] - self._io["rchar"]
        self.written_bytes = io["wchar"] - self._io["wchar"]
        self.rss_peak = vmhwm_mib()
        self.load_end = os.getloadavg()[0]
        after = REQUESTS.snapshot() if REQUESTS else {}
        self.requests = {k: v - self._requests.get(k, 0) for k, v in after.items() if v - self._requests.get(k, 0)}

    def row(self, **extra: Any) -> dict[str, Any]:
        return {"seconds": self.seconds, "rss_idle": self.rss_idle, "rss_peak": self.rss_peak,
                "read_bytes": self.read_bytes, "written_bytes": self.written_bytes, "requests": self.requests,
                "load": [self.load_start, self.load_end], "cpu": self.cpu, **extra}


class RequestCounter:
    """Counts this process's HTTP requests per server (urllib3, under requests and azure-core), by role:
    "gateway" (Bane NOR's gateway), "storage" (Azurite: the partner's account, ledger included, or Bane NOR's
    account straight) and "other" (Key Vault, Skyporten, Entra)."""

    def __init__(self, settings: dict[str, str]) -> None:
        import threading
        from urllib.parse import urlsplit

        self.roles = {urlsplit(settings["BANENOR_STORAGE_URL"]).netloc: "gateway",
                      urlsplit(_blob_endpoint(settings["EXPORT_STORAGE"])).netloc: "storage"}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        from urllib3.connectionpool import HTTPConnectionPool

        original = HTTPConnectionPool.urlopen
        counter = self

        def urlopen(pool: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            role = counter.roles.get(f"{pool.host}:{pool.port}", "other")
            with counter._lock:
                counter.counts[role] = counter.counts.get(role, 0) + 1
            return original(pool, method, url, *args, **kwargs)

        HTTPConnectionPool.urlopen = urlopen  # type: ignore[method-assign]
        from urllib3.connectionpool import HTTPSConnectionPool

        for cls in (HTTPConnectionPool, HTTPSConnectionPool):  # a connection opened (TCP, and TLS for HTTPS)
            def _new_conn(pool: Any, new_conn: Any = cls._new_conn) -> Any:
                with counter._lock:
                    counter.counts["connections"] = counter.counts.get("connections", 0) + 1
                return new_conn(pool)

            cls._new_conn = _new_conn  # type: ignore[method-assign]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def _blob_endpoint(connection_string: str) -> str:
    parts = dict(item.split("=", 1) for item in connection_string.split(";") if "=" in item)
    return parts["BlobEndpoint"]


REQUESTS: RequestCounter | None = None


class Job:
    """The stack's settings and this contender's parameters; builds the clients every contender needs."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.settings: dict[str, str] = job["settings"]
        self.params: dict[str, Any] = job["params"]
        for key in PROCESS_ENV:
            os.environ[key] = self.settings[key]
        self.bundle = self.settings["REQUESTS_CA_BUNDLE"]

    def runtime(self, **overrides: str) -> Any:
        """The product's own wiring, as the function app builds it."""
        from shared.config import Settings
        from shared.runtime import Runtime

        return Runtime(Settings.load({**self.settings, **overrides}))

    def warm(self, runtime: Any) -> float:
        """Fetch the storage token once (Key Vault key, Skyporten, Entra); returns the seconds it took."""
        started = time.perf_counter()
        runtime.banenor_credential.get_token(runtime.settings.banenor.storage_audience + "/.default")
        return time.perf_counter() - started

    def source_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.settings["EXPORT_STORAGE"], connection_verify=self.bundle)

    def gateway_service(self, credential: Any) -> Any:
        """A plain BlobServiceClient on Bane NOR's gateway: SDK defaults plus what the gateway requires."""
        from azure.storage.blob import BlobServiceClient

        from shared.config import DEFAULT_API_VERSION

        return BlobServiceClient(
            account_url=self.settings["BANENOR_STORAGE_URL"], credential=credential,
            audience=self.settings["BANENOR_STORAGE_AUDIENCE"],
            api_version=self.settings.get("BANENOR_STORAGE_API_VERSION", DEFAULT_API_VERSION),
            connection_verify=self.bundle,
        )

    def direct_service(self) -> Any:
        """Bane NOR's Azurite account itself, bypassing the gateway simulator (shared key)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(
            self.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"], connection_verify=self.bundle
        )

    def dest_path(self, name: str) -> str:
        directory = self.settings.get("BANENOR_DIRECTORY", "").strip("/")
        path = f"{self.params['folder']}/{name}"
        return f"{directory}/{path}" if directory else path


# --- setup ------------------------------------------------------------------------------------------------


def setup_large(job: Job) -> dict[str, Any]:
    """Put one random source of `size` bytes into the export container as staged blocks, with Content-MD5."""
    import hashlib

    from azure.storage.blob import ContentSettings

    p = job.params
    container = job.source_service().get_container_client(p["container"])
    if not container.exists():
        container.create_container()
    blob = container.get_blob_client(p["name"])
    md5, ids = hashlib.md5(), []  # Content-MD5, not security
    with Measure() as m:
        for index, offset in enumerate(range(0, p["size"], p["block"])):
            data = os.urandom(min(p["block"], p["size"] - offset))
            md5.update(data)
            ids.append(f"{index:06d}")
            blob.stage_block(ids[-1], data, length=len(data))
        settings = ContentSettings(content_type="text/csv")
        if p.get("content_md5", True):
            settings.content_md5 = bytearray(md5.digest())
        blob.commit_block_list(ids, content_settings=settings)
    return m.row(size=blob.get_blob_properties().size)


def setup_small(job: Job) -> dict[str, Any]:
    """Put `count` exports of `size` bytes each into the export container (16 threads)."""
    p = job.params
    container = job.source_service().get_container_client(p["container"])
    if not container.exists():
        container.create_container()

    def put(index: int) -> None:
        container.upload_blob(f"small/file-{index:05d}.csv", os.urandom(p["size"]), overwrite=True)

    with Measure() as m, ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(p["count"])))
    return m.row(count=sum(1 for _ in container.list_blobs(name_starts_with="small/")))


def setup_scale(job: Job) -> dict[str, Any]:
    """`count` one-byte exports, each already delivered: a receipt for every version, written one by one by the
    product's own ledger (the state a long-running relay reaches), for the idle-sync measure."""
    import uuid

    from shared.ledger import Ledger, Receipt

    p = job.params
    service = job.source_service()
    container = service.get_container_client(p["container"])
    if not container.exists():
        container.create_container()

    def put(index: int) -> None:
        container.upload_blob(f"scale/{index // 1000:03d}/export-{index:06d}.csv", b"x", overwrite=True)

    with Measure() as m:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(put, range(p["count"])))
        ledger = Ledger(service.get_container_client(p["ledger"]))
        ledger.ensure()

        def receipt(blob: Any) -> None:
            ledger.record_receipt(Receipt(
                source_name=blob.name, source_etag=blob.etag, size=blob.size, md5="", destination_path=blob.name,
                destination_url="", destination_etag=f'"{uuid.uuid4().hex}"', attempts=1, first_attempt_at=0.0,
                delivered_at=0.0, mode="stream", original_name=blob.name))

        with ThreadPoolExecutor(32) as pool:
            count = sum(1 for _ in pool.map(receipt, container.list_blobs()))
    return m.row(count=count)


# --- large file -------------------------------------------------------------------------------------------


def relay_deliver(job: Job) -> dict[str, Any]:
    """The product: `Relay.deliver` of the large export (COPY_MODE from params), warm token."""
    p = job.params
    rt = job.runtime(COPY_MODE=p["mode"], EXPORT_CONTAINER=p["container"], LEDGER_CONTAINER=p["ledger"],
                     DESTINATION_TEMPLATE=p["folder"] + "/{path}")
    relay = rt.relay  # builds the clients and the ledger container
    chain = job.warm(rt)
    with Measure() as m:
        outcome = relay.deliver(p["name"])
    if outcome.status != "delivered":
        raise RuntimeError(f"delivery ended {outcome.status}: {outcome.reason}")
    return m.row(size=outcome.size, mode=outcome.mode, chain_seconds=chain)


def relay_sync_large(job: Job) -> dict[str, Any]:
    """The product's `sync` entry point over a container that holds only the large export: the copy runs on a
    sync pool thread, as in `python -m shared sync` and the timer (the arena-per-thread case for memory)."""
    p = job.params
    rt = job.runtime(COPY_MODE="stream", EXPORT_CONTAINER=p["container"], LEDGER_CONTAINER=p["ledger"],
                     DESTINATION_TEMPLATE=p["folder"] + "/{path}")
    relay = rt.relay
    chain = job.warm(rt)
    with Measure() as m:
        summary = relay.sync()
    if summary.delivered != 1 or summary.error:
        reasons = [o.reason for o in summary.outcomes]
        raise RuntimeError(f"sync: delivered={summary.delivered} error={summary.error} outcomes={reasons}")
    return m.row(size=summary.bytes, mode="stream", chain_seconds=chain)


def plain_copy(job: Job) -> dict[str, Any]:
    """Plain azure-storage-blob. style "best": ranged downloads and staged blocks on `parallelism` threads
    (the relay's block size), one commit; style "naive": download_blob().readall() then upload_blob()."""
    p = job.params
    source = job.source_service().get_blob_client(p["container"], p["name"])
    chain = 0.0
    if p["target"] == "gateway":
        rt = job.runtime()
        chain = job.warm(rt)
        service = job.gateway_service(rt.banenor_credential)
    else:
        service = job.direct_service()
    dest = service.get_blob_client(job.settings["BANENOR_CONTAINER"], job.dest_path(p["dest_name"]))
    with Measure() as m:
        if p["style"] == "naive":
            data = source.download_blob().readall()
            dest.upload_blob(data, overwrite=True)
            size = len(data)
            del data
        else:
            size = source.get_blob_properties().size
            block = p["block"]
            ranges = [(offset, min(block, size - offset)) for offset in range(0, size, block)]
            ids = [f"{index:06d}" for index in range(len(ranges))]

            def move(index: int) -> None:
                offset, length = ranges[index]
                data = source.download_blob(offset, length, max_concurrency=1).readall()
                dest.stage_block(ids[index], data, length=length)

            with ThreadPoolExecutor(p["parallelism"]) as pool:
                for _ in pool.map(move, range(len(ranges))):
                    pass
            dest.commit_block_list(ids)
    landed = dest.get_blob_properties().size
    if landed != size:
        raise RuntimeError(f"copied {landed} bytes of {size}")
    return m.row(size=size, chain_seconds=chain)


# --- many small files -------------------------------------------------------------------------------------


def relay_sync(job: Job) -> dict[str, Any]:
    """The product: one `Relay.sync` over the export container (fresh ledger), warm token. With `width` (bench only)
    the pace is held at that many small deliveries in flight: its ladder has that one width."""
    p = job.params
    if p.get("width"):
        import shared.pace

        shared.pace.LADDER = (int(p["width"]),)
    rt = job.runtime(EXPORT_CONTAINER=p["container"], LEDGER_CONTAINER=p["ledger"],
                     DESTINATION_TEMPLATE=p["folder"] + "/{path}", **p.get("overrides", {}))
    relay = rt.relay
    chain = job.warm(rt)
    trace: list[float] = []  # VmRSS every second during the sync: does memory climb with the files, or level off?
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            trace.append(vmrss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    widths = _WidthLog()  # the widths the sync's pace chose (shared.pace), in order
    sync_log = logging.getLogger("shared.pace")
    sync_log.addHandler(widths)
    sync_log.setLevel(logging.DEBUG)
    sampler.start()
    with Measure() as m:
        summary = relay.sync()
    done.set()
    sampler.join()
    sync_log.removeHandler(widths)
    # Every export landed by this run: delivered, or found already at Bane NOR with the receipt recorded all the same
    # (the outcome when a write meets an earlier attempt of its own version).
    if summary.error or summary.delivered + summary.already_delivered != p["count"] or summary.failed:
        counts = {k: v for k, v in summary.counts().items() if v and k not in ("bytes", "seconds")}
        kept = [(o.status, o.reason) for o in summary.outcomes[:5]]
        raise RuntimeError(f"sync: not every export delivered: {counts}; first outcomes kept: {kept}")
    return m.row(delivered=summary.delivered, already=summary.already_delivered,
                 count=summary.delivered + summary.already_delivered, chain_seconds=chain,
                 concurrency=rt.settings.relay.sync_concurrency, exchanges=rt.banenor_credential.exchanges,
                 outcomes_kept=len(summary.outcomes), rss_trace=[round(v, 1) for v in trace],
                 paces=widths.paces, width=summary.width, held=p.get("width"))


class _WidthLog(logging.Handler):
    """The pace's "R files/s at W in flight" debug lines (one per epoch, shared.pace): [(W, R), ...]."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.paces: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("pace: "):
            rate, width = record.args  # type: ignore[misc]
            self.paces.append((int(width), round(float(rate), 1)))


def copies_without_ledger(job: Job, evidence: str = "") -> dict[str, Any]:
    """The relay's own copy steps for every listed export, as `sync` runs them for small files (the version from
    the listing, `Copier.copy` create-only: one ranged GET pinned to the etag, one Put Blob with Content-MD5) on
    SYNC_CONCURRENCY threads, with no ledger at all: the difference to `relay-sync` is what the ledger costs.
    `evidence="listing"` adds the relay's own evidence as `sync` gathers it (`destination.ListingEvidence` over
    batches of the receipt batch's size: a listing of the destination directory per batch); `"read-back"` the
    alternative, one Get Blob Properties per file (`destination.verify`, as `deliver` does): the difference to the
    bare copies is what each costs."""
    import threading

    from shared.copier import SourceVersion
    from shared.destination import ListingEvidence, Sent, verify
    from shared.receipts import ReceiptBuffer

    p = job.params
    rt = job.runtime(EXPORT_CONTAINER=p["container"])
    exports, destination, copier = rt.exports, rt.destination, rt.copier
    chain = job.warm(rt)
    listing = ListingEvidence(destination)
    batch_size = ReceiptBuffer.__init__.__defaults__[0]  # the receipt batch's size: what one listing checks
    lock = threading.Lock()
    waiting: list[Sent] = []

    def check(sent: list[Sent]) -> None:
        bad = [v for v in listing(sent) if v is not None]
        if bad:
            raise RuntimeError(f"{len(bad)} copies without evidence: {bad[0]}")

    def one(props: Any) -> None:
        version = SourceVersion.from_properties(props)
        source = exports.get_blob_client(props.name)
        dest = destination.get_blob_client(job.dest_path(props.name))
        result = copier.copy(source, version, dest, metadata={"relay_source_name": props.name.replace("/", "-")},
                             overwrite=False)
        if result.size != version.size:
            raise RuntimeError(f"{props.name}: size differs")
        if evidence == "read-back":  # the relay's own check (no attempt id: these copies carry none)
            verify(dest, version, result.size, result.md5, None)
        elif evidence == "listing":
            with lock:
                waiting.append(Sent(dest.blob_name, version, result.size, result.md5, None))
                full = waiting[:] if len(waiting) >= batch_size else None
                if full:
                    waiting.clear()
            if full:
                check(full)

    with Measure() as m, ThreadPoolExecutor(rt.settings.relay.sync_concurrency) as pool:
        count = sum(1 for _ in pool.map(one, exports.list_blobs()))
        if waiting:
            check(waiting)
    return m.row(count=count, chain_seconds=chain, concurrency=rt.settings.relay.sync_concurrency,
                 listings=listing.listings)


def copies_with_evidence(job: Job) -> dict[str, Any]:
    return copies_without_ledger(job, evidence="listing")


def copies_with_readback(job: Job) -> dict[str, Any]:
    return copies_without_ledger(job, evidence="read-back")


def plain_threaded(job: Job) -> dict[str, Any]:
    """The fair baseline for a sync: plain azure-storage-blob on SYNC_CONCURRENCY threads, list, then for each
    file download it and upload it create-only through the gateway with the relay's credential. No read-back,
    no ledger, no name policy."""
    p = job.params
    rt = job.runtime()
    chain = job.warm(rt)
    source = job.source_service().get_container_client(p["container"])
    dest = job.gateway_service(rt.banenor_credential).get_container_client(job.settings["BANENOR_CONTAINER"])

    threads = p.get("threads") or rt.settings.relay.sync_concurrency

    def one(name: str) -> None:
        data = source.download_blob(name).readall()
        dest.upload_blob(job.dest_path(name), data, overwrite=False)

    with Measure() as m, ThreadPoolExecutor(threads) as pool:
        count = sum(1 for _ in pool.map(one, (b.name for b in source.list_blobs())))
    return m.row(count=count, chain_seconds=chain, concurrency=threads)


def relay_sync_idle(job: Job) -> dict[str, Any]:
    """`Relay.sync` over an export container whose every version is delivered: what each timer run costs a
    long-running relay (listing the exports, reading the ledger), in time, requests and memory."""
    p = job.params
    rt = job.runtime(EXPORT_CONTAINER=p["container"], LEDGER_CONTAINER=p["ledger"])
    chain = job.warm(rt)
    with Measure() as m:
        summary = rt.relay.sync()
    if summary.error or summary.already_delivered != p["count"] or summary.delivered or summary.failed:
        raise RuntimeError(f"idle sync: already={summary.already_delivered} delivered={summary.delivered} "
                           f"failed={summary.failed} error={summary.error}")
    return m.row(listed=summary.listed, chain_seconds=chain)


def bare_listing(job: Job) -> dict[str, Any]:
    """The floor of an idle sync: every page of the export container and of the whole ledger container, names
    only (List Blobs, 5,000 a page, no metadata, ElementTree on the XML: the parser azure-storage-blob itself uses),
    through the partner client's own pipeline. No decision, no ledger logic: what listing both alone costs."""
    from xml.etree import ElementTree

    from azure.core.rest import HttpRequest

    p = job.params
    service = job.source_service()

    def names(container: Any) -> int:
        count, marker = 0, ""
        while True:
            query = {"restype": "container", "comp": "list", "maxresults": "5000", **({"marker": marker} if marker
                                                                                       else {})}
            response = container._client._send_request(HttpRequest("GET", container.url, params=query,
                                                                   headers={"x-ms-version": container.api_version}))
            if response.status_code != 200:
                raise RuntimeError(f"listing {container.container_name}: HTTP {response.status_code}")
            root = ElementTree.fromstring(response.read())
            count += sum(1 for _ in root.iter("Name"))
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return count

    exports, ledger = service.get_container_client(p["container"]), service.get_container_client(p["ledger"])
    with Measure() as m:
        listed = names(exports)
        records = names(ledger)
    return m.row(listed=listed, records=records)


def plain_loop(job: Job) -> dict[str, Any]:
    """Plain azure-storage-blob, one file after another: download, upload through the gateway with the
    relay's credential (create-only, the SDK's default)."""
    p = job.params
    rt = job.runtime()
    chain = job.warm(rt)
    source = job.source_service().get_container_client(p["container"])
    dest = job.gateway_service(rt.banenor_credential).get_container_client(job.settings["BANENOR_CONTAINER"])
    count = 0
    with Measure() as m:
        for blob in source.list_blobs():
            data = source.download_blob(blob.name).readall()
            dest.upload_blob(job.dest_path(blob.name), data)
            count += 1
    return m.row(count=count, chain_seconds=chain)


CONTENDERS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "setup-large": setup_large,
    "setup-small": setup_small,
    "setup-scale": setup_scale,
    "relay-sync-idle": relay_sync_idle,
    "bare-listing": bare_listing,
    "relay-deliver": relay_deliver,
    "relay-sync-large": relay_sync_large,
    "plain-copy": plain_copy,
    "relay-sync": relay_sync,
    "copies-without-ledger": copies_without_ledger,
    "copies-with-evidence": copies_with_evidence,
    "copies-with-readback": copies_with_readback,
    "plain-threaded": plain_threaded,
    "plain-loop": plain_loop,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CONTENDERS:
        print(f"usage: python -m bench.contenders {{{','.join(CONTENDERS)}}} < job.json", file=sys.stderr)
        return 2
    global REQUESTS
    job = Job(json.load(sys.stdin))
    REQUESTS = RequestCounter(job.settings)
    REQUESTS.install()
    row = CONTENDERS[argv[0]](job)
    row["rss_process_peak"] = vmhwm_mib()
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
