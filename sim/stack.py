"""The local stack: Azurite plus the Skyporten, Entra, Key Vault and gateway simulators, wired as in Azure.

`Stack` starts everything in-process and publishes the relay's settings; the CLI (`python -m sim.stack
start|stop|clean|serve`) runs the same stack in a detached background process for `make stack` (`make stack-stop`
stops it, `make clean` stops it and deletes what it wrote).

Two layouts (docs/local-development.md says why):
- "split" (`make stack`, `func start`): the partner's account in an Azurite of its own with blob, queue and table
  on plain HTTP loopback and shared-key connection strings, which the Functions host (a .NET process that does not
  read REQUESTS_CA_BUNDLE) can use as Microsoft's own local setup does; Bane NOR's account in a second Azurite,
  HTTPS with OAuth, behind the gateway simulator. Azurite's server-side copies need source and destination on one
  host:port, so COPY_MODE=auto falls back to streaming here.
- "single" (the default of `Stack`, used by the tests, `make demo` and the benchmarks): both accounts in one
  HTTPS+OAuth Azurite, which keeps the copier's server mode (start_copy_from_url, stage_block_from_url) testable.
Data lives on disk under `<workdir>/azurite/` ("disk", the CLI's default: a restart keeps exports, ledger and
Bane NOR's side) or in memory ("memory": tests and benchmarks; `--in-memory` on the CLI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.local_stack import MARKER as STACK_MARKER

from .azurite import REPO, SERVICES, Azurite, free_port
from .entra import EntraSim, FederatedCredential
from .gateway import GatewaySim
from .httpbase import Clock
from .jwks import b64url_uint, public_jwk
from .keyvault import KeyVaultSim
from .pki import TlsFiles, cert_pem, issue_certificate, make_tls, new_rsa_key, private_pem
from .skyporten import RegisteredClient, SkyportenOptions, SkyportenSim

PARTNER_ORGNO = "987654321"
SCOPE = "banenor:payloadmanager.storage"
# The audience Bane NOR binds to the scope (docs/protocol.md sections 3-4: open; Entra's recommended value).
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
BANENOR_ACCOUNT = "bnplmextnwestlocal"  # Azurite accepts aud https://<account>.blob.core.windows.net
PARTNER_ACCOUNT = "partnerexports"
STORAGE_AUDIENCE = f"https://{BANENOR_ACCOUNT}.blob.core.windows.net"
BANENOR_CONTAINER = "integration-dev"
BANENOR_DIRECTORY = f"partner-{PARTNER_ORGNO}"
EXPORT_CONTAINER = "exports"
LEDGER_CONTAINER = "relay-ledger"
KEY_VAULT_ROLES = ("Key Vault Secrets User", "Key Vault Crypto User", "Key Vault Certificate User")
SECRET_PEM, SECRET_JWK, CERTIFICATE, VAULT_KEY = (
    "maskinporten-key",
    "maskinporten-jwk",
    "maskinporten-cert",
    "maskinporten-signing",
)
READY_TIMEOUT = 90.0
# The open point of docs/protocol.md sections 3-4, played either way: the token's audience bound to the scope by Bane
# NOR (the relay sends no resource), or taken from the grant's `resource` (the relay must send MASKINPORTEN_RESOURCE).
AUDIENCE_MODES = ("scope", "resource")
LAYOUTS = ("single", "split")
PERSISTENCE = ("memory", "disk")
STATE_FILE = "stack-state.json"  # account keys and ports of an on-disk stack, reused at the next start


def make_azurite_tls(directory: Path) -> TlsFiles:
    """A self-signed loopback certificate for Azurite.

    Azurite 3.37 fetches a Put Block From URL source from itself trusting only the leaf certificate it
    serves, which works only when that leaf is self-signed; Copy Blob validates the source with Node's
    default trust, so Azurite also needs NODE_EXTRA_CA_CERTS pointing at this file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = new_rsa_key()
    cert = issue_certificate(key, "azurite", server_names=("127.0.0.1", "localhost"))
    files = TlsFiles(directory / "azurite.pem", directory / "azurite.pem", directory / "azurite-key.pem")
    files.server_cert.write_bytes(cert_pem(cert))
    files.server_key.write_bytes(private_pem(key))
    files.server_key.chmod(0o600)
    return files


