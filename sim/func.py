"""`make func`: run the function app under Azure Functions Core Tools (`func start`) on the running local stack.

Checks, in order, each with its fix: Core Tools installed (else how to install them, exit 3); the stack's
`local.settings.json` present and its storage answering (else `make stack`, exit 2). Then runs `func start` in the
app's folder with the repo's `.venv` first on PATH, so the Python worker imports the app's requirements.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .azurite import REPO

NO_CORE_TOOLS = 3
NO_STACK = 2

INSTALL_HELP = """\
Azure Functions Core Tools (`func`) is not installed: no `func` on PATH.
Install version 4, then run `make func` again; any one of:
  npm (any OS):   npm install -g azure-functions-core-tools@4 --unsafe-perm true
  Debian/Ubuntu:  add Microsoft's package repository (packages.microsoft.com), then
                  sudo apt-get install azure-functions-core-tools-4
  macOS:          brew tap azure/functions && brew install azure-functions-core-tools@4
  Windows:        winget install Microsoft.Azure.FunctionsCoreTools
Details: https://learn.microsoft.com/azure/azure-functions/functions-run-local
The blob trigger needs a Functions host of 4.34.1 or later: docs/local-development.md."""


class NotReady(Exception):
    """The stack is not there for `func start`; the message says what to run."""


def storage_endpoints(local_settings: Path) -> list[tuple[str, str]]:
    """(setting, endpoint URL) of every storage service the host will use, from `local.settings.json`.

    Raises NotReady when the file is missing or has no usable AzureWebJobsStorage connection string."""
    try:
        values = json.loads(local_settings.read_text())["Values"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NotReady(
            f"{local_settings} is missing or unreadable ({type(err).__name__}): start the local stack with "
            "`make stack`; it writes local.settings.json for `func start`"
        ) from None
    found = []
    for setting in ("AzureWebJobsStorage", "EXPORT_STORAGE"):
        parts = dict(p.split("=", 1) for p in str(values.get(setting, "")).split(";") if "=" in p)
        found += [(setting, url) for key, url in parts.items() if key.endswith("Endpoint")]
    if not any(setting == "AzureWebJobsStorage" for setting, _ in found):
        raise NotReady(
            f"{local_settings} has no AzureWebJobsStorage connection string with endpoints: "
            "run `make stack` again to rewrite it"
        )
    return found


def check_answering(endpoints: list[tuple[str, str]], timeout: float = 1.0) -> None:
    """Raises NotReady naming the first endpoint nothing listens on (only host and port: no key in messages)."""
    for setting, url in endpoints:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
                pass
        except OSError:
            raise NotReady(
                f"the local stack is not answering: {setting} points at {parts.scheme}://{parts.hostname}:{port}, "
                "where nothing listens. Start it with `make stack` (it rewrites local.settings.json), then "
                "`make func` again"
            ) from None


def func_environment(venv: Path) -> dict[str, str]:
    """The environment for `func start`: the repo's venv first on PATH, so the worker finds the requirements."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.func", description=__doc__.splitlines()[0])
    parser.add_argument("--script-root", type=Path, default=REPO, help="the function app's folder (default: repo)")
    args, func_args = parser.parse_known_args(argv)
    func = shutil.which("func")
    if func is None:
        print(INSTALL_HELP, file=sys.stderr)
        return NO_CORE_TOOLS
    root = args.script_root.resolve()
    try:
        check_answering(storage_endpoints(root / "local.settings.json"))
    except NotReady as err:
        print(f"make func: {err}", file=sys.stderr)
        return NO_STACK
    print(f"make func: `func start` in {root} with the local stack's settings (local.settings.json)", flush=True)
    try:
        return subprocess.call([func, "start", *func_args], cwd=root, env=func_environment(REPO / ".venv"))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
