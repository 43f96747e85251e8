"""requirements.in holds what the function app imports, and nothing only the tests or the simulators use;
requirements.txt pins exactly the versions installed here, the ones the tests run (what is deployed)."""

import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def runtime_requirements() -> list[str]:
    names = []
    for line in (ROOT / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0])
    return names


def import_names(distribution: str) -> list[str]:
    """The modules a distribution provides: its top-level packages, or, inside a namespace shared by many
    distributions (azure, azurefunctions), the dotted path its name spells."""
    wanted = distribution.lower().replace("_", "-")
    tops = [top for top, dists in packages_distributions().items()
            if wanted in {d.lower().replace("_", "-") for d in dists}]
    if tops and not set(tops) & {"azure", "azurefunctions"}:
        return tops
    return [wanted.replace("-", ".")]


def app_sources() -> str:
    files = [ROOT / "function_app.py", *sorted((ROOT / "shared").glob("*.py"))]
    return "\n".join(path.read_text() for path in files)


def test_every_runtime_requirement_is_imported_by_the_function_app():
    sources = app_sources()
    unused = [
        name for name in runtime_requirements()
        if not any(re.search(rf"^\s*(from|import)\s+{re.escape(module)}\b", sources, re.M)
                   for module in import_names(name))
    ]
    assert unused == [], f"only tests or simulators use {unused}: move them to requirements-dev.txt"


def test_requirements_txt_pins_exactly_the_versions_the_tests_run():
    # scripts/pin_requirements.py --check: the closure of requirements.in as installed in this venv, name==version.
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pin_requirements.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", line) for line in pins)
    assert {p.split("==")[0].lower() for p in pins} >= {n.lower() for n in runtime_requirements()}
