"""The runtime's seam for supplying parts (`Runtime.override`): tests hand it a client with short retries or a fake,
by the part's public name, before the part is first used."""

import pytest

from shared.config import Settings
from shared.runtime import Runtime
from tests.helpers import base_env


def runtime() -> Runtime:
    return Runtime(Settings.load(base_env()))


def test_a_supplied_part_is_used_in_place_of_the_one_the_runtime_would_build():
    fake = object()
    rt = runtime()
    assert rt.override(skyporten=fake) is rt
    assert rt.skyporten is fake and rt.built("skyporten")


def test_parts_built_later_are_built_from_the_supplied_part():
    class Service:
        def get_container_client(self, name):
            return ("container", name)

    rt = runtime().override(banenor_service=Service())
    assert rt.destination == ("container", rt.settings.banenor.container)


def test_a_name_that_is_no_part_is_refused_with_the_parts_named():
    with pytest.raises(ValueError, match=r"'maskinporten' is not a part of the runtime .*skyporten"):
        runtime().override(maskinporten=object())


def test_a_part_already_built_is_refused():
    rt = runtime()
    assert rt.export_service is not None  # built on first use
    with pytest.raises(ValueError, match="'export_service' is built already"):
        rt.override(export_service=object())


def test_built_tells_whether_a_part_exists_yet():
    rt = runtime()
    assert not rt.built("exports")
    assert rt.exports is not None  # built on first use
    assert rt.built("exports") and rt.built("export_service")
