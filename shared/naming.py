"""Destination names: turn a partner's export name into a blob path Bane NOR accepts.

Owns Bane NOR's naming rules (docs/protocol.md section 6: `[a-zA-Z0-9.-]` per segment, an extension allow
list), the sanitising transliteration, the destination template and every refusal. Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from .errors import NameRejected

# Bane NOR "File and blob restrictions": every other extension needs a request to Bane NOR.
BANENOR_EXTENSIONS: frozenset[str] = frozenset(
    "txt csv log json xml md "
    "jpg jpeg png gif bmp tiff webp "
    "mp3 wav mp4 avi mov flac "
    "pdf doc docx xls xlsx ppt pptx "
    "zip tar gz rar "
    "html css js py cs "
    "vp0 vspe kmm kmm2 hdr".split()
)



class NameMode(StrEnum):
    """NAME_POLICY: rewrite invalid characters, or refuse any segment that is not already valid."""

    SANITIZE = "sanitize"
    STRICT = "strict"


class FolderMode(StrEnum):
    """FOLDER_MODE: keep source folders as folders, or join them into the file name with "-"."""

    KEEP = "keep"
    FLATTEN = "flatten"


MODES = tuple(NameMode)
FOLDER_MODES = tuple(FolderMode)
PLACEHOLDERS = ("path", "name", "dir", "stem", "ext", "yyyy", "MM", "dd", "HH")

# Azure: a blob name is at most 1024 characters; ADLS Gen2 (hierarchical namespace) caps a segment at 255.
AZURE_MAX_PATH = 1024
AZURE_MAX_SEGMENT = 255
# Refuse absurd inputs before doing any per-character work on them.
_MAX_SOURCE_CHARS = 4 * AZURE_MAX_PATH

_VALID_SEGMENT = re.compile(r"[A-Za-z0-9.-]+")
_INVALID_CHAR = re.compile(r"[^A-Za-z0-9.-]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_EXTENSION = re.compile(r"[a-z0-9]+")

# Norwegian transliteration (Bane NOR's example: `kjørebok.xlsx` refused, `kjorebok.xlsx` allowed; we
# keep the sound with the standard ae/oe/aa). Applied before NFKD, which would turn å into a + ring.
_TRANSLITERATE = str.maketrans({"æ": "ae", "ø": "oe", "å": "aa", "Æ": "Ae", "Ø": "Oe", "Å": "Aa", "ß": "ss"})
# Apostrophe-like marks are dropped, not turned into `-`: Bane NOR's own example refuses `ola´s-reisebok.txt`
# and allows `olas-reisebok.txt`.
_APOSTROPHES = str.maketrans(dict.fromkeys("'`´’‘‛ʼʹˊˋ′", None))

_HINT_CHARS = "Bane NOR accepts only [a-zA-Z0-9.-] in each path segment: rename the export"
_HINT_STRICT = _HINT_CHARS + ", or set NAME_POLICY=sanitize to have the relay rename it"


class NameSettings(Protocol):
    """The settings a policy is built from: `config.RelaySettings` has them. A protocol, so that the name policy
    stays pure and imports nothing of the settings (no import circle with `config`)."""

    @property
    def name_policy(self) -> str: ...
    @property
    def allowed_extensions(self) -> frozenset[str]: ...
    @property
    def folder_mode(self) -> str: ...
    @property
    def destination_template(self) -> str: ...


@dataclass(frozen=True)
class NamePolicy:
    """How source names become destination names.

    mode: "sanitize" rewrites invalid characters; "strict" refuses any segment that is not already valid.
    folders: "keep" keeps source folders as folders; "flatten" joins them into the file name with "-".
    template: the path under the destination directory; placeholders {path} (folders kept or flattened,
    plus the name), {name}, {dir}, {stem}, {ext} (without the dot), and {yyyy} {MM} {dd} {HH} from `when`.
    Sanitising keeps the extension's case in the name (`Report.CSV` stays `.CSV`); only the allow-list
    check is case-insensitive.

    The policy is validated once, when it is built: `validate()` returns what was found then, and an invalid
    policy raises ValueError when it is used (`destination_path`), never a rejection of a name.
    """

    mode: str = NameMode.SANITIZE
    allowed_extensions: frozenset[str] = BANENOR_EXTENSIONS
    folders: str = FolderMode.KEEP
    template: str = "{path}"
    max_segment: int = AZURE_MAX_SEGMENT
    max_path: int = AZURE_MAX_PATH
    _problems: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_problems", tuple(self._find_problems()))

    @classmethod
    def from_settings(cls, relay: NameSettings) -> NamePolicy:
        """The policy NAME_POLICY, ALLOWED_EXTENSIONS, FOLDER_MODE and DESTINATION_TEMPLATE describe (the settings'
        relay section)."""
        return cls(mode=relay.name_policy, allowed_extensions=relay.allowed_extensions, folders=relay.folder_mode,
                   template=relay.destination_template)

    def validate(self) -> list[str]:
        """Problems with the policy itself (never with a name), one sentence each; empty when usable."""
        return list(self._problems)

    def _find_problems(self) -> list[str]:
        problems: list[str] = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is unknown: use one of {', '.join(MODES)}")
        if self.folders not in FOLDER_MODES:
            problems.append(f"folders {self.folders!r} is unknown: use one of {', '.join(FOLDER_MODES)}")
        if not self.allowed_extensions:
            problems.append("the extension allow list is empty: every file would be refused")
        bad = sorted(str(e) for e in self.allowed_extensions if not _EXTENSION.fullmatch(str(e)))
        if bad:
            problems.append(f"extensions {bad!r} must be lower-case letters and digits, without the dot")
        if not 1 <= self.max_segment <= AZURE_MAX_SEGMENT:
            problems.append(f"max_segment {self.max_segment} must be between 1 and {AZURE_MAX_SEGMENT}")
        if not 1 <= self.max_path <= AZURE_MAX_PATH:
            problems.append(f"max_path {self.max_path} must be between 1 and {AZURE_MAX_PATH}")
        problems.extend(template_problems(self.template))
        return problems


def template_problems(template: str) -> list[str]:
    """What is wrong with a destination template (none: an empty list); part of `NamePolicy.validate`."""
    problems: list[str] = []
    names = _PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        problems.append(
            f"template {template!r} has unknown placeholders {unknown!r}: use {', '.join(PLACEHOLDERS)}"
        )
    literal = _PLACEHOLDER.sub("", template)
    if "{" in literal or "}" in literal:
        problems.append(f"template {template!r} has an unmatched brace")
    if _INVALID_CHAR.search(literal.replace("/", "").replace("{", "").replace("}", "")):
        problems.append(f"template {template!r} has literal characters outside [a-zA-Z0-9.-/]")
    if template.startswith("/") or template.endswith("/") or "//" in template:
        problems.append(f"template {template!r} must not start or end with '/' or contain '//'")
    if any(seg in (".", "..") for seg in template.split("/")):
        problems.append(f"template {template!r} must not contain '.' or '..' segments")
    last = template.rsplit("/", 1)[-1]
    if not any(f"{{{p}}}" in last for p in ("path", "name", "ext")):
        problems.append(
            f"template {template!r} must end with a segment holding {{path}}, {{name}} or {{stem}}.{{ext}}, "
            "or every file would lose its name or extension"
        )
    return problems


def sanitize_segment(segment: str) -> str:
    """One path segment rewritten into `[a-zA-Z0-9.-]`; may return "" (the caller refuses that).

    æ ø å become ae oe aa, other accents are dropped (NFKD without combining marks), apostrophes are
    dropped, every other character becomes `-`; runs of `-` collapse, `-` next to a dot and at either end
    is trimmed, and trailing dots go (Azure drops them from path segments, so `a.` and `a` would collide).
    """
    text = unicodedata.normalize("NFC", segment).translate(_TRANSLITERATE).translate(_APOSTROPHES)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = _INVALID_CHAR.sub("-", text)
    text = re.sub(r"-*\.-*", ".", text)
    text = re.sub(r"-{2,}", "-", text).strip("-")
    return text.rstrip(".")


def _split_ext(name: str) -> tuple[str, str]:
    """(stem, extension) like os.path.splitext without the dot: leading dots do not start an extension."""
    body = name.lstrip(".")
    if "." not in body:
        return name, ""
    stem, ext = name.rsplit(".", 1)
    return stem, ext


def _structure_problem(path: str, what: str) -> str | None:
    """A reason `path` is refused in every mode, or None. `what` names it in the reason."""
    if len(path) > _MAX_SOURCE_CHARS:
        return f"the {what} is {len(path)} characters long"
    if path.startswith("/"):
        return f"the {what} starts with '/'"
    if "\\" in path:
        return f"the {what} contains a backslash"
    for c in path:
        # Cc: control characters; Cf: invisible format characters (bidi overrides, zero-width, BOM).
        if unicodedata.category(c) in ("Cc", "Cf"):
            return f"the {what} contains the control or format character U+{ord(c):04X}"
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            shown = "an empty segment" if seg == "" else f"a {seg!r} segment"
            return f"the {what} has {shown}"
    return None


def _segment(seg: str, policy: NamePolicy, source_name: str, what: str) -> str:
    """One segment made valid (sanitize) or checked (strict); raises NameRejected."""
    if policy.mode == NameMode.STRICT:
        bad = sorted(set(_INVALID_CHAR.findall(seg)))
        if bad:
            raise NameRejected(
                source_name, f"the {what} segment {seg!r} contains {''.join(bad)!r}", hint=_HINT_STRICT
            )
        out = seg
    else:
        out = sanitize_segment(seg)
        if not out:
            raise NameRejected(
                source_name, f"the {what} segment {seg!r} has no character Bane NOR accepts", hint=_HINT_CHARS
            )
    _check_segment(out, policy, source_name, what)
    return out


def _check_segment(seg: str, policy: NamePolicy, source_name: str, what: str) -> None:
    if seg.strip(".") == "":
        raise NameRejected(source_name, f"the {what} segment {seg!r} is only dots", hint=_HINT_CHARS)
    if seg.endswith("."):
        # Azure strips trailing dots from path segments: `a./b` would land as `a/b`.
        raise NameRejected(source_name, f"the {what} segment {seg!r} ends with a dot", hint=_HINT_CHARS)
    if not _VALID_SEGMENT.fullmatch(seg):
        raise NameRejected(source_name, f"the {what} segment {seg!r} is not valid", hint=_HINT_CHARS)
    if len(seg) > policy.max_segment:
        raise NameRejected(
            source_name,
            f"the {what} segment {seg[:40]!r}... is {len(seg)} characters; the limit is {policy.max_segment}",
            hint="shorten the export's name or folders",
        )


def _check_extension(name: str, policy: NamePolicy, source_name: str) -> tuple[str, str]:
    stem, ext = _split_ext(name)
    if not ext and name.startswith(".") and len(name) > 1:
        raise NameRejected(source_name, f"{name!r} has nothing before its extension", hint=_HINT_CHARS)
    if not ext:
        raise NameRejected(
            source_name,
            f"{name!r} has no file extension",
            hint="Bane NOR accepts only files with an extension on its allow list (ALLOWED_EXTENSIONS)",
        )
    if ext.lower() not in policy.allowed_extensions:
        raise NameRejected(
            source_name,
            f"the extension '.{ext}' is not on Bane NOR's allow list (ALLOWED_EXTENSIONS)",
            # short: it is stored with the rejection and shown per file; docs/gateway.md lists the default
            hint=f"ask Bane NOR to allow '.{ext.lower()}', then add it to ALLOWED_EXTENSIONS",
        )
    return stem, ext


def _directory(directory: str, policy: NamePolicy, source_name: str) -> list[str]:
    if directory == "":
        return []  # container root
    problem = _structure_problem(directory, "destination directory")
    if problem:
        raise NameRejected(source_name, problem, hint="fix the Bane NOR directory (BANENOR_DIRECTORY)")
    return [_segment(s, policy, source_name, "destination directory") for s in directory.split("/")]


def _render(template: str, values: dict[str, str]) -> str:
    # A regex, not str.format: a template must never reach attributes ("{path.__class__}").
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def destination_path(source_name: str, directory: str, policy: NamePolicy, when: datetime) -> str:
    """`<directory>/<rendered template>` for the export `source_name`, valid for Bane NOR.

    `when` supplies {yyyy} {MM} {dd} {HH} as given (pass a UTC datetime for UTC folders).
    Raises NameRejected (reason and hint) when the name cannot be delivered under `policy`, and
    ValueError when the policy itself is invalid (see NamePolicy.validate).
    """
    if policy._problems:
        raise ValueError("invalid naming policy: " + "; ".join(policy._problems))
    problem = _structure_problem(source_name, "name") if source_name else "the name is empty"
    if problem:
        raise NameRejected(source_name, problem, hint="only regular export files with a plain path can go")
    segments = [_segment(s, policy, source_name, "name") for s in source_name.split("/")]
    if policy.folders == FolderMode.FLATTEN:
        segments = ["-".join(segments)]
        _check_segment(segments[0], policy, source_name, "flattened name")
    name = segments[-1]
    stem, ext = _check_extension(name, policy, source_name)
    values = {
        "path": "/".join(segments),
        "name": name,
        "dir": "/".join(segments[:-1]),
        "stem": stem,
        "ext": ext,
        "yyyy": f"{when.year:04d}",
        "MM": f"{when.month:02d}",
        "dd": f"{when.day:02d}",
        "HH": f"{when.hour:02d}",
    }
    # An empty {dir} leaves an empty segment behind ("{dir}/{name}"): drop those.
    rendered = [s for s in _render(policy.template, values).split("/") if s]
    for seg in rendered:
        if seg in (".", ".."):
            raise NameRejected(source_name, f"the template renders a {seg!r} segment", hint=_HINT_CHARS)
        _check_segment(seg, policy, source_name, "rendered")
    _check_extension(rendered[-1], policy, source_name)
    full = "/".join(_directory(directory, policy, source_name) + rendered)
    if len(full) > policy.max_path:
        raise NameRejected(
            source_name,
            f"the destination path is {len(full)} characters; the limit is {policy.max_path}",
            hint="shorten the export's name, its folders or the destination template",
        )
    return full
