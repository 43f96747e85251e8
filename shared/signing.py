"""The partner's Maskinporten signing key: loaded from Key Vault (secret, certificate or key) or a file.

`SigningKeyProvider.get()` returns a `SigningKey` that encodes RS256 JWTs (PyJWT for a key held here); the key is
cached for a bounded time so a rotated secret is picked up without a restart. With `keyvault-key` the private key
never leaves the vault: Key Vault signs the digest of a signing input built here. Errors name the cause and the
fix; no key material ever appears in them or in a repr.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from jwt.algorithms import RSAAlgorithm

from .errors import SigningKeyError

if TYPE_CHECKING:
    from .config import SigningKeySettings

log = logging.getLogger(__name__)

MIN_RSA_BITS = 2048  # Maskinporten requires RSA keys of at least 2048 bits
KEY_LIFETIME_DAYS = 365  # Maskinporten self-service keys expire a year after upload (MP-121)
_SIGNING_HASH = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class KeyInfo:
    """Non-secret facts about the loaded key, for `doctor` and logs."""

    source: str
    name: str
    kid: str | None
    bits: int
    created_on: dt.datetime | None = None
    expires_on: dt.datetime | None = None
    certificate_subject: str | None = None
    certificate_not_before: dt.datetime | None = None
    certificate_not_after: dt.datetime | None = None
    version: str | None = None


def key_expiry(info: KeyInfo) -> tuple[dt.datetime | None, str]:
    """When the key stops working, and what says so: the certificate's notAfter, the vault object's expiry, or
    (for a registered key) a year after it was stored, the date to have rotated by (docs/key-rotation.md)."""
    if info.certificate_not_after is not None:
        return info.certificate_not_after, "certificate"
    if info.expires_on is not None:
        return info.expires_on, "keyvault"
    if info.created_on is not None and info.source != "keyvault-certificate":
        return info.created_on + dt.timedelta(days=KEY_LIFETIME_DAYS), "registration"
    return None, "-"


class SigningKey:
    """Signs JWTs for the grant. Header fields: `kid`, or `x5c` for an enterprise certificate.

    `local`: the private key, when it is held in this process (PyJWT encodes with it); otherwise `sign` signs
    elsewhere (Key Vault) and the signing input is built here.
    """

    algorithm = "RS256"

    def __init__(
        self,
        info: KeyInfo,
        sign: Callable[[str, bytes], bytes],
        x5c: list[str] | None = None,
        local: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.info = info
        self._sign = sign
        self.x5c = x5c
        self._local = local

    @classmethod
    def held_here(cls, info: KeyInfo, key: rsa.RSAPrivateKey, x5c: list[str] | None = None) -> SigningKey:
        return cls(info, local_signer(key), x5c=x5c, local=key)

    @property
    def kid(self) -> str | None:
        return self.info.kid

    def header(self) -> dict[str, Any]:
        # Maskinporten: `kid` of a key registered on the client, or `x5c` as a JSON array of base64 DER
        # (a single string gives MP-123). Never both: the certificate identifies itself.
        header: dict[str, Any] = {"alg": self.algorithm, "typ": "JWT"}
        if self.x5c:
            header["x5c"] = list(self.x5c)
        elif self.kid:
            header["kid"] = self.kid
        return header

    def sign(self, signing_input: bytes) -> bytes:
        return self._sign(self.algorithm, signing_input)

    def encode(self, claims: dict[str, Any]) -> str:
        """The signed JWT (JWS compact serialisation, RFC 7515) of `claims` with this key's header."""
        if self._local is not None:
            extra = {k: v for k, v in self.header().items() if k not in ("alg", "typ")}
            return jwt.encode(claims, self._local, algorithm=self.algorithm, headers=extra)
        # Signed inside Key Vault: PyJWT needs the private key, so the signing input is built here.
        signing_input = (b64url(json.dumps(self.header(), separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self.sign(signing_input.encode("ascii")))

    def __repr__(self) -> str:
        return f"SigningKey(source={self.info.source!r}, name={self.info.name!r}, kid={self.kid!r})"


# -- parsing key material -------------------------------------------------------------------------------

def _check_rsa(key: Any, what: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError(
            f"{what} is a {type(key).__name__.lstrip('_')}, not an RSA private key.",
            hint="Maskinporten signs with RS256: generate an RSA key of 2048 bits or more.",
        )
    if key.key_size < MIN_RSA_BITS:
        raise SigningKeyError(
            f"{what} is an RSA key of {key.key_size} bits; Maskinporten needs at least {MIN_RSA_BITS}.",
            hint="Generate a new RSA-2048 (or larger) key, register its public JWK on the integration and "
            "store it in place of this one.",
        )
    return key


def local_signer(key: rsa.RSAPrivateKey) -> Callable[[str, bytes], bytes]:
    def sign(alg: str, data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), _SIGNING_HASH[alg]())  # type: ignore[abstract]

    return sign


def parse_private_key(material: str | bytes, what: str) -> rsa.RSAPrivateKey:
    """A PEM (PKCS#8 or PKCS#1) or a private JWK (JSON with `d`)."""
    text = material.decode("utf-8", "replace") if isinstance(material, bytes) else material
    stripped = text.strip()
    if stripped.startswith("{"):
        return _parse_jwk(stripped, what)
    if "ENCRYPTED PRIVATE KEY" in stripped or "Proc-Type: 4,ENCRYPTED" in stripped:
        raise SigningKeyError(
            f"{what} is an encrypted PEM; the relay cannot ask for a passphrase.",
            hint="Store the key unencrypted in Key Vault (Key Vault encrypts it at rest), e.g. "
            "`openssl pkey -in enc.pem -out key.pem`.",
        )
    if "PRIVATE KEY-----" not in stripped:
        raise SigningKeyError(
            f"{what} is neither a PEM private key nor a private JWK.",
            hint="Store the unencrypted PKCS#8 PEM (a 'PRIVATE KEY' block) or the private JWK JSON.",
        )
    try:
        key = serialization.load_pem_private_key(stripped.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{what} is a malformed PEM private key (truncated or corrupted).",
            hint="Store the whole PEM again, including the BEGIN and END lines.",
        ) from _scrubbed(exc)
    return _check_rsa(key, what)


def _parse_jwk(text: str, what: str) -> rsa.RSAPrivateKey:
    try:
        jwk = json.loads(text)
    except ValueError as exc:
        raise SigningKeyError(f"{what} looks like JSON but does not parse as a JWK.",
                              hint="Store the private JWK JSON as produced by your key tool.") from _scrubbed(exc)
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise SigningKeyError(f"{what} is a JWK of type {jwk.get('kty') if isinstance(jwk, dict) else '?'!r}, "
                              "not RSA.", hint="Maskinporten signs with RS256: use an RSA key.")
    if "d" not in jwk:
        raise SigningKeyError(
            f"{what} is a public JWK (no private part 'd').",
            hint="Store the private JWK in Key Vault; register only the public one in Samarbeidsportalen.",
        )
    crt = ("p", "q", "dp", "dq", "qi")
    if not all(k in jwk for k in crt):  # an incomplete set of CRT values is ignored: p and q are recovered
        jwk = {k: v for k, v in jwk.items() if k not in crt}
    try:  # PyJWT reads the numbers, and recovers p and q when the JWK carries only n, e and d
        key = RSAAlgorithm.from_jwk(jwk)
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{what} is a malformed RSA JWK.",
                              hint="Store the complete private JWK (n, e, d, p, q, dp, dq, qi).") from _scrubbed(exc)
    return _check_rsa(key, what)


def jwk_kid(text: str) -> str | None:
    """The `kid` inside a JWK text, if any (never the key)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("kid") if isinstance(value, dict) else None


def parse_certificate_bundle(
    material: bytes, what: str, now: dt.datetime
) -> tuple[rsa.RSAPrivateKey, list[x509.Certificate]]:
    """A PKCS#12 (as Key Vault stores certificates) or PEM bundle: the private key and the chain, leaf first."""
    key: Any = None
    chain: list[x509.Certificate] = []
    if b"-----BEGIN" in material:
        try:
            chain = x509.load_pem_x509_certificates(material)
            key = serialization.load_pem_private_key(
                b"".join(block for block in _pem_blocks(material) if b"PRIVATE KEY" in block), password=None
            )
        except ValueError as exc:
            raise SigningKeyError(f"{what} is a PEM bundle without a usable private key and certificate.",
                                  hint="Import the certificate with its private key (PFX) into Key Vault.") \
                from _scrubbed(exc)
    else:
        try:
            key, leaf, extra = pkcs12.load_key_and_certificates(material, None)
        except ValueError as exc:
            raise SigningKeyError(
                f"{what} is not a readable PKCS#12 (PFX) without password.",
                hint="Import the enterprise certificate with `az keyvault certificate import` (PFX with its key).",
            ) from _scrubbed(exc)
        chain = ([leaf] if leaf is not None else []) + list(extra)
        if not chain:
            raise SigningKeyError(f"{what} holds no certificate.", hint="Import the PFX with its certificate.")
    if key is None:
        raise SigningKeyError(
            f"{what} holds a certificate without its private key.",
            hint="Import the PFX that contains the private key, and mark the key exportable.",
        )
    key = _check_rsa(key, what)
    leaf = _leaf_for(key, chain, what)
    if now < leaf.not_valid_before_utc:
        raise SigningKeyError(
            f"{what}: the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC.",
            hint="Check the clock, or wait until the certificate becomes valid.",
        )
    if now > leaf.not_valid_after_utc:
        raise SigningKeyError(
            f"{what}: the certificate expired {leaf.not_valid_after_utc:%Y-%m-%d} (Maskinporten gives MP-120).",
            hint="Order a new enterprise certificate and import it into Key Vault under the same name.",
        )
    ordered = [leaf, *[c for c in chain if c is not leaf]]
    return key, ordered


def _pem_blocks(material: bytes) -> list[bytes]:
    blocks, current = [], []
    for line in material.splitlines(keepends=True):
        current.append(line)
        if line.startswith(b"-----END"):
            blocks.append(b"".join(current))
            current = []
    return blocks


def _leaf_for(key: rsa.RSAPrivateKey, chain: list[x509.Certificate], what: str) -> x509.Certificate:
    wanted = key.public_key().public_numbers()
    for cert in chain:
        public = cert.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == wanted:
            return cert
    raise SigningKeyError(f"{what}: no certificate in the bundle matches the private key.",
                          hint="Import the PFX exported together with its own private key.")


class _ScrubbedError(Exception):
    """Stands in for a parser exception whose text might quote key material."""


def _scrubbed(exc: Exception) -> _ScrubbedError:
    return _ScrubbedError(type(exc).__name__)


# -- sources ----------------------------------------------------------------------------------------------

def _iso(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def key_from_file(path: str, kid: str | None) -> SigningKey:
    what = f"SIGNING_KEY_FILE {path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SigningKeyError(f"{what} cannot be read ({exc.strerror}).",
                              hint="Point SIGNING_KEY_FILE at the private key file.", stage="access") from None
    key = parse_private_key(text, what)
    kid = kid or jwk_kid(text)
    return SigningKey.held_here(KeyInfo("file", path, kid, key.key_size), key)


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