def start_azurite(accounts: dict[str, str], tls: TlsFiles, **options: Any) -> Azurite:
    """Azurite over HTTPS with OAuth, trusting its own certificate for server-side copies."""
    with _environment(NODE_EXTRA_CA_CERTS=str(tls.ca_cert)):
        return Azurite(accounts, tls=tls, oauth=True, **options).start()


def _port_free(port: int) -> bool:
    """True when nothing listens on the loopback port (TIME_WAIT left by our last stop does not count: Node
    listens with SO_REUSEADDR, and so does this probe)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def private_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    """The private RSA key as a JWK (RFC 7518 section 6.3.2) with `kid`."""
    numbers = key.private_numbers()
    return public_jwk(key.public_key(), kid) | {
        "d": b64url_uint(numbers.d),
        "p": b64url_uint(numbers.p),
        "q": b64url_uint(numbers.q),
        "dp": b64url_uint(numbers.dmp1),
        "dq": b64url_uint(numbers.dmq1),
        "qi": b64url_uint(numbers.iqmp),
    }


class Stack:
    """Everything the relay talks to, on loopback. `settings` is filled by `start()`."""

    def __init__(
        self,
        workdir: Path,
        clock: Clock = time.time,
        audience_mode: str = "scope",
        *,
        layout: str = "single",
        persistence: str = "memory",
        memory_limit_mb: int = 1024,
    ) -> None:
        if audience_mode not in AUDIENCE_MODES:
            raise ValueError(f"STACK_AUDIENCE_MODE is {audience_mode!r}; use scope or resource")
        if layout not in LAYOUTS or persistence not in PERSISTENCE:
            raise ValueError(f"layout must be one of {LAYOUTS} and persistence one of {PERSISTENCE}")
        self.workdir = Path(workdir).resolve()
        self.clock = clock
        self.audience_mode = audience_mode
        self.layout, self.persistence, self.memory_limit_mb = layout, persistence, memory_limit_mb
        self.settings: dict[str, str] = {}
        # `azurite` holds Bane NOR's account (behind the gateway); `partner_azurite` the partner's (the same
        # instance in the single layout).
        self.azurite: Azurite | None = None
        self.partner_azurite: Azurite | None = None
        self.skyporten: SkyportenSim | None = None
        self.entra: EntraSim | None = None
        self.keyvault: KeyVaultSim | None = None
        self.gateway: GatewaySim | None = None
        self.ca_bundle = self.workdir / "tls" / "ca-bundle.pem"
        self.enterprise_ca: x509.Certificate | None = None
        # Identities, filled by start(): Bane NOR's managed identity for the partner, the partner's own.
        self.banenor_tenant_id = self.partner_tenant_id = ""
        self.mi_client_id = self.mi_object_id = ""
        self.partner_client_id = self.partner_object_id = ""

    def __repr__(self) -> str:
        return (f"Stack(workdir={str(self.workdir)!r}, layout={self.layout!r}, persistence={self.persistence!r}, "
                f"running={self.azurite is not None})")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tls = make_tls(self.workdir / "tls")
        azurite_tls = make_azurite_tls(self.workdir / "tls")
        # One trust file for every client: the simulators' CA and Azurite's self-signed certificate.
        self.ca_bundle.write_bytes(tls.ca_cert.read_bytes() + azurite_tls.server_cert.read_bytes())
        bundle = str(self.ca_bundle)
        self._start_azurite(azurite_tls)
        assert self.azurite is not None
        context = tls.server_context()
        options = SkyportenOptions(scope_audiences={SCOPE: EXCHANGE_AUDIENCE})
        self.skyporten = SkyportenSim(context, clock=self.clock, options=options).start()
        self.skyporten.options.audience_mode = self.audience_mode  # type: ignore[assignment]
        self.entra = EntraSim(context, clock=self.clock, ca_bundle=bundle).start()
        banenor_tenant, partner_tenant = str(uuid.uuid4()), str(uuid.uuid4())
        self.keyvault = KeyVaultSim(
            context, self.entra.validate_token, partner_tenant, self.entra.authority, clock=self.clock
        ).start()
        backends = {STORAGE_AUDIENCE: self.azurite.account_url(BANENOR_ACCOUNT)}
        self.gateway = GatewaySim(
            context, self.entra.validate_token, backends, str(azurite_tls.ca_cert), clock=self.clock
        ).start()
        self.settings = self._wire(banenor_tenant, partner_tenant)
        self.set_audience_mode(self.audience_mode)

    def set_audience_mode(self, mode: str) -> None:
        """Play one reading of the audience (see AUDIENCE_MODES) from now on; the published settings follow:
        in `resource` mode the relay sends MASKINPORTEN_RESOURCE, the audience Bane NOR's credential expects."""
        if mode not in AUDIENCE_MODES:
            raise ValueError(f"STACK_AUDIENCE_MODE is {mode!r}; use scope or resource")
        assert self.skyporten is not None
        self.audience_mode = mode
        self.skyporten.options.audience_mode = mode  # type: ignore[assignment]
        self.settings["STACK_AUDIENCE_MODE"] = mode
        if mode == "resource":
            self.settings["MASKINPORTEN_RESOURCE"] = EXCHANGE_AUDIENCE
        else:
            self.settings.pop("MASKINPORTEN_RESOURCE", None)

    def _start_azurite(self, tls: TlsFiles) -> None:
        """Start Azurite in the chosen layout; an on-disk stack reuses its account keys and ports."""
        state = self._load_state()
        keys: dict[str, str] = state.get("accounts", {})
        ports: dict[str, int] = {name: port for name, port in state.get("ports", {}).items() if _port_free(port)}
        memory = {"memory_limit_mb": self.memory_limit_mb}
        if self.layout == "single":
            accounts = {BANENOR_ACCOUNT: keys.get(BANENOR_ACCOUNT, ""), PARTNER_ACCOUNT: keys.get(PARTNER_ACCOUNT, "")}
            self.azurite = start_azurite(
                accounts, tls, port=ports.get("azurite", 0), location=self._location("azurite"), **memory
            )
            self.partner_azurite = self.azurite
        else:
            self.azurite = start_azurite(
                {BANENOR_ACCOUNT: keys.get(BANENOR_ACCOUNT, "")},
                tls,
                port=ports.get("banenor", 0),
                location=self._location("banenor"),
                **memory,
            )
            # The partner's side as the Functions host needs it: blob, queue and table on plain HTTP loopback.
            self.partner_azurite = Azurite(
                {PARTNER_ACCOUNT: keys.get(PARTNER_ACCOUNT, "")},
                port=ports.get("partner-blob", 0) or free_port(),
                ports={s: ports.get(f"partner-{s}", 0) for s in SERVICES[1:]},
                location=self._location("partner"),
                services=SERVICES,
                **memory,
            ).start()
        self._save_state()

    def _location(self, name: str) -> Path | None:
        return self.workdir / "azurite" / name if self.persistence == "disk" else None

    def _load_state(self) -> dict[str, Any]:
        path = self.workdir / STATE_FILE
        if self.persistence != "disk" or not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        if self.persistence != "disk":
            return
        assert self.azurite is not None and self.partner_azurite is not None
        accounts = self.azurite.accounts | self.partner_azurite.accounts
        if self.layout == "single":
            ports = {"azurite": self.azurite.port}
        else:
            ports = {"banenor": self.azurite.port, "partner-blob": self.partner_azurite.port}
            ports |= {f"partner-{s}": p for s, p in self.partner_azurite.ports.items()}
        _write_private(self.workdir / STATE_FILE, json.dumps({"accounts": accounts, "ports": ports}, indent=2))

    def _wire(self, banenor_tenant: str, partner_tenant: str) -> dict[str, str]:
        assert self.azurite and self.partner_azurite and self.skyporten and self.entra and self.keyvault
        assert self.gateway
        bundle = str(self.ca_bundle)
        # The partner's Maskinporten client and its keys (docs/protocol.md section 3).
        client_id = str(uuid.uuid4())
        signing_key, vault_key = new_rsa_key(), new_rsa_key()
        kid, vault_kid = f"relay-{uuid.uuid4().hex[:12]}", f"relay-kv-{uuid.uuid4().hex[:12]}"
        ca_key, cert_key = new_rsa_key(), new_rsa_key()
        self.enterprise_ca = issue_certificate(ca_key, "Local enterprise CA", is_ca=True, org="Local CA")
        certificate = issue_certificate(cert_key, "Partner AS", ca_key, self.enterprise_ca, org="Partner AS")
        self.skyporten.register(
            RegisteredClient(
                client_id,
                PARTNER_ORGNO,
                {SCOPE},
                keys={kid: signing_key.public_key(), vault_kid: vault_key.public_key()},
                trusted_cas=[self.enterprise_ca],
            )
        )
        # Bane NOR's tenant: storage resources and the partner's managed identity (section 2).
        self.entra.add_tenant(banenor_tenant)
        self.entra.add_resource(banenor_tenant, STORAGE_AUDIENCE)
        self.entra.add_resource(banenor_tenant, "https://storage.azure.com")
        mi_client, mi_object = str(uuid.uuid4()), str(uuid.uuid4())
        self.banenor_tenant_id, self.mi_client_id, self.mi_object_id = banenor_tenant, mi_client, mi_object
        subject = f"0192:{PARTNER_ORGNO};{SCOPE}"
        credential = FederatedCredential(self.skyporten.issuer, subject, EXCHANGE_AUDIENCE)
        self.entra.add_managed_identity(banenor_tenant, mi_client, mi_object, [credential])
        self.gateway.grant(mi_object, BANENOR_CONTAINER, BANENOR_DIRECTORY)
        # The partner's tenant: the Function App's own identity reads Key Vault through the MSI endpoint.
        self.entra.add_tenant(partner_tenant)
        self.entra.add_resource(partner_tenant, "https://vault.azure.net")
        self.entra.add_resource(partner_tenant, "https://storage.azure.com")
        partner_client, partner_object = str(uuid.uuid4()), str(uuid.uuid4())
        self.partner_tenant_id, self.partner_client_id = partner_tenant, partner_client
        self.partner_object_id = partner_object
        self.entra.add_msi_identity(partner_tenant, partner_client, partner_object)
        for role in KEY_VAULT_ROLES:
            self.keyvault.grant(partner_object, role)
        pem = private_pem(signing_key)
        self.keyvault.set_secret(SECRET_PEM, pem.decode(), content_type="application/x-pem-file")
        self.keyvault.set_secret(SECRET_JWK, json.dumps(private_jwk(signing_key, kid)), "application/json")
        self.keyvault.set_certificate(CERTIFICATE, cert_key, [certificate, self.enterprise_ca])
        self.keyvault.set_key(VAULT_KEY, vault_key)
        key_file = self.workdir / "maskinporten-key.pem"
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_bytes(pem)
        # Containers: Bane NOR's domain container, the partner's exports and ledger.
        backend = self.azurite.connection_string(BANENOR_ACCOUNT)
        partner = self.partner_azurite.connection_string(PARTNER_ACCOUNT)
        for connection, container in (
            (backend, BANENOR_CONTAINER),
            (partner, EXPORT_CONTAINER),
            (partner, LEDGER_CONTAINER),
        ):
            with BlobServiceClient.from_connection_string(connection, connection_verify=bundle) as service:
                with contextlib.suppress(ResourceExistsError):  # an on-disk stack keeps its containers
                    service.create_container(container)
        return {
            "BANENOR_ENVIRONMENT": "test",
            "MASKINPORTEN_ISSUER": self.skyporten.issuer,
            "MASKINPORTEN_TOKEN_ENDPOINT": self.skyporten.token_endpoint,
            "BANENOR_STORAGE_URL": self.gateway.storage_url,
            "BANENOR_STORAGE_AUDIENCE": STORAGE_AUDIENCE,
            "MASKINPORTEN_CLIENT_ID": client_id,
            "MASKINPORTEN_SCOPE": SCOPE,
            "MASKINPORTEN_KEY_ID": kid,
            "SIGNING_KEY_SOURCE": "keyvault-secret",
            "KEY_VAULT_URL": self.keyvault.vault_url,
            "SIGNING_KEY_NAME": SECRET_PEM,
            "SIGNING_KEY_FILE": str(key_file),
            "BANENOR_TENANT_ID": banenor_tenant,
            "BANENOR_CLIENT_ID": mi_client,
            "BANENOR_AUTHORITY_HOST": self.entra.authority,
            "BANENOR_CONTAINER": BANENOR_CONTAINER,
            "BANENOR_DIRECTORY": BANENOR_DIRECTORY,
            "EXPORT_STORAGE": partner,
            "EXPORT_CONTAINER": EXPORT_CONTAINER,
            "LEDGER_CONTAINER": LEDGER_CONTAINER,
            "REQUESTS_CA_BUNDLE": bundle,
            "IDENTITY_ENDPOINT": self.entra.msi_endpoint,
            "IDENTITY_HEADER": self.entra.msi_secret,
            "STACK_BANENOR_BACKEND_CONNECTION_STRING": backend,
            "STACK_KEYVAULT_KEY_ID": vault_kid,
            STACK_MARKER: PARTNER_ORGNO,  # STACK_PARTNER_ORGNO: how the CLI knows the stack's settings
        } | self._layout_settings()

    def _layout_settings(self) -> dict[str, str]:
        if self.layout == "single":
            return {}
        # Azurite copies server-side only from its own host:port (it refuses with CannotVerifyCopySource), and the
        # partner's account is a separate instance here: stream, rather than warn about it in every process.
        return {"COPY_MODE": "stream"}

    def stop(self) -> None:
        """Stop every server and Azurite; safe to call twice or after a failed start."""
        for name in ("gateway", "keyvault", "entra", "skyporten"):
            server = getattr(self, name)
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
                setattr(self, name, None)
        for azurite in {id(a): a for a in (self.partner_azurite, self.azurite) if a is not None}.values():
            azurite.stop()
        self.azurite = self.partner_azurite = None

    def azurite_pids(self) -> list[int]:
        """The Azurite processes this stack runs (one or two)."""
        found = {a.process.pid for a in (self.azurite, self.partner_azurite) if a is not None and a.process}
        return sorted(found)

    # -- settings files --------------------------------------------------------------------------
    def write_settings(self, local_settings: Path | None = None) -> Path:
        """Write `settings.env` (KEY=value) in the workdir and `local.settings.json` for `func start`."""
        if not self.settings:
            raise RuntimeError("the stack is not started")
        env_file = self.workdir / "settings.env"
        lines = "".join(f"{key}={value}\n" for key, value in self.settings.items())
        _write_private(env_file, lines)
        values: dict[str, Any] = dict(self.settings)
        values |= {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "AzureWebJobsStorage": self.settings["EXPORT_STORAGE"],
            "BLOB_TRIGGER_SOURCE": "LogsAndContainerScan",
            "SYNC_SCHEDULE": "0 */5 * * * *",
        }
        target = local_settings or REPO / "local.settings.json"
        _write_private(target, json.dumps({"IsEncrypted": False, "Values": values}, indent=2) + "\n")
        return env_file


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 600: the files hold connection strings and the MSI secret."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


