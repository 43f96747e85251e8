"""Reading one app setting: the kinds of value (text, mode, whole number, size, URL, resource URI, connection
string, a Bane NOR environment's preset), each checked as it is read. A `Reader` collects every problem and where
each value came from; `settings_table` says which settings there are and reads them with it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .settings_sections import ENVIRONMENTS, MIB, BanenorEnvironment, Environment

_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:.")  # RFC 3986 section 3.1: scheme ":" and more

Read = Callable[["Reader", str], Any]  # (reader, setting name) -> value
Step = Callable[["Reader", str, Any], Any]  # (reader, setting name, value) -> value, after a check or a change


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_Mode = TypeVar("_Mode", bound=StrEnum)


class Reader:
    """Collects problems while reading so that all of them are reported in one error, where each value came from
    (`origins`), and the values read so far (`values`) for the checks that involve several settings."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[tuple[str, str]] = []
        self.origins: dict[str, str] = {}
        self.values: dict[str, Any] = {}  # by setting name, as read so far
        # The Bane NOR environment's preset (BANENOR_ENVIRONMENT, read first); test while that is missing or wrong.
        self.preset: Environment = ENVIRONMENTS[BanenorEnvironment.TEST]

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def problem(self, name: str, text: str) -> None:
        self.problems.append((name, text))

    def text(self, name: str, default: str | None = None, required: bool = False, hint: str = "") -> str | None:
        value = self.raw(name)
        self.origins[name.lower()] = "set" if value is not None else "default"
        if value is None and required:
            self.problem(name, f"is required. {hint}".strip())
        return value if value is not None else default

    def choice(self, name: str, default: _Mode) -> _Mode:
        """One of the values of `default`'s enum, parsed once here."""
        modes = type(default)
        value = self.text(name, default) or default
        if value not in tuple(modes):
            self.problem(name, f"is {value!r}; use one of {', '.join(modes)}.")
            return default
        return modes(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problem(name, f"is {value!r}; use a whole number from {low} to {high}.")
            return default
        if not low <= number <= high:
            self.problem(name, f"is {number}; use a whole number from {low} to {high}.")
            return default
        return number

    def size(self, name: str, default: int, low: int, high: int) -> int:
        """A byte size given as bytes or with a MiB suffix (`8MiB`)."""
        value = self.text(name)
        if value is None:
            return default
        m = re.fullmatch(r"(\d+)\s*(MiB|KiB|B)?", value)
        if not m:
            self.problem(name, f"is {value!r}; use bytes or a size like 8MiB.")
            return default
        number = int(m.group(1)) * {"MiB": MIB, "KiB": 1024, "B": 1, None: 1}[m.group(2)]
        if not low <= number <= high:
            self.problem(name, f"is {number} bytes; use {low} to {high} bytes (the gateway takes 100 MB per request).")
            return default
        return number

    def url(self, name: str, value: str | None) -> str | None:
        """HTTPS everywhere; plain HTTP only for loopback hosts (the local stack)."""
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            self.problem(name, f"is {value!r}, not an absolute URL; use https://host/...")
        elif parts.scheme == "http" and not is_loopback(parts.hostname):
            self.problem(name, f"uses plain http to {parts.hostname}; only https is allowed outside loopback.")
        return value

    def resource(self, name: str, value: str | None) -> str | None:
        """An absolute URI as RFC 8707 section 2 defines a resource indicator: a scheme, no fragment.

        Not only https URLs: `api://AzureADTokenExchange` (Entra's default federated-credential audience) is one.
        """
        if value is None:
            return None
        parts = urlsplit(value)
        if (not _URI_SCHEME.match(value) or parts.fragment or "#" in value or any(c.isspace() for c in value)
                or (parts.scheme in ("http", "https") and not parts.netloc)):
            self.problem(name, f"is {value!r}, not an absolute URI (RFC 8707: a scheme, no fragment). Use the "
                         "value Bane NOR gave you, e.g. api://AzureADTokenExchange or https://skyporten.<domain>; "
                         "leave it unset when Bane NOR gave none.")
        return value

    def connection_string(self, name: str, value: str | None) -> str | None:
        """A storage connection string: its blob endpoint follows the https-or-loopback rule of `url`."""
        if value is None:
            return None
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (part.partition("=") for part in value.split(";") if part.strip())}
        if fields.get("usedevelopmentstorage", "").lower() == "true":
            return value  # Azurite on http://127.0.0.1:10000
        endpoint = fields.get("blobendpoint")
        if endpoint:
            parts = urlsplit(endpoint)
            scheme, host = parts.scheme.lower(), parts.hostname
        else:
            scheme = fields.get("defaultendpointsprotocol", "https").lower()
            host = f"{fields.get('accountname', '<account>')}.blob.{fields.get('endpointsuffix', 'core.windows.net')}"
        if scheme == "http" and not is_loopback(host):
            self.problem(name, f"uses plain http to {host}; only https is allowed outside loopback: set "
                         "DefaultEndpointsProtocol=https (and an https BlobEndpoint), or use "
                         f"{name}__blobServiceUri=https://<account>.blob.core.windows.net.")
        return value

    def connection_string_format(self, name: str, value: str) -> None:
        """`Name=value` parts separated by `;` (as the storage SDK parses them: an empty part is malformed), with a
        blob endpoint or an account name. The value itself is never repeated: it holds a key."""
        parts = value.strip().rstrip(";").split(";")
        names = {p.split("=", 1)[0].strip().lower() for p in parts if "=" in p}
        if any("=" not in p for p in parts):
            self.problem(name, "is not a storage connection string: every part is Name=value, separated by one ';' "
                         "(an empty or broken part is refused). Copy it whole (portal: Storage account > Access "
                         "keys), or use EXPORT_STORAGE__blobServiceUri in Azure.")
        elif not names & {"blobendpoint", "accountname", "usedevelopmentstorage"}:
            self.problem(name, "is not a storage connection string: it has neither AccountName nor BlobEndpoint.")

    def preset_value(self, name: str, value: str) -> str:
        """The setting, or the preset's `value` when it is not set."""
        override = self.raw(name)
        self.origins[name.lower()] = "set" if override else f"preset {self.preset.name}"
        return override or value


# -- how a setting is read: the kinds of value ------------------------------------------------------------------

def text(default: str | None = None, required: bool = False, hint: str = "") -> Read:
    return lambda r, name: r.text(name, default, required, hint)


def choice(default: StrEnum) -> Read:
    return lambda r, name: r.choice(name, default)


def integer(default: int, low: int, high: int) -> Read:
    return lambda r, name: r.integer(name, default, low, high)


def size(default: int, low: int, high: int) -> Read:
    return lambda r, name: r.size(name, default, low, high)


def preset(attribute: str) -> Read:
    """The Bane NOR environment's value (an `Environment` attribute) unless the setting overrides it."""
    return lambda r, name: r.preset_value(name, getattr(r.preset, attribute))
