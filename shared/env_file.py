"""Settings files for the command line's `--env-file`: KEY=value lines, a Functions local.settings.json, or the
app-settings JSON that `az functionapp config appsettings list` prints. Reads a file into a plain dict of names and
values; `config` validates them."""

from __future__ import annotations

import re
from pathlib import Path

ENV_FILE_FORMATS = ("KEY=value lines (dotenv, `export` and quotes allowed), a Functions local.settings.json (its "
                    "Values), or the JSON that `az functionapp config appsettings list` prints")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")


def read_env_file(path: str | Path) -> dict[str, str]:
    """Read settings from a file in one of ENV_FILE_FORMATS. Raises OSError when the file cannot be read and
    ValueError (naming the line or the JSON's problem) when it is in none of the formats."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith(("{", "[")):
        return _settings_json(text)
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            # Skipping it would leave the setting at its default and the mistake unseen (`BANENOR_DIRECTORY x`
            # writes to the container's root). Only the first word is shown: the rest may be a secret.
            first = line.split(None, 1)[0].rstrip(":")[:40]
            raise ValueError(f"line {number} is not KEY=value (it starts with {first!r}; write {first}=<value>, "
                             "or # to comment it out)")
        key, _, value = line.partition("=")
        if not _ENV_KEY.match(key.strip()):
            raise ValueError(f"line {number}: {key.strip()[:40]!r} is not a setting name")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _settings_json(text: str) -> dict[str, str]:
    """local.settings.json (`{"Values": {...}}`) or `az functionapp config appsettings list` (`[{"name", "value",
    "slotSetting"}, ...]`); a null value (a setting az does not show) is left out."""
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("Values"), dict):
        pairs = list(data["Values"].items())
    elif isinstance(data, list) and all(isinstance(r, dict) and "name" in r for r in data):
        pairs = [(r["name"], r.get("value")) for r in data]
    else:
        raise ValueError("JSON, but neither a local.settings.json with Values nor an appsettings list")
    values = {}
    for key, value in pairs:
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise ValueError(f"{str(key)[:40]!r} is not a setting name")
        if value is not None:
            values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return values
