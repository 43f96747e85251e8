"""Start and stop Azurite (npm, pinned in package.json) for tests, the demo and `make stack`.

Several accounts in one instance (path-style URLs `<endpoint>/<account>`), in memory, optionally
HTTPS with OAuth so bearer tokens work (Azurite checks token shape, lifetime and audience only).
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .pki import TlsFiles

REPO = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite-blob"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    """One Azurite blob service holding `accounts` (name -> base64 key, generated when empty)."""

    accounts: dict[str, str]
    tls: TlsFiles | None = None
    oauth: bool = False
    port: int = 0
    memory_limit_mb: int = 1024
    process: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, key in list(self.accounts.items()):
            if not key:
                self.accounts[name] = base64.b64encode(secrets.token_bytes(32)).decode()
        if self.oauth and self.tls is None:
            raise ValueError("Azurite's OAuth mode needs HTTPS: pass tls")

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def account_url(self, account: str) -> str:
        return f"{self.endpoint}/{account}"

    def connection_string(self, account: str) -> str:
        scheme = "https" if self.tls else "http"
        return (
            f"DefaultEndpointsProtocol={scheme};AccountName={account};AccountKey={self.accounts[account]};"
            f"BlobEndpoint={self.account_url(account)};"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `make install` (npm install) first")
        self.port = self.port or free_port()
        args = [
            str(AZURITE_BIN),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--inMemoryPersistence",
            "--extentMemoryLimit", str(self.memory_limit_mb),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
            "--loose",
        ]
        if self.tls:
            args += ["--cert", str(self.tls.server_cert), "--key", str(self.tls.server_key)]
        if self.oauth:
            args += ["--oauth", "basic"]
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = ";".join(f"{n}:{k}" for n, k in self.accounts.items())
        self.process = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Azurite did not start listening in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
