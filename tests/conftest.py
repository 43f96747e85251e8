"""Shared fixtures: the local stack (Azurite + simulators), started once per test session (per pytest-xdist worker
under `make test`: each worker has its own), and what is built on it
(`relay_env`, the fault proxies, the command line); one Azurite for the copier's and the ledger's tests.
Helpers that are not fixtures are in tests/helpers.py and tests/cli_runner.py.

Integration tests build the product's real objects (`Runtime`) from the stack's settings, with overrides for
the failure being tested; simulators are reached in-process to arrange a failure (e.g. a federated
credential with another subject) and restored afterwards.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from shared.config import Settings
from shared.ledger import Ledger
from shared.runtime import Runtime
from sim.azurite import Azurite
from tests.cli_runner import make_cli
from tests.faultproxy import proxies_for, proxy_for
from tests.helpers import AZURITE_ACCOUNTS, LedgerClock, RelayEnv, Stores, Wire


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from sim.stack import Stack

    workdir = Path(tmp_path_factory.mktemp("stack"))
    s = Stack(workdir)
    s.start()
    saved = {k: os.environ.get(k) for k in ("REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER")}
    # azure-identity's managed identity credential and requests read these from the process environment.
    for key in saved:
        os.environ[key] = s.settings[key]
    yield s
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    s.stop()


@pytest.fixture
def make_runtime(stack):
    """Build a Runtime from the stack's settings plus overrides (a value of None removes the setting)."""
    built: list[Runtime] = []

    def build(**overrides) -> Runtime:
        env = dict(stack.settings)
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        rt = Runtime(Settings.load(env))
        built.append(rt)
        return rt

    yield build
    for rt in built:
        if rt.built("banenor_credential"):
            rt.banenor_credential.close()


@pytest.fixture
def backend(stack):
    """Bane NOR's account straight behind the gateway (for checking what landed)."""
    client = BlobServiceClient.from_connection_string(
        stack.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"],
        connection_verify=stack.settings["REQUESTS_CA_BUNDLE"],
    )
    return client.get_container_client(stack.settings["BANENOR_CONTAINER"])


@pytest.fixture
def gateway_proxy(stack):
    """A fault proxy in front of Bane NOR's gateway (tests/faultproxy.py); `gateway_proxy.url(...)` is the setting."""
    proxy = proxy_for(stack, "BANENOR_STORAGE_URL")
    yield proxy
    proxy.stop()


# -- the relay on the local stack ------------------------------------------------------------------------------
@pytest.fixture
def relay_env(stack, backend):
    """A Runtime on fresh export, ledger and archive containers and its own destination folder, so tests share one
    stack without seeing each other's files; `make(**overrides)` builds more on the same containers
    (tests/helpers.py's `RelayEnv`)."""
    env = RelayEnv(stack, backend)
    yield env
    env.close()


@pytest.fixture(scope="module")
def proxies(stack):
    """One fault proxy per dependency of the relay (tests/faultproxy.py), by the setting it replaces."""
    started = proxies_for(stack)
    yield started
    for proxy in started.values():
        proxy.stop()


@pytest.fixture
def faults(proxies):
    """The proxies by setting name, counters at zero; every fault is removed after the test."""
    for proxy in proxies.values():
        proxy.clear()
    yield proxies
    for proxy in proxies.values():
        proxy.clear()


# -- the command line ------------------------------------------------------------------------------------------
@pytest.fixture
def cli(stack, tmp_path):
    """The command line on the stack, on containers of its own (tests/cli_runner.py's `make_cli`)."""
    return make_cli(stack, tmp_path)


@pytest.fixture
def cli_logging():
    """main() installs its own log handler on the root logger; give pytest's back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


# -- one Azurite with the partner's and Bane NOR's accounts: the copier's and the ledger's tests ---------------
@pytest.fixture(scope="session")
def azurite():
    instance = Azurite(dict.fromkeys(AZURITE_ACCOUNTS, "")).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def wire():
    return Wire()


@pytest.fixture
def stores(azurite, wire):
    """A source container in the partner's account and a destination in Bane NOR's, each client recording what it
    sent into `wire`; both containers are deleted afterwards."""
    def service(account: str, side: str) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(
            azurite.connection_string(account),
            raw_request_hook=wire.on_request(side),
            raw_response_hook=wire.on_response(side),
        )

    src, dst = service("partnerexports", "source"), service("bnplmext", "destination")
    suffix = uuid.uuid4().hex[:12]
    src.create_container(f"exports-{suffix}")
    dst.create_container(f"integration-{suffix}")
    yield Stores(azurite, src, dst, f"exports-{suffix}", f"integration-{suffix}")
    src.delete_container(f"exports-{suffix}")
    dst.delete_container(f"integration-{suffix}")


@pytest.fixture
def container(azurite):
    """A ledger container of its own in the partner's account (not created: `Ledger.ensure` does that)."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string("partnerexports"))
    return service.get_container_client(f"ledger-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def clock():
    return LedgerClock()


@pytest.fixture
def ledger(container, clock):
    ledger = Ledger(container, clock=clock, backoff_base=60, backoff_max=3600)
    ledger.ensure()
    return ledger
