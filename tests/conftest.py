"""Shared fixtures: the local stack (Azurite + simulators), started once per test session.

Integration tests build the product's real objects (`Runtime`) from the stack's settings, with overrides for
the failure being tested; simulators are reached in-process to arrange a failure (e.g. a federated
credential with another subject) and restored afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.config import Settings
from shared.runtime import Runtime


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
        if "banenor_credential" in rt.__dict__:
            rt.banenor_credential.close()


@pytest.fixture
def backend(stack):
    """Bane NOR's account straight behind the gateway (for checking what landed)."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(
        stack.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"],
        connection_verify=stack.settings["REQUESTS_CA_BUNDLE"],
    )
    return client.get_container_client(stack.settings["BANENOR_CONTAINER"])
