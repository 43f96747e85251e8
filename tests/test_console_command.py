"""The console command (issue 27): `make install` puts `skyporten-relay` into the venv, an entry point declared in
pyproject.toml that runs the same command line as `python -m shared`, from any directory.

The package is built into a wheel from a copy of the repository and installed into a directory of the test's own
(never into the shared venv), so the checks see exactly what `pip install -e .` / `pip install .` would install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMAND = "skyporten-relay"


def test_pyproject_declares_the_console_command_on_the_cli_entry_point():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {COMMAND: "shared.cli:main"}
    from shared.cli import main

    assert callable(main)


def test_make_install_installs_the_project_into_the_venv():
    dry = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    install = [line for line in dry.stdout.splitlines() if "pip install" in line and " -e ." in line]
    assert install and "--no-deps" in install[0], dry.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the repository (a build writes egg-info into its source) as
    `make install` builds it: pip sets up the [build-system] requirements itself (from its cache or the index)."""
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", ".local", "__pycache__", "*.egg-info", "build", ".pytest_cache",
        ".ruff_cache", "local.settings.json", ".work", ".venv-infra"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--disable-pip-version-check", "-w", str(work / "dist"), str(source)],
                           capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = (work / "dist").glob("*.whl")
    return found


def test_the_package_holds_the_app_package_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {name.split("/", 1)[0] for name in names}
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {top for top in tops if not top.endswith(".dist-info")} == {"shared"}  # no sim, tests, bench, function_app
    assert "shared/cli.py" in names and "shared/__main__.py" in names
    assert f"{COMMAND} = shared.cli:main" in entry_points


def test_the_console_command_runs_from_any_directory(wheel, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                                "--disable-pip-version-check", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=180)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = target / "bin" / COMMAND
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy only: the repository is not on the path and not the working directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BANENOR_", "MASKINPORTEN_"))}
    env["PYTHONPATH"] = str(target)
    shown = subprocess.run([str(command), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: {COMMAND} ")
    env_file = elsewhere / "typo.env"
    env_file.write_text("BANENOR_DIRECTORY partner-987654321\n")
    refused = subprocess.run([str(command), "--env-file", "typo.env", "status"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "line 1" in refused.stderr, refused.stderr
    assert "No module named" not in refused.stderr
