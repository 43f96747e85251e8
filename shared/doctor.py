"""`doctor`: the chain of trust checked link by link, in the order a delivery uses it.

Owns the ordered list of checks (CHECKS: each a link, its exit code 10-18, its probe and the cause-and-fix its
probe raises) and the runner that stops at the first broken link. Prints nothing: shared/cli_links.py prints.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import Settings, load_settings
from .diagnosis import partner_endpoint, partner_storage_failure, transport_cause
from .errors import ConfigError, RelayError, SigningKeyError, first_line, scrub
from .links import iso

KEY_LIFETIME_DAYS = 365  # self-service keys expire a year after upload
KEY_WARN_DAYS = 30
CLOCK_SKEW_ALLOWED = 10  # seconds Skyporten allows between its clock and the grant's iat/exp
SETTINGS_FIX = "set or rename the settings named above (docs/settings.md)"


def fmt_time(epoch: float | None) -> str:
    """ISO 8601 in UTC, to the second: what every command prints, as text and in --json."""
    return iso(float(epoch)) if epoch else "-"


def token_facts(token: Any, now: float, resource: str | None = None) -> dict[str, Any]:
    """What a Skyporten token says (never the token), with the resource the grant sent (None: none)."""
    from .skyporten_token import audience_reading

    claims = token.claims
    consumer = claims.get("consumer") or {}
    return {
        "scope": token.scope,
        "resource_sent": resource,
        "audience": claims.get("aud"),
        "audience_from": audience_reading(resource, claims.get("aud")),
        "subject": claims.get("sub"),
        "issuer": claims.get("iss"),
        "consumer_org": consumer.get("ID") if isinstance(consumer, dict) else None,
        "client_id": claims.get("client_id"),
        "expires_at": fmt_time(token.expires_at),  # ISO 8601 UTC
        "expires_in": int(token.expires_at - now),
    }


@dataclass
class Run:
    """What one doctor run has learnt so far; each probe reads what the links before it found."""

    read_only: bool
    settings: Settings | None = None
    runtime: Any = None
    key: Any = None
    key_error: SigningKeyError | None = None
    sky: dict[str, Any] = field(default_factory=dict)

    @property
    def s(self) -> Settings:
        """The settings, for the probes after the settings link (which stops the run when they cannot be read)."""
        assert self.settings is not None, "the settings link runs first"
        return self.settings


Probe = Callable[[Run], list[str] | None]


@dataclass(frozen=True)
class Check:
    """One link: its name, its title (`{mode}` is read or write), its probe and its exit code. The probe returns
    notes (one starting with WARNING makes the check a warning) or raises RelayError with the cause and its fix."""

    link: str
    title: str
    probe: Probe
    exit_code: int

    def heading(self, read_only: bool) -> str:
        return self.title.format(mode="read" if read_only else "write")


@dataclass(frozen=True)
class Result:
    link: str
    title: str
    status: str  # ok, warn or fail
    details: list[str]
    fix: str | None
    exit_code: int

    def as_dict(self) -> dict[str, Any]:
        """As --json shows each check."""
        return {"link": self.link, "title": self.title, "status": self.status, "details": self.details,
                "fix": self.fix}


def run_checks(checks: Iterable[Check], read_only: bool, run: Run | None = None) -> Iterator[Result]:
    """Each check's result in order, as it finishes; the last one is the first broken link, if any."""
    run = run or Run(read_only)
    for check in checks:
        title = check.heading(read_only)
        try:
            notes = check.probe(run) or []
        except RelayError as exc:
            yield Result(check.link, title, "fail", [exc.message], exc.hint, check.exit_code)
            return
        except Exception as exc:  # an unexpected failure: still one line, no traceback
            first = (str(exc).splitlines() or [""])[0]
            yield Result(check.link, title, "fail", [f"{type(exc).__name__}: {scrub(first)[:300]}"], None,
                         check.exit_code)
            return
        status = "warn" if any(n.startswith("WARNING") for n in notes) else "ok"
        yield Result(check.link, title, status, notes, None, check.exit_code)


# -- the probes, in the order of the chain -------------------------------------------------------------------
def probe_settings(run: Run) -> list[str]:
    try:
        s = load_settings()
    except ConfigError as exc:
        raise RelayError(exc.message, hint=SETTINGS_FIX) from None
    from .naming import NamePolicy
    from .runtime import get_runtime

    problems = NamePolicy.from_settings(s.relay).validate()
    if problems:
        raise RelayError("the name policy is invalid: " + "; ".join(problems),
                         hint="fix DESTINATION_TEMPLATE / ALLOWED_EXTENSIONS / NAME_POLICY (docs/gateway.md)")
    run.runtime = get_runtime(settings=s, interactive=True)
    run.settings = s
    return [f"environment {s.banenor.environment}: issuer {s.skyporten.issuer}, gateway {s.banenor.storage_url}, "
            f"audience {s.banenor.storage_audience}",
            f"key source {s.signing_key.source}, container {s.banenor.container}/{s.banenor.directory}"]


