"""Issue 22: an answer from Bane NOR's side is read in one place (`storage.banenor_answer`), whichever component
meets it: the copier writing an export, the read-back, and the gateway probes (`storage.gateway_error`) give it
the same verdict (transient or not) and the same hint."""

from __future__ import annotations

import pytest

from tests.faultproxy import Fault
from tests.helpers import with_short_gateway_retries

pytestmark = pytest.mark.stack


def through(relay_env, proxy):
    """A runtime whose gateway is behind `proxy`; a lasting 503 is retried as the product retries it (the same
    count), 50 ms apart instead of the SDK's backoff (15 s, 18 s, 24 s, 42 s)."""
    rt = relay_env.make(BANENOR_STORAGE_URL=proxy.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    return with_short_gateway_retries(rt)


def copier_error(rt, name):
    from shared.copier import CopyFailed

    source = rt.exports.get_blob_client(name)
    with pytest.raises(CopyFailed) as caught:
        rt.copier.copy(source, rt.copier.read_source(source), rt.destination.get_blob_client(f"answers/{name}"),
                       metadata={})
    return caught.value


def probe_error(rt):
    from shared.storage import gateway_error

    with pytest.raises(Exception) as caught:
        next(iter(rt.destination.list_blobs(results_per_page=1)), None)
    return gateway_error(caught.value, "answers")


def test_a_firewall_page_is_transient_with_one_hint_for_the_copier_and_the_gateway_probe(relay_env, gateway_proxy):
    relay_env.put("page.csv", b"1;2\n")
    rt = through(relay_env, gateway_proxy)
    gateway_proxy.add(Fault("page", status=405, times=None))
    written, probed = copier_error(rt, "page.csv"), probe_error(rt)
    assert written.transient and probed.transient
    assert written.hint == probed.hint
    assert "BANENOR_STORAGE_URL" in probed.hint


@pytest.mark.parametrize(("status", "transient"), [(503, True), (404, False), (403, False)])
def test_a_storage_error_reads_the_same_for_the_copier_and_the_gateway_probe(relay_env, gateway_proxy, status,
                                                                           transient):
    relay_env.put("storage.csv", b"1;2\n")
    rt = through(relay_env, gateway_proxy)
    gateway_proxy.add(Fault("status", status=status, times=None))
    written, probed = copier_error(rt, "storage.csv"), probe_error(rt)
    assert (written.transient, probed.transient) == (transient, transient)
    assert written.hint == probed.hint
