"""A 409 from the partner's storage is "it exists" only when the service says BlobAlreadyExists.

Found by the benchmark: Azurite answers a write into a full in-memory store with 409 MemoryExtentStoreAtSizeLimit;
taken for "exists", a claim looked held by another instance and every delivery ended `in_progress`, silently.
"""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceExistsError

from tests.faultproxy import Fault, match, proxied_settings, proxies_for

pytestmark = pytest.mark.stack


@pytest.fixture
def proxied(stack, make_runtime):
    proxies = proxies_for(stack)
    try:
        rt = make_runtime(**proxied_settings(stack, proxies), LEDGER_CONTAINER="ledger-conflicts")
        rt.ledger.ensure()
        yield rt, proxies["EXPORT_STORAGE"]
    finally:
        for proxy in proxies.values():
            proxy.stop()


def test_a_409_that_is_not_blob_already_exists_is_raised_not_taken_for_a_held_claim(proxied):
    rt, proxy = proxied
    proxy.add(Fault("status", when=match("PUT", path=r"/claims/"), status=409, times=None))  # code InternalError
    with pytest.raises(ResourceExistsError):
        rt.ledger.claim("full.csv", '"0x1"', "relay-a", 600)


def test_a_claim_held_by_another_instance_is_still_refused_quietly(proxied):
    rt, _ = proxied
    assert rt.ledger.claim("held.csv", '"0x1"', "relay-a", 600) is not None
    assert rt.ledger.claim("held.csv", '"0x1"', "relay-b", 600) is None