def probe_clock(run: Run) -> list[str]:
    from email.utils import parsedate_to_datetime

    import requests

    s = run.s
    url = s.skyporten.issuer + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=15, verify=s.http.verify)
    except requests.RequestException as exc:
        raise skyporten_unreachable(exc, s) from None
    date = response.headers.get("Date")
    if not date:
        return ["WARNING: Skyporten's metadata endpoint sent no Date header; clock not checked"]
    skew = time.time() - parsedate_to_datetime(date).timestamp()
    if abs(skew) > CLOCK_SKEW_ALLOWED:
        raise RelayError(f"this machine's clock is {skew:+.0f} s off Skyporten's; Skyporten allows 10 s.",
                         hint="fix the clock (NTP)")
    return [f"skew {skew:+.1f} s against {s.skyporten.issuer} (allowed: 10 s)"]


def skyporten_unreachable(exc: BaseException, s: Settings) -> RelayError:
    """The clock link when Skyporten's host gives no answer at all: the cause in words and where to look."""
    cause = transport_cause(exc) or f"{type(exc).__name__}: {scrub(first_line(str(exc)))[:160]}"
    fix = ("check MASKINPORTEN_ISSUER (leave it unset: BANENOR_ENVIRONMENT presets it) and this machine's outbound "
           "access to it (firewall, proxy, DNS)")
    if "TLS" in cause:
        fix += "; a proxy that inspects TLS needs its CA in REQUESTS_CA_BUNDLE"
    return RelayError(f"Skyporten at {scrub(s.skyporten.issuer)} cannot be reached: {cause}; the clock was not "
                      "checked.", hint=fix)


def probe_key_vault(run: Run) -> list[str]:
    key = run.s.signing_key
    where = key.vault_url if key.source.in_key_vault else key.file
    try:
        run.key = run.runtime.signing_keys.get()
    except SigningKeyError as exc:
        if exc.stage != "material":
            raise
        run.key_error = exc  # it was read; what is wrong with it is the next link's finding
    return [f"{key.source} {key.name or key.file!r} read from {where}"]


def probe_key(run: Run) -> list[str]:
    if run.key_error is not None:
        raise run.key_error
    info = run.key.info
    notes = [f"RSA {info.bits} bits, kid {info.kid or '-'}"
             + (f", x5c certificate {info.certificate_subject}" if info.certificate_subject else "")]
    if info.source != "keyvault-certificate" and not info.kid:
        raise RelayError("the key has no kid.", hint="set MASKINPORTEN_KEY_ID to the kid registered on the "
                         "integration in Samarbeidsportalen")
    now = dt.datetime.now(dt.UTC)
    expires = info.certificate_not_after or info.expires_on
    if expires is None and info.created_on is not None and info.source != "keyvault-certificate":
        expires = info.created_on + dt.timedelta(days=KEY_LIFETIME_DAYS)
        notes.append(f"stored {info.created_on:%Y-%m-%d}; self-service keys expire a year after upload")
    if expires is not None:
        days = (expires - now).days
        if days < 0:
            raise RelayError(f"the key expired {expires:%Y-%m-%d} (Skyporten answers MP-121).",
                             hint="register a new key in Samarbeidsportalen, store it, switch MASKINPORTEN_KEY_ID")
        note = f"expires about {expires:%Y-%m-%d} ({days} days)"
        notes.append(("WARNING: " if days <= KEY_WARN_DAYS else "") + note +
                     ("; register the next key now (docs/key-rotation.md)" if days <= KEY_WARN_DAYS else ""))
    return notes


def probe_skyporten(run: Run) -> list[str]:
    client = run.runtime.skyporten
    token = client.get_token()
    facts = token_facts(token, time.time(), client.request.resource)
    run.sky = facts
    reading = facts["audience_from"]
    aud_line = f"aud {facts['audience']}: {reading}"
    return [f"sub {facts['subject']}", f"resource sent: {facts['resource_sent'] or 'none'}",
            ("WARNING: " if reading.startswith("no audience") else "") + aud_line,
            f"scope {facts['scope']}", f"consumer {facts['consumer_org']}", f"expires {facts['expires_at']}"]


