"""Issue 17, point 4: long copies finish.

A copy in blocks resumes from the blocks an earlier attempt staged for the same version (a process killed
mid-copy, a function past its timeout); a server copy signs a new source SAS before the old one expires; a claimed
delivery renews its claim while its copy makes progress. Copier tests use Azurite directly (the `stores` fixture,
tests/conftest.py); the relay tests run on the whole local stack; one kills a real delivering process with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from shared.copier import Copier, CopyOptions
from shared.errors import DeliveryError
from tests.fakes import FakeClock
from tests.faultproxy import Fault, match, proxy_for
from tests.helpers import REPO, MiB, Stores, payload

BLOCKS = CopyOptions(block_size=1 * MiB, single_put_limit=1 * MiB, parallelism=2, mode="stream")


class Crash(Exception):
    """Stands for the process dying: raised from the SDK's request hook, so nothing after it runs."""


def crashing_dest(stores: Stores, name: str, after_blocks: int):
    count = {"blocks": 0}

    def hook(request):
        query = parse_qs(urlsplit(request.http_request.url).query)
        if query.get("comp") == ["block"]:
            count["blocks"] += 1
            if count["blocks"] > after_blocks:
                raise Crash()

    service = BlobServiceClient.from_connection_string(stores.azurite.connection_string("bnplmext"),
                                                       raw_request_hook=hook)
    return service.get_blob_client(stores.dest_container, name)


def staged_ids(stores: Stores, name: str) -> set[str]:
    return {b.id for b in stores.dest(name).get_block_list("uncommitted")[1]}


def test_a_stream_copy_resumes_from_the_blocks_an_interrupted_attempt_staged(stores, wire):
    data = payload(6 * MiB)
    source = stores.put_source("big.bin", data)
    copier = Copier(BLOCKS)
    version = copier.read_source(source)
    with pytest.raises(Crash):
        copier.copy(source, version, crashing_dest(stores, "big.bin", after_blocks=3), metadata={})
    already = staged_ids(stores, "big.bin")
    assert 1 <= len(already) <= 3 and not stores.dest("big.bin").exists()
    wire.requests.clear()
    result = Copier(BLOCKS).copy(source, version, stores.dest("big.bin"), metadata={})  # a new process
    sent = {r.query["blockid"][0] for r in wire.of("destination", comp="block")}
    assert len(sent) == 6 - len(already)
    assert stores.dest("big.bin").download_blob().readall() == data
    assert result.blocks == 6
    import hashlib

    assert bytes(stores.dest("big.bin").get_blob_properties().content_settings.content_md5) == \
        hashlib.md5(data).digest()  # the whole file's MD5 covers the resumed blocks too


def test_blocks_staged_for_an_earlier_version_are_never_committed_into_a_later_one(stores, wire):
    source = stores.put_source("moving.bin", payload(4 * MiB, seed=1))
    copier = Copier(BLOCKS)
    with pytest.raises(Crash):
        copier.copy(source, copier.read_source(source), crashing_dest(stores, "moving.bin", 2), metadata={})
    data = payload(4 * MiB, seed=2)
    source = stores.put_source("moving.bin", data)  # the partner rewrote the export meanwhile
    wire.requests.clear()
    Copier(BLOCKS).copy(source, copier.read_source(source), stores.dest("moving.bin"), metadata={})
    assert len(wire.of("destination", comp="block")) == 4  # all sent again, for the new version
    assert stores.dest("moving.bin").download_blob().readall() == data


def test_a_resumed_copy_with_another_block_size_sends_every_block(stores, wire):
    source = stores.put_source("resized.bin", payload(4 * MiB))
    copier = Copier(BLOCKS)
    version = copier.read_source(source)
    with pytest.raises(Crash):
        copier.copy(source, version, crashing_dest(stores, "resized.bin", 2), metadata={})
    wire.requests.clear()
    other = CopyOptions(block_size=2 * MiB, single_put_limit=1 * MiB, parallelism=2, mode="stream")
    Copier(other).copy(source, version, stores.dest("resized.bin"), metadata={})
    assert len(wire.of("destination", comp="block")) == 2