# -- command line ------------------------------------------------------------------------------------
def _pid_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line contains `marker` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return marker in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    pids = _read_pids(path)
    return pids[0] if pids else None


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _serve(workdir: Path, local_settings: Path | None, audience_mode: str = "scope",
           persistence: str = "disk") -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "stack.pid").write_text(f"{os.getpid()}\n")
    stack = Stack(workdir, audience_mode=audience_mode, layout="split", persistence=persistence)
    try:
        stack.start()
        (workdir / "azurite.pid").write_text("".join(f"{pid}\n" for pid in stack.azurite_pids()))
        env_file = stack.write_settings(local_settings)
        where = f"on disk in {workdir / 'azurite'}" if persistence == "disk" else "in memory"
        print(f"local stack ready (data {where}): settings in {env_file}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        stack.stop()
        for name in ("settings.env", "stack.pid", "azurite.pid"):
            (workdir / name).unlink(missing_ok=True)
    return 0


def _start(workdir: Path, local_settings: Path | None, audience_mode: str = "scope",
           persistence: str = "disk") -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    pid = _read_pid(workdir / "stack.pid")
    if pid is not None and _pid_alive(pid, "sim.stack"):
        # `make stack` twice is a no-op: the stack keeps its ports, data and settings files.
        ready = (workdir / "settings.env").exists()
        print(f"the local stack is already running (pid {pid}"
              f"{'; settings in ' + str(workdir / 'settings.env') if ready else ', still starting'}); nothing to "
              "do. To start it with other options, stop it first: `make stack-stop`")
        return 0
    (workdir / "settings.env").unlink(missing_ok=True)
    command = [sys.executable, "-m", "sim.stack", "serve", "--workdir", str(workdir), "--audience-mode", audience_mode]
    if persistence == "memory":
        command.append("--in-memory")
    if local_settings is not None:
        command += ["--local-settings", str(local_settings)]
    with open(workdir / "stack.log", "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if (workdir / "settings.env").exists():
            where = f"on disk in {workdir / 'azurite'}" if persistence == "disk" else "in memory"
            print(f"local stack running (pid {process.pid}, audience mode {audience_mode}, data {where}); settings in "
                  f"{workdir / 'settings.env'} and {local_settings or REPO / 'local.settings.json'}")
            return 0
        if process.poll() is not None:
            print(f"the local stack failed to start; see {workdir / 'stack.log'}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    _stop(workdir)
    log = workdir / "stack.log"
    print(f"the local stack was not ready in {READY_TIMEOUT:.0f} s; see {log}", file=sys.stderr)
    return 1


def _stop(workdir: Path) -> int:
    pid = _read_pid(workdir / "stack.pid")
    azurite_pids = _read_pids(workdir / "azurite.pid")
    if pid is None or not _pid_alive(pid, "sim.stack"):
        print("the local stack is not running")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _pid_alive(pid, "sim.stack") and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid, "sim.stack"):
            os.kill(pid, signal.SIGKILL)
        print(f"local stack stopped (pid {pid})")
    # Azurite runs in its own session: if the stack process could not stop it, stop it here.
    for azurite_pid in azurite_pids:
        if _pid_alive(azurite_pid, "azurite"):
            os.kill(azurite_pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(azurite_pid, "azurite") and time.monotonic() < deadline:
                time.sleep(0.1)
    for name in ("settings.env", "stack.pid", "azurite.pid"):
        (workdir / name).unlink(missing_ok=True)
    return 0


def _clean(workdir: Path, local_settings: Path | None) -> int:
    """`make clean`: stop the stack if it runs (its pid files are in the workdir, so never delete them first),
    then delete the workdir and the `local.settings.json` the stack wrote (its account key and identity header
    belong to a stack that is gone). A `local.settings.json` the stack did not write stays."""
    pid = _read_pid(workdir / "stack.pid")
    if pid is not None and _pid_alive(pid, "sim.stack"):
        _stop(workdir)
    target = local_settings or REPO / "local.settings.json"
    if _written_by_stack(target):
        target.unlink()
        print(f"removed {target} (written by the local stack)")
    if workdir.exists():
        shutil.rmtree(workdir)
        print(f"removed {workdir}")
    return 0


def _written_by_stack(path: Path) -> bool:
    try:
        values = json.loads(path.read_text()).get("Values", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(values, dict) and STACK_MARKER in values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.stack", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "clean", "serve"])
    parser.add_argument("--workdir", type=Path, default=Path(".local"))
    parser.add_argument(
        "--local-settings", type=Path, default=None, help="local.settings.json to write (default: repo root)"
    )
    parser.add_argument(
        "--audience-mode", default=None, metavar="MODE",
        help="scope (default): Bane NOR binds the token's audience to the scope; resource: the audience is the "
        "grant's resource (MASKINPORTEN_RESOURCE). Default: the STACK_AUDIENCE_MODE environment variable, else scope",
    )
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="keep Azurite's data in memory (gone at stop; 1 GiB cap) instead of on disk under <workdir>/azurite",
    )
    args = parser.parse_args(argv)
    persistence = "memory" if args.in_memory else "disk"
    audience_mode = args.audience_mode or os.environ.get("STACK_AUDIENCE_MODE", "").strip() or "scope"
    if audience_mode not in AUDIENCE_MODES:
        print(f"STACK_AUDIENCE_MODE is {audience_mode!r}; use scope (the audience bound to the scope, the default) "
              "or resource (the audience taken from MASKINPORTEN_RESOURCE), e.g. make stack "
              "STACK_AUDIENCE_MODE=resource", file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    local_settings = args.local_settings.resolve() if args.local_settings else None
    if args.command == "serve":
        return _serve(workdir, local_settings, audience_mode, persistence)
    if args.command == "start":
        return _start(workdir, local_settings, audience_mode, persistence)
    if args.command == "clean":
        return _clean(workdir, local_settings)
    return _stop(workdir)


if __name__ == "__main__":
    sys.exit(main())