def probe_entra(run: Run) -> list[str]:
    from .errors import EntraError

    s = run.s
    try:
        token = run.runtime.banenor_credential.get_token(s.banenor.storage_audience + "/.default")
    except EntraError as exc:
        sky = run.sky
        if exc.code in ("AADSTS70021", "AADSTS700212"):
            # Which reading of the audience is in play, and what was sent: MASKINPORTEN_RESOURCE is the one
            # setting of the partner's that decides the token's aud.
            exc.message += (f" MASKINPORTEN_RESOURCE: resource sent: {sky.get('resource_sent') or 'none'};"
                            f" the Skyporten token's aud {sky.get('audience')!r} ({sky.get('audience_from')}).")
        raise
    from .skyporten_token import decode_unverified

    claims = decode_unverified(token.token)
    return [f"token for {claims.get('aud')} (tenant {claims.get('tid')}, identity {claims.get('oid')}), "
            f"expires {fmt_time(token.expires_on)}"]


def probe_gateway(run: Run) -> list[str]:
    from .storage import gateway_error

    banenor = run.s.banenor
    rt = run.runtime
    directory = banenor.directory
    if run.read_only:
        prefix = (directory + "/") if directory else None
        try:
            page: Any = next(iter(rt.destination.list_blobs(name_starts_with=prefix, results_per_page=5).by_page()),
                             [])
            names = [b.name for b in page]  # one page, one request: an endless marker cannot hold doctor
        except Exception as exc:
            raise gateway_error(exc, f"{banenor.container}/{directory}") from None
        return [f"listed {banenor.container}/{directory}: {len(names)} item(s) seen (read-only check)"]
    # A name no export can have (a fresh uuid), written create-only: the probe never overwrites a delivery.
    name = f"relay-doctor-probe-{uuid.uuid4().hex}.txt"
    probe = f"{directory}/{name}" if directory else name
    blob = rt.destination.get_blob_client(probe)
    try:
        blob.upload_blob(b"skyporten relay doctor probe\n", overwrite=False)
    except Exception as exc:
        raise gateway_error(exc, probe) from None
    try:
        blob.delete_blob()  # tidy up where Bane NOR allows it; otherwise it goes with the 8-day retention
    except Exception:  # noqa: S110 - a probe left behind is harmless
        pass
    return [f"wrote {banenor.container}/{probe} through {banenor.storage_url}"]


def probe_exports(run: Run) -> list[str]:
    container = run.s.exports.container
    try:
        page: Any = next(iter(run.runtime.exports_probe.list_blobs(results_per_page=1).by_page()), [])
        names = [b.name for b in page]
    except Exception as exc:
        failure = partner_storage_failure(exc, "exports", container, partner_endpoint(run.s.exports))
        raise RelayError(failure.message, hint=failure.fix) from None
    return [f"container {container} readable ({'not empty' if names else 'empty'})"]


def probe_ledger(run: Run) -> list[str]:
    rt = run.runtime
    container = run.s.exports.ledger_container
    try:
        probe = rt.ledger.container.get_blob_client("doctor/probe.txt")
        probe.upload_blob(b"probe", overwrite=True)
        probe.delete_blob()
    except Exception as exc:
        failure = partner_storage_failure(exc, "ledger", container, partner_endpoint(run.s.exports))
        raise RelayError(failure.message, hint=failure.fix) from None
    notes = [f"container {container} writable; " + ", ".join(f"{k} {v}" for k, v in rt.ledger.counts().items())]
    from .links import describe

    # A link the runs found broken: its record stays until the next run gets through it (shared/links.py).
    notes += [f"WARNING: the ledger records a broken link: {describe(state)}" for state in rt.ledger.link_states()]
    return notes


_CHAIN: tuple[tuple[str, str, Probe], ...] = (
    ("settings", "Settings", probe_settings),
    ("clock", "Clock against Skyporten", probe_clock),
    ("key_vault", "Signing key readable", probe_key_vault),
    ("key", "Signing key valid", probe_key),
    ("skyporten", "Skyporten token", probe_skyporten),
    ("entra", "Entra exchange in Bane NOR's tenant", probe_entra),
    ("gateway", "Bane NOR gateway {mode}", probe_gateway),
    ("exports", "Export container readable", probe_exports),
    ("ledger", "Ledger writable", probe_ledger),
)
# The exit code says which link failed first (10 settings ... 18 ledger); every other command uses the same codes
# for a broken link (docs/troubleshooting.md).
CHECKS: tuple[Check, ...] = tuple(Check(link, title, probe, 10 + i) for i, (link, title, probe) in enumerate(_CHAIN))
DOCTOR_LINKS = tuple(c.link for c in CHECKS)
DOCTOR_EXIT = {c.link: c.exit_code for c in CHECKS}
