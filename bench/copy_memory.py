"""Benchmark: peak RSS and throughput of the Copier against a plain-SDK streaming copy, on one Azurite.

Each contender runs in its own Python process (ru_maxrss is a per-process high-water mark), copying a
source blob (default 256 MiB) between two accounts of one Azurite instance. Two sources: one declaring a
Content-MD5 (the Copier then skips per-range MD5) and one without (per-range MD5 on every read).

    .venv/bin/python bench/copy_memory.py [--size-mib 256] [--block-mib 8] [--parallelism 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
SOURCE_CONTAINER, DEST_CONTAINER = "exports", "integration"
WITH_MD5, WITHOUT_MD5 = "bench/with-md5.bin", "bench/without-md5.bin"


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB. ru_maxrss survives execve on Linux (a child started by a big parent
    starts at the parent's figure), so prefer VmHWM, which starts afresh with the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- worker side (one contender per process) -----------------------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    from azure.storage.blob import BlobServiceClient, generate_blob_sas

    from shared.copier import Copier, CopyOptions

    src_svc = BlobServiceClient.from_connection_string(args.source_conn)
    dst_svc = BlobServiceClient.from_connection_string(args.dest_conn)
    source = src_svc.get_blob_client(SOURCE_CONTAINER, args.source)
    dest = dst_svc.get_blob_client(DEST_CONTAINER, f"bench/{args.worker}.bin")
    block = args.block_mib * MiB
    rss_before = peak_rss_mib()
    started = time.monotonic()
    if args.worker.startswith("baseline"):
        # The plain SDK, one thread: ranged download, stage_block, one commit; "-validated" adds MD5 checks.
        validate = args.worker.endswith("validated")
        size = source.get_blob_properties().size
        ids = []
        for index, offset in enumerate(range(0, size, block)):
            length = min(block, size - offset)
            data = source.download_blob(offset, length, validate_content=validate).readall()
            ids.append(f"{index:06d}")
            dest.stage_block(ids[-1], data, validate_content=validate)
            del data
        dest.commit_block_list(ids)
    else:
        mode, parallelism = args.worker.split("-")[1], int(args.worker.split("-p")[-1])

        def sas(blob) -> str:
            from datetime import UTC, datetime, timedelta

            token = generate_blob_sas(
                blob.account_name, blob.container_name, blob.blob_name, account_key=args.source_key,
                permission="r", expiry=datetime.now(UTC) + timedelta(minutes=30),
            )
            return f"{blob.url}?{token}"

        options = CopyOptions(block_size=block, parallelism=parallelism, mode=mode.split("-")[0])
        copier = Copier(options, source_sas=sas if options.mode == "server" else None)
        version = copier.read_source(source)
        result = copier.copy(source, version, dest, metadata={"bench": "1"}, overwrite=True)
        assert result.size == version.size
    seconds = time.monotonic() - started
    size = dest.get_blob_properties().size
    dest.delete_blob()
    row = {"seconds": seconds, "size": size, "rss_before": rss_before, "rss_peak": peak_rss_mib()}
    print(json.dumps(row))


# --- driver ---------------------------------------------------------------------------------------------


def upload_sources(conn: str, size: int, block: int) -> None:
    import hashlib

    from azure.storage.blob import BlobServiceClient, ContentSettings

    svc = BlobServiceClient.from_connection_string(conn)
    svc.create_container(SOURCE_CONTAINER)
    for name in (WITH_MD5, WITHOUT_MD5):
        blob = svc.get_blob_client(SOURCE_CONTAINER, name)
        md5, ids = hashlib.md5(), []
        for index, offset in enumerate(range(0, size, block)):
            data = os.urandom(min(block, size - offset))
            md5.update(data)
            ids.append(f"{index:06d}")
            blob.stage_block(ids[-1], data)
        settings = ContentSettings(content_md5=bytearray(md5.digest())) if name == WITH_MD5 else None
        blob.commit_block_list(ids, content_settings=settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--block-mib", type=int, default=8)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--worker")
    parser.add_argument("--source", default=WITH_MD5)
    parser.add_argument("--source-conn")
    parser.add_argument("--dest-conn")
    parser.add_argument("--source-key")
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    from azure.storage.blob import BlobServiceClient

    from sim.azurite import Azurite

    azurite = Azurite({"partnerexports": "", "bnplmext": ""}, memory_limit_mb=3072).start()
    try:
        src_conn = azurite.connection_string("partnerexports")
        dst_conn = azurite.connection_string("bnplmext")
        upload_sources(src_conn, args.size_mib * MiB, args.block_mib * MiB)
        BlobServiceClient.from_connection_string(dst_conn).create_container(DEST_CONTAINER)
        p = args.parallelism
        contenders = [
            ("baseline", WITH_MD5),
            ("copier-stream-p1", WITH_MD5),
            (f"copier-stream-p{p}", WITH_MD5),
            ("baseline-validated", WITHOUT_MD5),
            ("copier-stream-p1", WITHOUT_MD5),
            (f"copier-stream-p{p}", WITHOUT_MD5),
            (f"copier-server-p{p}", WITH_MD5),
        ]
        print(f"{args.size_mib} MiB, {args.block_mib} MiB blocks, Azurite in memory on loopback")
        print(f"{'contender':<22} {'source':<12} {'MiB/s':>7} {'seconds':>8} {'RSS idle':>9} {'RSS peak':>9}")
        for name, source in contenders:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", name, "--source", source,
                 "--block-mib", str(args.block_mib),
                 "--source-conn", src_conn, "--dest-conn", dst_conn,
                 "--source-key", azurite.accounts["partnerexports"]],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            assert row["size"] == args.size_mib * MiB, row
            rate = args.size_mib / row["seconds"]
            label = "with MD5" if source == WITH_MD5 else "without MD5"
            print(f"{name:<22} {label:<12} {rate:>7.1f} {row['seconds']:>8.2f} {row['rss_before']:>8.0f}M "
                  f"{row['rss_peak']:>8.0f}M")
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
