"""`make func` (`python -m sim.func`): starts the function app with Core Tools on the running local stack.

Core Tools cannot be installed on our machines (LOCAL-STACK.md), so the tests put a stand-in `func` on PATH: a
script that records how it was called. That stand-in is the only mock here; the stack is real.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.azurite import REPO
from sim.stack import Stack

pytestmark = pytest.mark.stack

STAND_IN = """#!/bin/sh
# Stand-in for Azure Functions Core Tools: records its arguments and environment, then exits 0.
{{
  echo "args=$*"
  echo "cwd=$(pwd)"
  echo "path=$PATH"
  echo "virtual_env=$VIRTUAL_ENV"
}} > "{record}"
"""


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("app")
    stack = Stack(tmp_path_factory.mktemp("stack"), layout="split", persistence="memory").start()
    stack.write_settings(root / "local.settings.json")
    yield stack, root
    stack.stop()


def bin_dir_with_func(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, record = tmp_path / "bin", tmp_path / "func-called.txt"
    bin_dir.mkdir()
    func = bin_dir / "func"
    func.write_text(STAND_IN.format(record=record))
    func.chmod(func.stat().st_mode | stat.S_IXUSR)
    return bin_dir, record


def run(root: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)} | {"PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "sim.func", "--script-root", str(root), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def test_without_core_tools_it_says_how_to_install_them_and_exits_non_zero(tmp_path):
    result = run(tmp_path, str(tmp_path / "empty-bin"))
    assert result.returncode == 3
    assert "npm install -g azure-functions-core-tools@4" in result.stderr
    assert "apt-get install azure-functions-core-tools-4" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_local_settings_it_says_to_start_the_stack(tmp_path):
    bin_dir, record = bin_dir_with_func(tmp_path)
    result = run(tmp_path, str(bin_dir))
    assert result.returncode == 2
    assert "make stack" in result.stderr and "local.settings.json" in result.stderr
    assert not record.exists()


def test_with_a_stopped_stack_it_says_to_start_the_stack(tmp_path):
    bin_dir, record = bin_dir_with_func(tmp_path)
    stack = Stack(tmp_path / "stack", layout="split", persistence="memory").start()
    stack.write_settings(tmp_path / "local.settings.json")
    stack.stop()
    result = run(tmp_path, str(bin_dir))
    assert result.returncode == 2
    assert "not answering" in result.stderr and "make stack" in result.stderr
    assert "AccountKey" not in result.stderr  # the connection string holds the account key
    assert not record.exists()


def test_with_the_stack_running_it_runs_func_start_in_the_app_with_the_venv_first_on_path(
    running_stack, tmp_path
):
    _, root = running_stack
    bin_dir, record = bin_dir_with_func(tmp_path)
    result = run(root, str(bin_dir), "--verbose")
    assert result.returncode == 0, result.stderr
    called = dict(line.split("=", 1) for line in record.read_text().splitlines())
    assert called["args"] == "start --verbose"
    assert Path(called["cwd"]).resolve() == root.resolve()
    assert called["path"].split(os.pathsep)[0] == str(REPO / ".venv" / "bin")
    assert called["virtual_env"] == str(REPO / ".venv")



def test_host_json_pins_the_bundle_floor_whose_blob_extension_sends_model_binding_data():
    import json

    bundle = json.loads((REPO / "host.json").read_text())["extensionBundle"]
    assert bundle == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.11.0, 5.0.0)"}
