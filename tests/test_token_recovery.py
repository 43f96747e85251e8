"""Issue 18: after the gateway answers 401, a delivery gets a token Entra issued anew and tries again at once.

Counted at the simulators (Entra's `tokens_issued`, Skyporten's `tokens_issued`), not in private state: the
gateway simulator revokes tokens before their expiry (`revoke_tokens`), as Bane NOR may.
"""

import uuid

import pytest

from shared.config import Settings
from shared.runtime import Runtime

pytestmark = pytest.mark.stack


@pytest.fixture
def rt(stack):
    tag = uuid.uuid4().hex[:8]
    env = dict(stack.settings, EXPORT_CONTAINER=f"exports-{tag}", LEDGER_CONTAINER=f"ledger-{tag}",
               DESTINATION_TEMPLATE=f"r{tag}/{{path}}")
    runtime = Runtime(Settings.load(env))
    runtime.exports.create_container()
    # One delivery first: the relay holds a storage token that the gateway has seen.
    runtime.exports.get_blob_client("warm-up.csv").upload_blob(b"a;b\n", overwrite=True)
    assert runtime.relay.deliver("warm-up.csv").status == "delivered"
    yield runtime
    runtime.banenor_credential.close()


def put(rt, *names):
    for name in names:
        rt.exports.get_blob_client(name).upload_blob(f"{name};1\n".encode(), overwrite=True)


class Counts:
    def __init__(self, stack):
        self.stack = stack
        self.entra, self.skyporten = stack.entra.tokens_issued, stack.skyporten.tokens_issued

    def new(self):
        return (self.stack.entra.tokens_issued - self.entra, self.stack.skyporten.tokens_issued - self.skyporten)


def test_after_a_revocation_a_send_of_three_files_delivers_all_three_with_one_new_exchange(rt, stack):
    put(rt, "one.csv", "two.csv", "three.csv")
    stack.gateway.revoke_tokens()
    counts = Counts(stack)
    outcomes = [rt.relay.deliver(name) for name in ("one.csv", "two.csv", "three.csv")]
    assert [o.status for o in outcomes] == ["delivered"] * 3
    assert counts.new() == (1, 0)  # one storage token issued anew; the Skyporten token was still good


def test_concurrent_deliveries_refused_at_once_share_one_new_exchange(rt, stack):
    names = [f"batch-{i}.csv" for i in range(12)]
    put(rt, *names)
    stack.gateway.revoke_tokens()
    counts = Counts(stack)
    summary = rt.relay.sync()
    assert summary.error is None
    assert summary.delivered == len(names)
    assert summary.failed == 0
    assert counts.new() == (1, 0)


def test_a_fresh_entra_token_refused_again_fetches_the_skyporten_token_anew_once(rt, stack):
    put(rt, "again.csv")
    stack.gateway.revoke_tokens(also_next=1)  # the first token issued anew is refused too
    counts = Counts(stack)
    outcome = rt.relay.deliver("again.csv")
    assert outcome.status == "delivered"
    assert counts.new() == (2, 1)


def test_a_token_refused_every_time_stops_after_the_skyporten_refetch(rt, stack):
    put(rt, "never.csv")
    stack.gateway.revoke_tokens(also_next=10)
    counts = Counts(stack)
    try:
        outcome = rt.relay.deliver("never.csv")  # the link's state, not the file's (issue 26): held, not raised
        assert outcome.status == "held" and "401" in outcome.reason
    finally:
        stack.gateway.revoke_tokens(also_next=0)
    assert counts.new() == (2, 1)  # bounded: one Entra refresh, then one Skyporten refresh with its exchange


def test_a_401_on_the_read_back_after_a_commit_is_still_this_attempts_delivery(stack):
    # The Put Blob goes through, then the token is revoked before the read-back that AFTER_DELIVERY=delete needs:
    # the retry finds its own write (same attempt), so the export counts as delivered now, and its source goes.
    tag = uuid.uuid4().hex[:8]
    env = dict(stack.settings, EXPORT_CONTAINER=f"exports-{tag}", LEDGER_CONTAINER=f"ledger-{tag}",
               DESTINATION_TEMPLATE=f"r{tag}/{{path}}", AFTER_DELIVERY="delete")
    runtime = Runtime(Settings.load(env))
    try:
        runtime.exports.create_container()
        put(runtime, "warm-up.csv", "read-back.csv")
        assert runtime.relay.deliver("warm-up.csv").status == "delivered"
        stack.gateway.revoke_tokens(after_requests=1)
        counts = Counts(stack)
        outcome = runtime.relay.deliver("read-back.csv")
        assert outcome.status == "delivered", outcome.reason
        assert counts.new() == (1, 0)
        assert not runtime.exports.get_blob_client("read-back.csv").exists()
    finally:
        runtime.banenor_credential.close()


# -- issue 29: the recovery lives in Bane NOR's client, for every request it sends, not in one delivery path --------

def test_a_read_back_through_the_destination_client_heals_after_a_revocation(rt, stack):
    put(rt, "seen.csv")
    delivered = rt.relay.deliver("seen.csv")
    stack.gateway.revoke_tokens()
    counts = Counts(stack)
    props = rt.destination.get_blob_client(delivered.destination).get_blob_properties()
    assert props.size == len(b"seen.csv;1\n")
    assert counts.new() == (1, 0)


def test_the_relays_own_listing_heals_after_a_revocation(rt, stack):
    from shared.listing import list_blobs

    put(rt, "listed.csv")
    delivered = rt.relay.deliver("listed.csv")
    stack.gateway.revoke_tokens()
    counts = Counts(stack)
    listed = [blob.name for blob in list_blobs(rt.destination, delivered.destination, metadata=True)]
    assert listed == [delivered.destination]
    assert counts.new() == (1, 0)
