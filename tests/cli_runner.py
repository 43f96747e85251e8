"""The command line as the tests run it: `shared.cli.main` in this process, as `python -m shared` runs it in a new
one, with what it prints captured and the process-wide state it touches put back afterwards.

A subprocess is kept where it is the point (tests/test_console_command.py, Ctrl-C and a closed pipe in
tests/test_cli_operator.py and tests/test_cli_interrupts.py, `--help` in tests/test_cli.py): starting an interpreter
and importing the SDKs for each of some hundred commands was most of the CLI tests' time.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import REPO

__all__ = ["REPO", "CliResult", "as_json", "exports_client", "make_cli", "no_token_backoff", "process_runtime",
           "run_main", "write_env_file"]


@dataclass(frozen=True)
class CliResult:
    """What a run of the command line left: as `subprocess.run(..., capture_output=True, text=True)` reports it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_main(argv: Sequence[str], *, before: Callable[[], object] | None = None) -> CliResult:
    """`python -m shared *argv`, in this process.

    What a new process would start without is reset before and after: the process-wide runtime
    (`shared.runtime.reset_runtime`), the environment (`--env-file` adds its settings to `os.environ`) and the root
    logger's handlers and level (`main` installs its own handler on stderr). stdout and stderr are this run's alone,
    including what the relay's worker threads print. `before` runs first, after the reset (`make_cli`'s `prepare`)."""
    from shared.cli import main
    from shared.runtime import reset_runtime

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    environ = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    reset_runtime()
    try:
        if before is not None:
            before()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse's answer to a command-line mistake, as a process exits with it
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        reset_runtime()
        os.environ.clear()
        os.environ.update(environ)
        root.handlers[:] = handlers
        root.setLevel(level)
    return CliResult(list(argv), code, out.getvalue(), err.getvalue())


def write_env_file(path: Path, values: dict[str, str | None]) -> Path:
    """`values` as KEY=value lines (a value of None leaves the setting out)."""
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items() if v is not None))
    return path


def process_runtime(values: dict[str, str | None]) -> Any:
    """The process-wide runtime, built now from the environment plus `values` as `main` builds it from an env file
    of `values`: `main` then finds it (`shared.runtime.get_runtime` builds it once) with what a test changed."""
    from shared.config import load_settings
    from shared.runtime import get_runtime

    env = {**os.environ, **{k: v for k, v in values.items() if v is not None}}
    return get_runtime(settings=load_settings(env), interactive=True)


def no_token_backoff(rt: Any) -> None:
    """The Skyporten client of `rt` built anew by the product's builder, with a `sleep` that records each backoff
    (`rt.sleeps.delays`) instead of waiting it out: the same retries, without the seconds between them."""
    from shared.skyporten_token import client_from_settings
    from tests.helpers import Sleeps

    s = rt.settings
    rt.sleeps = Sleeps()
    rt.override(skyporten=client_from_settings(s.skyporten, rt.signing_keys, clock=rt.clock, sleep=rt.sleeps,
                                               verify=s.http.verify))


def make_cli(stack: Any, tmp_path: Path) -> Any:
    """`run(*args, expect=None, prepare=None, **overrides)`: the command line (`python -m shared --env-file FILE
    *args`, run in this process by `run_main`) with the stack's settings plus `overrides` (a value of None leaves the
    setting out) in an env file, on containers of its own (`run.tag`, `run.base`). `prepare(runtime)` may change
    the runtime the command will use before it starts (`no_token_backoff`)."""
    tag = uuid.uuid4().hex[:8]
    base = dict(stack.settings, EXPORT_CONTAINER=f"cli-exports-{tag}", LEDGER_CONTAINER=f"cli-ledger-{tag}",
                DESTINATION_TEMPLATE=f"cli{tag}/{{path}}")

    def run(*args: str, expect: int | None = None, prepare: Callable[[Any], None] | None = None,
            **overrides: str | None) -> CliResult:
        values = {**base, **overrides}
        env_file = write_env_file(tmp_path / f"settings-{uuid.uuid4().hex[:6]}.env", values)
        before = None if prepare is None else lambda: prepare(process_runtime(values))
        result = run_main(["--env-file", str(env_file), *args], before=before)
        if expect is not None:
            assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    run.tag = tag
    run.base = base
    exports_client(run).create_container()
    return run


def as_json(result: CliResult) -> Any:
    return json.loads(result.stdout)


def exports_client(cli: Any) -> Any:
    """The export container of a `make_cli` run, straight from the partner's storage."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(
        cli.base["EXPORT_STORAGE"], connection_verify=cli.base["REQUESTS_CA_BUNDLE"]
    ).get_container_client(cli.base["EXPORT_CONTAINER"])


def plant_foreign(cli: Any, backend: Any, name: str) -> Any:
    """A file of Bane NOR's own where export `name` would land: never overwritten, so that version is poisoned at
    once (a refusal about the link, such as a revoked ACL, charges no file: issue 26)."""
    blob = backend.get_blob_client(f"{cli.base['BANENOR_DIRECTORY']}/cli{cli.tag}/{name}")
    blob.upload_blob(b"bane nor's own")
    return blob
