"""The partner's Maskinporten signing key, as the token client asks for it: `SigningKeyProvider.get()` loads it from
the source the settings name (`provider_from_settings`: Key Vault, shared/key_vault.py, or a file for development,
shared/key_material.py) and caches it for a bounded time, so a rotated secret is picked up without a restart.

The key itself and the JWS it signs are shared/signing_key.py's; their public names are importable from here too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .key_material import jwk_kid, key_from_file, parse_certificate_bundle, parse_private_key
from .key_vault import KeyVaultSource, keyvault_error
from .signing_key import KEY_LIFETIME_DAYS, MIN_RSA_BITS, KeyInfo, SigningKey, b64url, key_expiry, local_signer

if TYPE_CHECKING:
    from .config import SigningKeySettings

__all__ = [
    "KEY_LIFETIME_DAYS", "MIN_RSA_BITS", "KeyInfo", "KeyVaultSource", "SigningKey", "SigningKeyProvider", "b64url",
    "jwk_kid", "key_expiry", "key_from_file", "keyvault_error", "local_signer", "parse_certificate_bundle",
    "parse_private_key", "provider_from_settings",
]

log = logging.getLogger(__name__)


def _iso(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SigningKeyProvider:
    """Caches the loaded key for `ttl` seconds (so rotation is picked up); one load at a time."""

    def __init__(self, load: Callable[[], SigningKey], ttl: float = 300, clock: Callable[[], float] = time.time):
        self._load = load
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._key: SigningKey | None = None
        self._loaded_at = 0.0

    def get(self) -> SigningKey:
        with self._lock:
            now = self._clock()
            if self._key is None or now - self._loaded_at >= self._ttl:
                self._key = self._load()
                self._loaded_at = now
                info = self._key.info
                expires, basis = key_expiry(info)
                # key=value pairs: the key-expiry alert reads days_left (infra/queries/key-expiry.kql).
                log.info("signing key loaded: source=%s name=%s kid=%s created=%s expires=%s days_left=%s "
                         "expiry_from=%s", info.source, info.name, self._key.kid, _iso(info.created_on),
                         _iso(expires), "-" if expires is None else int((expires.timestamp() - now) // 86400), basis)
            return self._key

    def invalidate(self) -> None:
        with self._lock:
            self._key = None


def provider_from_settings(key: SigningKeySettings, ca_bundle: str | None = None, credential: Any = None,
                           clock: Callable[[], float] = time.time) -> SigningKeyProvider:
    """The key provider the signing key's settings ask for; `credential` reads Key Vault (default: the app's
    identity), trusting `ca_bundle` (REQUESTS_CA_BUNDLE)."""
    if key.source == "file":
        path, kid = key.file, key.key_id
        assert path is not None  # SIGNING_KEY_SOURCE=file requires SIGNING_KEY_FILE (config)
        return SigningKeyProvider(lambda: key_from_file(path, kid), key.cache_seconds, clock)
    if credential is None:
        from .storage import partner_credential

        credential = partner_credential(ca_bundle)
    assert key.vault_url is not None and key.name is not None  # required for a Key Vault source (config)
    source = KeyVaultSource(key.vault_url, key.name, key.source, key.key_id, credential, ca_bundle, clock)
    return SigningKeyProvider(source.load, key.cache_seconds, clock)