class TickingClock:
    """A clock that moves `step` seconds on every reading: a copy that takes hours, without waiting."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_long_server_copy_signs_a_new_source_sas_before_the_old_one_expires(stores, wire):
    clock = TickingClock(step=120.0)
    signed: dict[str, float] = {}  # sig -> the clock when it was signed

    def sign(blob):
        # A distinct start time per signature, so each SAS is told apart on the wire.
        sas = generate_blob_sas(blob.account_name, blob.container_name, blob.blob_name,
                                account_key=stores.azurite.accounts[blob.account_name],
                                permission=BlobSasPermissions(read=True),
                                start=datetime.now(UTC) - timedelta(minutes=5, seconds=len(signed)),
                                expiry=datetime.now(UTC) + timedelta(minutes=15))
        signed[parse_qs(sas)["sig"][0]] = clock.now
        return f"{blob.url}?{sas}"

    data = payload(8 * MiB)
    source = stores.put_source("far.bin", data)
    options = CopyOptions(block_size=1 * MiB, single_put_limit=1 * MiB, parallelism=1, mode="server")
    copier = Copier(options, source_sas=sign, clock=clock)
    copier.copy(source, copier.read_source(source), stores.dest("far.bin"), metadata={})
    assert stores.dest("far.bin").download_blob().readall() == data
    assert len(signed) >= 2
    for request in wire.of("destination", comp="block"):
        sig = parse_qs(urlsplit(request.headers["x-ms-copy-source"]).query)["sig"][0]
        assert clock.now - signed[sig] < 15 * 60 + 8 * 120  # never used past its 15 minutes of the copy


def test_a_server_copy_resumes_without_pulling_staged_blocks_again(stores, wire):
    data = payload(4 * MiB)
    source = stores.put_source("pulled.bin", data)
    options = CopyOptions(block_size=1 * MiB, single_put_limit=1 * MiB, parallelism=1, mode="server")
    copier = Copier(options, source_sas=stores.source_sas)
    version = copier.read_source(source)
    with pytest.raises(Crash):
        copier.copy(source, version, crashing_dest(stores, "pulled.bin", 2), metadata={})
    wire.requests.clear()
    Copier(options, source_sas=stores.source_sas).copy(source, version, stores.dest("pulled.bin"), metadata={})
    assert len(wire.of("destination", comp="block")) == 2
    assert stores.dest("pulled.bin").download_blob().readall() == data


# -- the claim ---------------------------------------------------------------------------------------------


@pytest.mark.stack
def test_a_long_copy_renews_its_claim_so_it_never_expires_under_it(relay_env):
    from shared.relay import CLAIM_TTL

    relay_env.put("long.csv", os.urandom(6 * MiB))
    rt = relay_env.make(COPY_MODE="stream", BLOCK_SIZE="1MiB", SINGLE_PUT_LIMIT="1MiB", PARALLELISM="1")
    started = time.time()
    ticks = [0.0]

    def slow_clock():
        ticks[0] += CLAIM_TTL / 8  # each reading is a long while later: a copy that takes hours
        return time.time() + ticks[0]

    rt.relay.clock = rt.ledger.clock = slow_clock  # the relay's and the ledger's clocks (tokens keep real time)
    claims = rt.ledger.container
    first: dict = {}
    original = rt.ledger.claim

    def claim_and_look(name, etag, owner, ttl):  # the claim record as it was first written
        made = original(name, etag, owner, ttl)
        first["record"] = json.loads(claims.get_blob_client(f"claims/{rt.ledger.key(name, etag)}.json")
                                     .download_blob().readall())
        return made

    rt.ledger.claim = claim_and_look
    assert rt.relay.deliver("long.csv").status == "delivered"
    etag = rt.exports.get_blob_client("long.csv").get_blob_properties().etag
    key = rt.ledger.key("long.csv", etag)
    claim = json.loads(claims.get_blob_client(f"claims/{key}.json").download_blob().readall())
    assert claim["owner"] == first["record"]["owner"]
    assert claim["expires_at"] > first["record"]["expires_at"] + CLAIM_TTL / 2  # renewed while the copy ran
    assert claim["expires_at"] > started + CLAIM_TTL


@pytest.mark.stack
def test_a_claim_taken_over_after_it_expired_stops_the_attempt(relay_env):
    from shared.relay import CLAIM_TTL, ClaimKeeper

    ledger = relay_env.rt.ledger
    claim = ledger.claim("x.csv", '"e1"', "relay-a", CLAIM_TTL)
    keeper = ClaimKeeper(ledger, "x.csv", '"e1"', "relay-a", claim, relay_env.clock)
    relay_env.clock.offset += CLAIM_TTL + 1
    assert ledger.claim("x.csv", '"e1"', "relay-b", CLAIM_TTL) is not None  # expired: another instance takes it
    with pytest.raises(DeliveryError, match="another instance took it over"):
        keeper()


@pytest.mark.stack
def test_a_claim_is_not_renewed_before_its_renewal_time(relay_env):
    from shared.relay import CLAIM_RENEW_SECONDS, CLAIM_TTL, ClaimKeeper

    ledger = relay_env.rt.ledger
    claim = ledger.claim("y.csv", '"e1"', "relay-a", CLAIM_TTL)
    clock = FakeClock(time.time())  # the keeper's own clock, still between readings: a slow machine adds nothing
    keeper = ClaimKeeper(ledger, "y.csv", '"e1"', "relay-a", claim, clock)
    clock.now += CLAIM_RENEW_SECONDS - 1
    keeper()
    assert keeper.claim_etag == claim
    clock.now += 2
    keeper()
    assert keeper.claim_etag != claim


# -- a real process, killed mid-copy -----------------------------------------------------------------------

_CHILD = """
import json, sys
from shared.config import Settings
from shared.runtime import Runtime
env = json.load(sys.stdin)
print(Runtime(Settings.load(env)).relay.deliver(env["NAME"]).status, flush=True)
"""


@pytest.mark.stack
def test_a_delivery_killed_mid_copy_is_resumed_by_the_next_attempt_without_resending_staged_blocks(relay_env):
    stack = relay_env.stack
    proxy = proxy_for(stack, "BANENOR_STORAGE_URL")
    try:
        data = os.urandom(8 * MiB)
        relay_env.put("killed.csv", data)
        base = {k: v for k, v in stack.settings.items()}
        env = {**base, "EXPORT_CONTAINER": relay_env.rt.settings.exports.container,
               "LEDGER_CONTAINER": relay_env.rt.settings.exports.ledger_container,
               "DESTINATION_TEMPLATE": relay_env.rt.settings.relay.destination_template,
               "BANENOR_STORAGE_URL": proxy.url(stack.settings["BANENOR_STORAGE_URL"]),
               "COPY_MODE": "stream", "BLOCK_SIZE": "1MiB", "SINGLE_PUT_LIMIT": "1MiB", "PARALLELISM": "1",
               "NAME": "killed.csv"}
        # Every block goes through; the commit hangs, as a function does when the host's timeout is near.
        commit = proxy.add(Fault("stall", when=match("PUT", comp="blocklist"), stall=60))
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=str(REPO), text=True)
        child.stdin.write(json.dumps(env))
        child.stdin.close()
        commit.wait_fired(child)  # until the child holds its commit (or has ended), however long its start takes
        if proxy.injected["stall"] == 0:
            child.kill()
            pytest.fail(f"the child never reached its commit: {child.stdout.read()} {child.stderr.read()[-3000:]}")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        proxy.clear()
        puts_before = proxy.requests["PUT"]
        rt = relay_env.make(BANENOR_STORAGE_URL=env["BANENOR_STORAGE_URL"], COPY_MODE="stream", BLOCK_SIZE="1MiB",
                            SINGLE_PUT_LIMIT="1MiB")
        rt.ledger.clock = lambda: time.time() + 3600  # later: the killed process's claim has expired
        assert rt.relay.deliver("killed.csv").status == "delivered"
        assert proxy.requests["PUT"] - puts_before == 1  # the commit only: no block was sent again
        assert relay_env.landed("killed.csv").download_blob().readall() == data
    finally:
        proxy.stop()
