"""The settings: read every app setting once, validate, explain; typed per concern.

`Settings.load()` reads the environment (Azure app settings, `local.settings.json` under `func start`, or
`.local/settings.env` from the local stack), applies the Bane NOR environment preset, parses each mode into its
enum and reports *all* problems at once as a `ConfigError`, each naming the setting and the fix.

The parts, each importable from here too: `settings_sections` (the modes, Bane NOR's environments and the typed
sections), `settings_table` (every setting in one table: how it is read and checked, the known names, the typo
check), `settings_reader` (the kinds of value) and `env_file` (the command line's settings files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, scrub
from .naming import FolderMode, NameMode
from .settings_sections import (
    DEFAULT_API_VERSION,
    DEFAULT_AUTHORITY,
    DEFAULT_SCOPE,
    DEFAULT_TRANSFER_SIZE,
    ENVIRONMENTS,
    MAX_REQUEST_BYTES,
    MIB,
    AfterDelivery,
    BanenorEnvironment,
    BanenorSettings,
    BlobTriggerSource,
    CopyMode,
    Environment,
    ExportSettings,
    HttpSettings,
    RelaySettings,
    ResourceForm,
    SigningKeySettings,
    SigningKeySource,
    SkyportenSettings,
)

if TYPE_CHECKING:  # at run time `__getattr__` below imports these on first use
    from .env_file import ENV_FILE_FORMATS, read_env_file
    from .settings_reader import is_loopback
    from .settings_table import HTTP_ENV_VARIABLES, SETTING_NAMES, misspelt_settings

__all__ = [
    "DEFAULT_API_VERSION", "DEFAULT_AUTHORITY", "DEFAULT_SCOPE", "DEFAULT_TRANSFER_SIZE", "ENVIRONMENTS",
    "ENV_FILE_FORMATS", "HTTP_ENV_VARIABLES", "MAX_REQUEST_BYTES", "MIB", "SETTING_NAMES", "AfterDelivery",
    "BanenorEnvironment", "BanenorSettings", "BlobTriggerSource", "CopyMode", "Environment", "ExportSettings",
    "FolderMode", "HttpSettings", "NameMode", "RelaySettings", "ResourceForm", "Settings", "SigningKeySettings",
    "SigningKeySource", "SkyportenSettings", "blob_trigger_source", "is_loopback", "load_settings",
    "misspelt_settings", "read_env_file",
]


def __getattr__(name: str) -> Any:
    """The table, the reader and the settings files, imported on first use: function_app.py imports this module
    when the host indexes the functions, for `blob_trigger_source` only, and that import stays cheap."""
    import importlib

    homes = {"ENV_FILE_FORMATS": "env_file", "read_env_file": "env_file", "HTTP_ENV_VARIABLES": "settings_table",
             "SETTING_NAMES": "settings_table", "misspelt_settings": "settings_table",
             "is_loopback": "settings_reader"}
    if name not in homes:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{homes[name]}", __package__), name)


@dataclass(frozen=True)
class Settings:
    """Every setting the relay uses, validated, in one section per concern (`settings.skyporten`, ...)."""

    signing_key: SigningKeySettings
    skyporten: SkyportenSettings
    banenor: BanenorSettings
    exports: ExportSettings
    relay: RelaySettings
    http: HttpSettings
    # Which settings each value came from (preset, default or set), for `doctor`.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate; raises `ConfigError` listing every problem."""
        from .settings_table import read_sections

        sections, origins = read_sections(os.environ if env is None else env)
        return cls(**sections, origins=origins)

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value, origin) rows for display, by app setting name in the table's order; values here are
        never secret."""
        from .settings_table import SETTINGS

        rows = []
        for setting in SETTINGS:
            if setting.field is None:
                continue
            value = getattr(getattr(self, setting.section), setting.attribute)
            if isinstance(value, frozenset):
                value = ",".join(sorted(value))
            # scrub: account keys (any case), SAS signatures and URL query strings, in every value
            rows.append((setting.name, "" if value is None else scrub(str(value)),
                         self.origins.get(setting.name.lower(), "")))
        return rows


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings, with every problem at once: bad values and names that look like ours but are not
    (`misspelt_settings`). Raises ConfigError."""
    from .settings_table import misspelt_settings

    env = os.environ if env is None else env
    typos = misspelt_settings(env)
    try:
        settings = Settings.load(env)
    except ConfigError as exc:
        raise ConfigError(exc.problems + typos) from None
    if typos:
        raise ConfigError(typos)
    return settings


def blob_trigger_source(env: Mapping[str, str] | None = None) -> str:
    """BLOB_TRIGGER_SOURCE, read at indexing time: EventGrid (default; required on Flex Consumption) or
    LogsAndContainerScan (local `func start` with Azurite), as plain text. An unknown value falls back to
    EventGrid."""
    value = (os.environ if env is None else env).get("BLOB_TRIGGER_SOURCE", BlobTriggerSource.EVENT_GRID).strip()
    return value if value in tuple(BlobTriggerSource) else BlobTriggerSource.EVENT_GRID.value
