"""Start and stop Azurite (npm, pinned in package.json) for tests, the demo and `make stack`.

Several accounts in one instance (path-style URLs `<endpoint>/<account>`), in memory or on disk (`location`),
blob only or blob + queue + table (what the Functions host needs), plain HTTP on loopback or HTTPS with OAuth
so bearer tokens work (Azurite checks token shape, lifetime and audience only).
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
BIN_DIR = REPO / "node_modules" / ".bin"
AZURITE_BIN = BIN_DIR / "azurite-blob"
SERVICES = ("blob", "queue", "table")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    """One Azurite process holding `accounts` (name -> base64 key, generated when empty).

    `services` is ("blob",) (the `azurite-blob` binary) or all of SERVICES (the `azurite` binary, which the
    Functions host needs: queues for the blob trigger, tables for its diagnostics). `location` keeps the data on
    disk there (a restart finds it again); without it the data lives in memory, capped at `memory_limit_mb`
    (writes past it fail with MemoryExtentStoreAtSizeLimit). `port` is the blob port; `ports` those of the other
    services (0: a free one).
    """

    accounts: dict[str, str]
    tls: TlsFiles | None = None
    oauth: bool = False
    port: int = 0
    memory_limit_mb: int = 1024
    location: Path | None = None
    services: tuple[str, ...] = ("blob",)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, key in list(self.accounts.items()):
            if not key:
                self.accounts[name] = base64.b64encode(secrets.token_bytes(32)).decode()
        if self.oauth and self.tls is None:
            raise ValueError("Azurite's OAuth mode needs HTTPS: pass tls")
        if self.services not in (("blob",), SERVICES):
            raise ValueError(f"services must be ('blob',) or {SERVICES}")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return self.service_endpoint("blob")

    def service_endpoint(self, service: str) -> str:
        port = self.port if service == "blob" else self.ports.get(service, 0)
        return f"{self.scheme}://127.0.0.1:{port}"

    def account_url(self, account: str, service: str = "blob") -> str:
        return f"{self.service_endpoint(service)}/{account}"

    def connection_string(self, account: str) -> str:
        """A shared-key connection string naming every service this instance runs, path-style on loopback."""
        endpoints = "".join(
            f"{service.capitalize()}Endpoint={self.account_url(account, service)};" for service in self.services
        )
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={account};AccountKey={self.accounts[account]};"
            f"{endpoints}"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        binary = AZURITE_BIN if self.services == ("blob",) else BIN_DIR / "azurite"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: run `make install` (npm install) first")
        self.port = self.port or free_port()
        args = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        for service in self.services[1:]:
            self.ports[service] = self.ports.get(service) or free_port()
            args += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(self.ports[service])]
        if self.location is None:
            args += ["--inMemoryPersistence", "--extentMemoryLimit", str(self.memory_limit_mb)]
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        args += [
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
        waiting = [self.port, *(self.ports[service] for service in self.services[1:])]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2):
                    waiting.pop(0)
                if not waiting:
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
