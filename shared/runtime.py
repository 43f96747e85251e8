"""Wiring: builds the relay's collaborators from the settings, once per process, lazily.

The function app and the command line both call `get_runtime()`; nothing heavy is imported or connected
before the first delivery, so a bad setting never hides the functions from the host (it surfaces, clearly,
when a function runs and in `doctor`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from . import invocation
from .config import Settings


def quiet_sdk_logs() -> None:
    """The Azure SDKs log every request at INFO; keep them at WARNING (host.json cannot filter Python loggers)."""
    import logging

    for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity", "msal", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Runtime:
    """Every long-lived client of the relay, built on first use from one `Settings`."""

    def __init__(self, settings: Settings, *, partner_credential: Any = None,
                 clock: Callable[[], float] = time.time, interactive: bool = False) -> None:
        self.settings = settings
        self.clock = clock
        # The command line: a person waits, so its first request to the partner's storage (`exports_probe`) and its
        # connections to the gateway get shorter bounds (`storage.interactive_storage_options`): a dead host is
        # reported in about 10 s. The work itself (listings of a large container, ledger writes) keeps the
        # functions' bounds, so a storage account that answers slowly is not called broken.
        self.interactive = interactive
        quiet_sdk_logs()
        from .memory import bound_large_buffers

        bound_large_buffers()  # a copy's blocks go back to the system when freed, on every thread
        self._partner_credential = partner_credential

    # -- parts supplied from outside ----------------------------------------------------------------------
    @classmethod
    def part_names(cls) -> frozenset[str]:
        """The parts a runtime builds on first use (its cached properties): `skyporten`, `destination`, ..."""
        return frozenset(name for name, value in vars(cls).items() if isinstance(value, cached_property))

    def override(self, **parts: Any) -> Runtime:
        """Use each given part (`rt.override(banenor_service=client)`) in place of the one this runtime would
        build: a client with shorter retries or timeouts, a fake. Parts built later from it use it. Returns the
        runtime. Raises ValueError for a name that is no part, or a part already built (what was built from it
        would keep the old one)."""
        known = self.part_names()
        for name, value in parts.items():
            if name not in known:
                raise ValueError(f"{name!r} is not a part of the runtime (one of: {', '.join(sorted(known))})")
            if self.built(name):
                raise ValueError(f"the runtime's {name!r} is built already: override it before its first use")
            self.__dict__[name] = value
        return self

    def built(self, name: str) -> bool:
        """Whether part `name` was built (or supplied) already, e.g. to close only what exists."""
        return name in self.__dict__

    # -- identity and tokens ------------------------------------------------------------------------------
    @cached_property
    def partner_credential(self) -> Any:
        if self._partner_credential is not None:
            return self._partner_credential
        from .storage import partner_credential

        return partner_credential(self.settings.http.ca_bundle)

    @cached_property
    def signing_keys(self) -> Any:
        from .signing import provider_from_settings

        key = self.settings.signing_key
        credential = None if key.source == "file" else self.partner_credential
        return provider_from_settings(key, self.settings.http.ca_bundle, credential, self.clock)

    @cached_property
    def skyporten(self) -> Any:
        from .skyporten_token import client_from_settings

        return client_from_settings(self.settings.skyporten, self.signing_keys, clock=self.clock,
                                    verify=self.settings.http.verify)

    @cached_property
    def banenor_credential(self) -> Any:
        from .banenor_credential import BaneNorCredential

        banenor = self.settings.banenor
        return BaneNorCredential(
            banenor.tenant_id, banenor.client_id, self.skyporten, authority=banenor.authority_host,
            federation_retry_seconds=banenor.federation_retry_seconds, clock=self.clock,
            ca_bundle=self.settings.http.ca_bundle,
        )

    # -- storage ------------------------------------------------------------------------------------------
    @cached_property
    def banenor_service(self) -> Any:
        from .storage import banenor_service_client, connection_pool_size, interactive_storage_options

        # The command line: the same connect timeout and retries as for the partner's storage, but the functions'
        # read timeout (an upload's answer through the gateway may take a while after its body is sent).
        overrides = {k: v for k, v in interactive_storage_options().items() if k != "read_timeout"} \
            if self.interactive else {}
        s = self.settings
        return banenor_service_client(s.banenor, s.http, self.banenor_credential,
                                      single_put_limit=s.relay.single_put_limit, block_size=s.relay.block_size,
                                      pool_size=connection_pool_size(s.relay), **overrides)

    @cached_property
    def destination(self) -> Any:
        return self.banenor_service.get_container_client(self.settings.banenor.container)

    @cached_property
    def export_service(self) -> Any:
        from .storage import connection_pool_size, partner_service_client

        s = self.settings
        return partner_service_client(s.exports, s.http, self.partner_credential,
                                      pool_size=connection_pool_size(s.relay))

    @cached_property
    def exports(self) -> Any:
        return self.export_service.get_container_client(self.settings.exports.container)

    @cached_property
    def partner_probe(self) -> Any:
        """The partner's storage through a client with the command line's short bounds: the one request that tells
        whether it answers at all, before the work (`cli.check_partner`, `doctor`)."""
        from .storage import partner_service_client

        return partner_service_client(self.settings.exports, self.settings.http, self.partner_credential,
                                      interactive=True)

    @cached_property
    def exports_probe(self) -> Any:
        return self.partner_probe.get_container_client(self.settings.exports.container)

    @cached_property
    def archive(self) -> Any:
        return self.export_service.get_container_client(self.settings.exports.archive_container)

    @cached_property
    def ledger(self) -> Any:
        from .ledger import Ledger

        ledger = Ledger(self.export_service.get_container_client(self.settings.exports.ledger_container),
                        clock=self.clock)
        ledger.ensure()
        return ledger

    @cached_property
    def copier(self) -> Any:
        from .config import MAX_REQUEST_BYTES
        from .copier import Copier, CopyOptions

        relay = self.settings.relay
        options = CopyOptions(block_size=relay.block_size, parallelism=relay.parallelism,
                              single_put_limit=relay.single_put_limit, mode=relay.copy_mode,
                              max_request_bytes=MAX_REQUEST_BYTES)
        return Copier(options, source_sas=self.source_sas if relay.copy_mode != "stream" else None,
                      pool_initializer=invocation.pool_initializer)

    @cached_property
    def source_sas(self) -> Any:
        """Signs a read-only SAS URL for a source export (server-side copy; `storage.SourceSas`)."""
        from .storage import SourceSas

        return SourceSas(lambda: self.export_service, self.clock)

    @cached_property
    def relay(self) -> Any:
        from .relay import Relay

        return Relay(self.settings, exports=self.exports, destination=self.destination, ledger=self.ledger,
                     copier=self.copier, archive=self.archive, credential=self.banenor_credential,
                     source_url=self.source_sas, clock=self.clock,
                     pool_initializer=invocation.pool_initializer)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(env: Mapping[str, str] | None = None, *, settings: Settings | None = None,
                interactive: bool = False) -> Runtime:
    """The process-wide runtime (built once; raises ConfigError listing every bad setting). `interactive`: the
    command line's shorter limits on the partner's storage (`storage.interactive_storage_options`)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(settings or Settings.load(env), interactive=interactive)
        return _runtime


def reset_runtime() -> None:
    global _runtime
    with _runtime_lock:
        _runtime = None
