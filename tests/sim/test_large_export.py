"""A 2 GiB export end to end on the stack `make stack` runs (split layout, data on disk): `make test-large`.

Not part of `make test` (marked `large`, deselected by default): it writes about 4 GiB under the temp folder and
takes minutes on our machines. It proves what the in-memory stack could not: a file larger than Azurite's 1 GiB
in-memory cap goes from the partner's HTTP Azurite through the gateway to Bane NOR's HTTPS Azurite, streamed in
blocks, with the MD5 checked at the destination and the relay's memory bounded.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import time

import pytest

from shared.config import Settings
from shared.runtime import Runtime
from sim.stack import Stack

pytestmark = [pytest.mark.stack, pytest.mark.large]

SIZE = 2 * 2**30


class PatternStream:
    """`size` bytes of a repeating random-looking pattern, read in chunks (never all in memory), hashed as read."""

    def __init__(self, size: int, chunk: int = 4 * 2**20) -> None:
        self.remaining, self.md5 = size, hashlib.md5()
        block = hashlib.sha256(b"seed").digest() * (chunk // 32)
        self.blocks = [bytes((b + i) % 256 for b in block[:4096]) * (chunk // 4096) for i in range(7)]
        self.index = 0

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self.blocks[self.index % len(self.blocks)]
        self.index += 1
        data = data[: min(len(data), self.remaining, n if n > 0 else len(data))]
        self.remaining -= len(data)
        self.md5.update(data)
        return data


@pytest.mark.timeout(3600)
def test_a_2_gib_export_goes_end_to_end_on_the_on_disk_stack(tmp_path, monkeypatch):
    stack = Stack(tmp_path, layout="split", persistence="disk").start()
    try:
        for name in ("REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
            monkeypatch.setenv(name, stack.settings[name])
        rt = Runtime(Settings.load(dict(stack.settings)))
        source = PatternStream(SIZE)
        started = time.monotonic()
        rt.exports.get_blob_client("store/punktsky-2GiB.zip").upload_blob(source, length=SIZE, max_concurrency=4)
        uploaded = time.monotonic()
        outcome = rt.relay.deliver("store/punktsky-2GiB.zip")
        delivered = time.monotonic()
        assert (outcome.status, outcome.size) == ("delivered", SIZE), outcome
        from azure.storage.blob import BlobServiceClient

        backend = BlobServiceClient.from_connection_string(
            stack.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"], connection_verify=str(stack.ca_bundle)
        )
        props = backend.get_blob_client(stack.settings["BANENOR_CONTAINER"], outcome.destination).get_blob_properties()
        assert props.size == SIZE
        assert bytes(props.content_settings.content_md5) == source.md5.digest()
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"\n2 GiB export: upload {SIZE / 2**20 / (uploaded - started):.0f} MiB/s ({uploaded - started:.0f} s), "
            f"relay {outcome.mode} copy {SIZE / 2**20 / (delivered - uploaded):.0f} MiB/s "
            f"({delivered - uploaded:.0f} s), test process peak RSS {peak_mib:.0f} MiB"
        )
        assert peak_mib < 1024  # streamed: the relay never holds the file
        rt.banenor_credential.close()
    finally:
        stack.stop()
        shutil.rmtree(tmp_path / "azurite", ignore_errors=True)  # 4 GiB: not left for pytest's kept tmp dirs
