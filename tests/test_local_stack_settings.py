"""`shared/local_stack.py`: settings the local stack wrote are called "not running" only when none of their loopback
endpoints accepts a connection, and only when the stack wrote them."""

import socket

import pytest

from shared import local_stack


@pytest.fixture
def listening():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def closed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stack_env(*ports):
    return {local_stack.MARKER: "987654321", "EXPORT_STORAGE": f"AccountName=a;BlobEndpoint=http://127.0.0.1:{ports[0]}/a",
            **{f"URL_{i}": f"https://127.0.0.1:{port}/x" for i, port in enumerate(ports[1:])}}


def test_every_loopback_endpoint_refusing_is_a_stack_that_is_not_running(closed):
    assert local_stack.not_running(stack_env(closed, closed))


def test_one_endpoint_answering_is_a_running_stack_with_one_broken_link(closed, listening):
    assert not local_stack.not_running(stack_env(closed, listening))


def test_settings_the_stack_did_not_write_are_never_taken_for_its(closed):
    env = stack_env(closed)
    del env[local_stack.MARKER]
    assert not local_stack.not_running(env)


@pytest.mark.parametrize(("path", "expected"), [(".local/settings.env", True), ("/repo/.local/settings.env", True),
                                                 ("settings.env", False), ("relay.env", False)])
def test_the_stacks_settings_file_is_known_by_its_place(path, expected):
    assert local_stack.is_stack_settings_file(path) is expected
