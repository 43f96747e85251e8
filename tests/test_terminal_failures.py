"""Issue 18: the error's own flags decide what happens to a failed delivery.

Not transient and about this file (a destination that is never overwritten): poisoned at once, with its reason,
where `status` and the poisoned alert see it, until an operator runs `retry`. Transient (a 503 from the gateway):
backoff, then poisoned after MAX_ATTEMPTS. An ACL refusal or a missing container is about the link, not the file
(issue 26): no file is charged (tests/test_link_state.py).
"""

from __future__ import annotations

import logging

import pytest

from shared.copier import CopyFailed
from shared.errors import DeliveryError, GatewayError, SigningKeyError
from shared.relay import is_link_refusal, is_terminal
from tests.faultproxy import Fault, match
from tests.helpers import with_short_gateway_retries


@pytest.mark.stack
def test_a_destination_that_is_never_overwritten_is_poisoned_at_once_and_logged_for_the_alert(relay_env, caplog):
    relay_env.backend.get_blob_client(relay_env.dest_prefix + "theirs.csv").upload_blob(b"bane nor's own")
    relay_env.put("theirs.csv", b"ours")
    with caplog.at_level(logging.INFO, logger="shared.relay"):
        outcome = relay_env.rt.relay.sync()
    assert outcome.poisoned == 1 and outcome.failed == 0
    assert any("outcome=poisoned" in r.getMessage() and "theirs.csv" in r.getMessage() for r in caplog.records)
    failure = next(relay_env.rt.ledger.failures())
    assert failure.poisoned and failure.attempts == 1 and "never overwritten" in failure.last_error
    assert relay_env.rt.ledger.counts()["poisoned"] == 1


@pytest.mark.stack
def test_retry_makes_a_terminal_failure_due_again(relay_env):
    relay_env.backend.get_blob_client(relay_env.dest_prefix + "later.csv").upload_blob(b"bane nor's own")
    relay_env.put("later.csv", b"ours")
    assert relay_env.rt.relay.deliver("later.csv").status == "poisoned"
    relay_env.backend.get_blob_client(relay_env.dest_prefix + "later.csv").delete_blob()  # Bane NOR removed it
    assert relay_env.rt.ledger.retry("later.csv") == 1
    assert relay_env.rt.relay.sync().delivered == 1


@pytest.mark.stack
def test_a_transient_gateway_failure_keeps_the_backoff_until_max_attempts(relay_env, gateway_proxy):
    relay_env.put("busy.csv", b"1")
    rt = relay_env.make(MAX_ATTEMPTS="2",
                        BANENOR_STORAGE_URL=gateway_proxy.url(relay_env.stack.settings["BANENOR_STORAGE_URL"]))
    # Every PUT answers 503 ServerBusy; the product's own client builder, with one retry 50 ms later.
    with_short_gateway_retries(rt, retry_total=1)
    gateway_proxy.add(Fault("status", when=match("PUT"), status=503, times=None))
    first = rt.relay.sync()
    assert first.failed == 1 and first.poisoned == 0
    assert rt.relay.sync().pending == 1  # waits for its backoff
    relay_env.clock.offset += 600
    assert rt.relay.sync().poisoned == 1  # the second attempt reaches MAX_ATTEMPTS


@pytest.mark.parametrize(("error", "terminal"), [
    (CopyFailed("x", status=403, error_code="AuthorizationPermissionMismatch", side="destination", transient=False),
     False),  # about the link (issue 26): never charged to the file, so never terminal for it
    (CopyFailed("x", status=400, error_code="InvalidResourceName", side="destination", transient=False), True),
    (CopyFailed("x", status=503, side="destination", transient=True), False),
    (DeliveryError("x", transient=False), True),
    (GatewayError("x", status=500, transient=True), False),
    (ConnectionResetError("not classified by the relay"), False),
])
def test_terminal_is_decided_by_the_errors_transient_flag(error, terminal):
    assert is_terminal(error) is terminal


@pytest.mark.parametrize(("error", "trust_chain"), [
    (CopyFailed("x", status=401, side="destination"), True),
    (CopyFailed("x", status=401, side="source"), False),  # the partner's own storage: the file's problem
    (CopyFailed("x", status=404, side="source"), False),  # one export gone: that file's
    (CopyFailed("x", status=403, error_code="AuthorizationPermissionMismatch", side="destination"), True),
    (CopyFailed("x", status=404, error_code="ContainerNotFound", side="destination"), True),
    (CopyFailed("x", status=503, error_code="CannotVerifyCopySource", side="destination"), False),
    (GatewayError("x", status=401, trust_chain=True), True),
    (SigningKeyError("x"), True),
    (DeliveryError("x"), False),
])
def test_trust_chain_is_decided_by_the_errors_own_flag(error, trust_chain):
    assert is_link_refusal(error) is trust_chain
