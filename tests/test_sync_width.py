"""Issue 30: a sync finds how many small deliveries to keep in flight while it runs (shared.pace through
shared.sync.Window), instead of sending SYNC_CONCURRENCY x 2 at once whatever the link.

Through the fault proxy in front of Bane NOR's gateway (tests/faultproxy.py), every write held 0.5 s: a link where
latency, not the CPU, is the limit, so files in flight pay. The proxy counts the writes it holds at each arrival.
"""

from __future__ import annotations

import os

import pytest

from shared.pace import MIN_EPOCH, START
from tests.faultproxy import Fault, match
from tests.helpers import dest_blobs, fast_runtime

pytestmark = pytest.mark.stack

FILES = 200
STALL = 0.5  # seconds each write is held: 8 in flight deliver at most 16 files/s, 16 at most 32


def test_a_sync_measures_at_a_few_in_flight_first_then_widens_on_a_link_where_width_pays(relay_env, faults):
    for i in range(FILES):
        relay_env.put(f"w/{i:04d}.csv", os.urandom(300))
    rt = fast_runtime(relay_env, faults)  # SYNC_CONCURRENCY at its default (32): up to 64 submitted
    slow = faults["BANENOR_STORAGE_URL"].add(Fault("slow", match("PUT"), stall=STALL, times=None))
    summary = rt.relay.sync()
    assert summary.ok and summary.delivered == FILES, summary
    assert len(dest_blobs(relay_env)) == FILES
    first = slow.arrivals[:START + MIN_EPOCH]  # the start window, then the first width's epoch
    assert max(first) <= START, first  # before: all 64 at once, once the first write got through
    assert max(slow.arrivals[START + MIN_EPOCH + 2 * START:]) > START, slow.arrivals  # wider paid: it went wider
    assert summary.width > START
