"""Issues 22 and 29: an answer from Bane NOR's side is read in one place (`gateway_answers.read_answer`),
whichever component meets it: the copier writing an export, the read-back, and the gateway probes
(`storage.gateway_error`) give it the same verdict (transient, link) and the same hint."""

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


# -- issue 29: one reading of an answer, the same attributes on every path ----------------------------------------
ANSWERS = [(401, "InvalidAuthenticationInfo"), (403, "AuthorizationPermissionMismatch"), (404, "ContainerNotFound"),
           (503, "ServerBusy")]


def attributes(error):
    return error.transient, error.link, error.hint, error.status, error.error_code


def raw_error(call):
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(("status", "code"), ANSWERS)
def test_one_answer_to_a_write_has_the_same_attributes_on_the_copy_path_and_the_gateway_probe(
        relay_env, gateway_proxy, status, code):
    from shared.storage import gateway_error

    relay_env.put("same.csv", b"1;2\n")
    rt = through(relay_env, gateway_proxy)
    gateway_proxy.add(Fault("status", status=status, code=code, times=None))
    written = copier_error(rt, "same.csv")  # the copier's Put Blob: a CopyFailed
    probe = rt.destination.get_blob_client(f"{rt.settings.banenor.directory}/probe.txt")
    probed = gateway_error(raw_error(lambda: probe.upload_blob(b"probe\n", overwrite=False)), "probe.txt")  # doctor's
    assert attributes(written) == attributes(probed)
    assert written.link == ("gateway" if status != 503 else None)


@pytest.mark.parametrize(("status", "code"), ANSWERS)
def test_one_answer_to_a_read_back_or_a_listing_reads_the_same_in_both_translations(relay_env, gateway_proxy,
                                                                                   status, code):
    from shared.copy_errors import translate
    from shared.storage import gateway_error

    rt = through(relay_env, gateway_proxy)
    gateway_proxy.add(Fault("status", status=status, code=code, times=None))
    dest = rt.destination.get_blob_client(f"{rt.settings.banenor.directory}/read-back.csv")
    for met in (raw_error(dest.get_blob_properties),  # the read-back: a HEAD, no storage error code on the wire
                raw_error(lambda: next(iter(rt.destination.list_blobs(results_per_page=1)), None))):  # a listing
        as_gateway_error = gateway_error(met, "read-back.csv")
        as_copy_failure = translate(met, blob="read-back.csv", side="destination", action="reading")
        assert attributes(as_copy_failure) == attributes(as_gateway_error)
