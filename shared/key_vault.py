"""The signing key in the partner's Key Vault, read with the function app's own identity: a secret (PEM or JWK), a
certificate (its PFX, sent as `x5c`), or a Key Vault key that signs in the vault (the private key never leaves it).
`keyvault_error` turns what the vault answers into one `SigningKeyError` with the fix (the role to grant, the name
to check), never with a secret in it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from .errors import SigningKeyError
from .key_material import jwk_kid, parse_certificate_bundle, parse_private_key
from .signing_key import MIN_RSA_BITS, KeyInfo, SigningKey


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def keyvault_error(exc: Exception, *, vault_url: str, kind: str, name: str, role: str) -> SigningKeyError:
    """Translate an azure-core/Key Vault error into one clear message (no secret in it)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    def access(message: str, hint: str, transient: bool = False) -> SigningKeyError:
        return SigningKeyError(message, hint=hint, transient=transient, stage="access")

    status = getattr(exc, "status_code", None)
    if isinstance(exc, ResourceNotFoundError):
        return access(f"Key Vault {vault_url} has no {kind} named {name!r}.",
                      f"Check SIGNING_KEY_NAME, or store the key as a {kind} in the vault (docs/deploy.md).")
    if isinstance(exc, ClientAuthenticationError) and status is None:
        return access(f"The function app's managed identity could not get a token for Key Vault {vault_url}.",
                      "Turn on the function app's managed identity (Identity blade), or run `az login` locally.",
                      transient=True)
    if isinstance(exc, HttpResponseError) and status == 403:
        return access(f"Access denied reading {kind} {name!r} from Key Vault {vault_url}.",
                      f"Grant the function app's managed identity the role '{role}' on the vault "
                      "(Azure portal > Key Vault > Access control (IAM) > Add role assignment).")
    if isinstance(exc, HttpResponseError) and status == 401:
        return access(f"Key Vault {vault_url} refused the managed identity's token (401).",
                      "Check that KEY_VAULT_URL is the vault in your own tenant.")
    if isinstance(exc, ServiceRequestError):
        return access(f"Key Vault {vault_url} is unreachable ({type(exc).__name__}).",
                      "Check KEY_VAULT_URL and the vault's network rules / private endpoint.", transient=True)
    return access(f"Key Vault {vault_url} failed reading {kind} {name!r} (HTTP {status or '?'}, {type(exc).__name__}).",
                  "Retry later; if it persists, check the vault's health in the Azure portal.",
                  transient=status is None or status >= 500 or status == 429)


_KV_CLIENT_KWARGS = {"verify_challenge_resource": True, "retry_total": 2}


@dataclass
class KeyVaultSource:
    """Reads the signing key from Key Vault with the function app's own identity."""

    vault_url: str
    name: str
    kind: str  # "keyvault-secret" | "keyvault-certificate" | "keyvault-key"
    kid: str | None
    credential: Any
    ca_bundle: str | None = None
    clock: Callable[[], float] = time.time
    client_kwargs: dict[str, Any] = field(default_factory=dict)

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(_KV_CLIENT_KWARGS)
        from urllib.parse import urlsplit

        from .config import is_loopback

        if is_loopback(urlsplit(self.vault_url).hostname):
            # The local stand-in is not at *.vault.azure.net: the SDK's challenge check would refuse it.
            kwargs["verify_challenge_resource"] = False
        if self.ca_bundle:
            kwargs["connection_verify"] = self.ca_bundle
        kwargs.update(self.client_kwargs)
        return kwargs

    def load(self) -> SigningKey:
        if self.kind == "keyvault-secret":
            return self._from_secret()
        if self.kind == "keyvault-certificate":
            return self._from_certificate()
        return self._from_key()

    def _secret(self, role: str, kind: str) -> Any:
        from azure.keyvault.secrets import SecretClient

        client = SecretClient(self.vault_url, self.credential, **self._kwargs())
        try:
            return client.get_secret(self.name)
        except Exception as exc:
            raise keyvault_error(exc, vault_url=self.vault_url, kind=kind, name=self.name, role=role) from None
        finally:
            client.close()

    def _from_secret(self) -> SigningKey:
        secret = self._secret("Key Vault Secrets User", "secret")
        what = f"Key Vault secret {self.name!r}"
        if not secret.value:
            raise SigningKeyError(f"{what} is empty.", hint="Store the PEM or private JWK as the secret's value.")
        key = parse_private_key(secret.value, what)
        props = secret.properties
        info = KeyInfo(
            "keyvault-secret", self.name, self.kid or jwk_kid(secret.value), key.key_size,
            created_on=_utc(props.created_on), expires_on=_utc(props.expires_on), version=props.version,
        )
        return SigningKey.held_here(info, key)

    def _from_certificate(self) -> SigningKey:
        # Key Vault keeps a certificate's private key in the secret of the same name (PFX or PEM).
        secret = self._secret("Key Vault Certificate User", "certificate")
        what = f"Key Vault certificate {self.name!r}"
        value = secret.value or ""
        material = value.encode() if "-----BEGIN" in value else base64.b64decode(value or b"", validate=False)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        key, chain = parse_certificate_bundle(material, what, now)
        leaf = chain[0]
        x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
        info = KeyInfo(
            "keyvault-certificate", self.name, None, key.key_size,
            created_on=_utc(secret.properties.created_on), expires_on=leaf.not_valid_after_utc,
            certificate_subject=leaf.subject.rfc4514_string(),
            certificate_not_before=leaf.not_valid_before_utc, certificate_not_after=leaf.not_valid_after_utc,
            version=secret.properties.version,
        )
        return SigningKey.held_here(info, key, x5c=x5c)

    def _from_key(self) -> SigningKey:
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

        role = "Key Vault Crypto User"
        client = KeyClient(self.vault_url, self.credential, **self._kwargs())
        try:
            kv_key = client.get_key(self.name)
        except Exception as exc:
            raise keyvault_error(exc, vault_url=self.vault_url, kind="key", name=self.name, role=role) from None
        finally:
            client.close()
        if kv_key.key_type not in ("RSA", "RSA-HSM"):
            raise SigningKeyError(f"Key Vault key {self.name!r} is {kv_key.key_type}, not RSA.",
                                  hint="Create an RSA key (2048 bits or more) for Maskinporten.")
        modulus = getattr(kv_key.key, "n", None)  # JsonWebKey's RSA fields are set from the service's answer
        bits = len(modulus) * 8 if modulus else 0
        if bits < MIN_RSA_BITS:
            raise SigningKeyError(f"Key Vault key {self.name!r} has {bits} bits; Maskinporten needs 2048.",
                                  hint="Create a new RSA-2048 key and register its public JWK.")
        crypto = CryptographyClient(kv_key, self.credential, **self._kwargs())
        algorithms = {"RS256": SignatureAlgorithm.rs256, "RS384": SignatureAlgorithm.rs384,
                      "RS512": SignatureAlgorithm.rs512}
        vault_url, name = self.vault_url, self.name

        def sign(alg: str, data: bytes) -> bytes:
            digest = hashlib.new(alg.replace("RS", "sha"), data).digest()
            try:
                return crypto.sign(algorithms[alg], digest).signature
            except Exception as exc:
                raise keyvault_error(exc, vault_url=vault_url, kind="key", name=name, role=role) from None

        props = kv_key.properties
        info = KeyInfo(
            "keyvault-key", self.name, self.kid, bits, created_on=_utc(props.created_on),
            expires_on=_utc(props.expires_on), version=props.version,
        )
        return SigningKey(info, sign)
