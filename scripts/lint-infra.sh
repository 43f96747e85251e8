#!/usr/bin/env bash
# Offline validation of the Bicep templates (no Bicep compiler or Azure access needed):
#   1. pycep-parser parses every infra/**/*.bicep (checkov alone exits 0 on a file it cannot parse);
#      every `param` carries @description; main.parameters.json and azure.yaml agree with main.bicep;
#   2. no key material in infra/ or azure.yaml;
#   3. scripts/infra_checks.py: allowed regions (Flex Consumption, Norway East included) agree between
#      main.bicep and the preprovision hooks; no role on the partner's export account wider than the settings
#      need; the postdeploy hooks poll for the blobs_extension key (no listKeys in templates); host.json does
#      not sample traces; azure.yaml runs the preprovision and postdeploy hooks; every KQL query in infra/ and
#      docs/ reads existing tables and columns and only the fields the relay's log lines carry; the workbook,
#      an alert for each way the relay stops (metric names of the resource type), alert recipients, resource
#      logs into resource-specific tables; the hooks' az calls name the subscription; requiredVersions; locks,
#      budget, daily cap, the operator's roles; requirements.txt pinned exactly;
#   4. checkov --framework bicep --skip-download: fails on failed checks, parsing errors, and on
#      suppressions (`// checkov:skip=CKV_...: reason` inside a resource) that give no reason.
# Tools live in .venv-infra (created from requirements-infra.txt; reused while that file is unchanged).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${INFRA_VENV:-$ROOT/.venv-infra}"
REQS="$ROOT/requirements-infra.txt"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

stamp_of() { sha256sum "$REQS" | cut -d' ' -f1; }

if [[ -x "$VENV/bin/checkov" && -f "$VENV/.requirements.sha256" && "$(cat "$VENV/.requirements.sha256")" == "$(stamp_of)" ]]; then
  echo "== tools: reusing $VENV"
else
  echo "== tools: installing $REQS into $VENV (checkov is ~290 MiB; first run takes a few minutes)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  # (grep drops this machine's notes about local index mirrors that are absent.)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  stamp_of > "$VENV/.requirements.sha256"
fi
echo "   $("$VENV/bin/checkov" --version | sed 's/^/checkov /'), pycep-parser $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pycep-parser"))')"

status=0

echo "== 1/4 parse (pycep-parser) and parameter checks"
"$VENV/bin/python" - <<'PY' || status=1
import json
import sys
from pathlib import Path

import yaml
from pycep import BicepParser

parser = BicepParser()
problems: list[str] = []
parsed = {}
files = sorted(Path("infra").rglob("*.bicep"))
if not files:
    problems.append("infra/: no .bicep files found")
for path in files:
    try:
        parsed[path] = parser.parse(file_path=path)
    except Exception as exc:  # lark raises several types; any of them means the file does not parse
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.append(f"{path}: parse error: {first}")
        continue
    for name, param in (parsed[path].get("parameters") or {}).items():
        if not any(d.get("type") == "description" for d in param.get("decorators") or []):
            problems.append(f"{path}: param {name} has no @description")
    print(f"   parsed {path}")

main = parsed.get(Path("infra/main.bicep"))
if main is None:
    problems.append("infra/main.bicep: missing or unparsable")
else:
    params = main.get("parameters") or {}
    try:
        given = json.loads(Path("infra/main.parameters.json").read_text())["parameters"]
    except (OSError, ValueError, KeyError) as exc:
        problems.append(f"infra/main.parameters.json: unreadable: {exc}")
        given = {}
    for name in given:
        if name not in params:
            problems.append(f"infra/main.parameters.json: {name} is not a parameter of main.bicep")
    for name, param in params.items():
        if param.get("default") is None and name not in given:
            problems.append(f"infra/main.parameters.json: required parameter {name} is not mapped")
try:
    azure = yaml.safe_load(Path("azure.yaml").read_text())
    relay = azure["services"]["relay"]
    expected = {"project": ".", "language": "python", "host": "function"}
    for key, value in expected.items():
        if relay.get(key) not in (value, "./" if value == "." else value):
            problems.append(f"azure.yaml: services.relay.{key} is {relay.get(key)!r}, expected {value!r}")
    for hook in ("preprovision", "postdeploy"):
        for platform, ext in (("posix", "sh"), ("windows", "ps1")):
            run = ((azure.get("hooks") or {}).get(hook) or {}).get(platform, {}).get("run")
            if run != f"./infra/hooks/{hook}.{ext}" or not Path(run).is_file():
                problems.append(f"azure.yaml: hooks.{hook}.{platform}.run must be ./infra/hooks/{hook}.{ext}")
except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
    problems.append(f"azure.yaml: unreadable or no services.relay: {exc}")

for problem in problems:
    print(f"   FAIL {problem}")
print(f"   {len(files)} files, {len(problems)} problems")
sys.exit(1 if problems else 0)
PY

echo "== 2/4 no key material in templates or parameters"
if grep -rnIE -- '-----BEGIN [A-Z ]*PRIVATE KEY-----|AccountKey=|SharedAccessSignature=|"privateKey"' infra azure.yaml; then
  echo "   FAIL key material above"
  status=1
else
  echo "   none found"
fi

echo "== 3/4 regions, roles, key polling, trace sampling, queries, alerts, workbook, deployment (scripts/infra_checks.py)"
"$VENV/bin/python" scripts/infra_checks.py "$ROOT" || status=1

echo "== 4/4 checkov (bicep, offline)"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
# Exit code ignored here: the JSON report is judged below (checkov exits 0 on parse errors).
"$VENV/bin/checkov" -d infra --framework bicep --skip-download -o json >"$report" 2>/dev/null || true
"$VENV/bin/python" - "$report" <<'PY' || status=1
import json
import sys

try:
    report = json.load(open(sys.argv[1]))
except ValueError:
    print("   FAIL checkov produced no JSON report")
    sys.exit(1)
reports = report if isinstance(report, list) else [report]
failed, skipped, passed, parse_errors = [], [], 0, []
for rep in reports:
    results = rep.get("results") or {}
    failed += results.get("failed_checks") or []
    skipped += results.get("skipped_checks") or []
    passed += len(results.get("passed_checks") or [])
    parse_errors += results.get("parsing_errors") or []
bad = 0
for check in failed:
    lines = check.get("file_line_range") or ["?", "?"]
    print(f"   FAIL {check['check_id']} {check['check_name']}\n        {check['resource']} "
          f"infra{check['file_path']}:{lines[0]}-{lines[1]}")
    bad += 1
for path in parse_errors:
    print(f"   FAIL checkov could not parse {path}")
    bad += 1
for check in skipped:
    reason = (check.get("check_result") or {}).get("suppress_comment") or ""
    mark = "skip" if reason and reason != "No comment provided" else "FAIL skip without a reason"
    if mark != "skip":
        bad += 1
    print(f"   {mark} {check['check_id']} {check['resource']}: {reason.strip()}")
print(f"   passed {passed}, failed {len(failed)}, suppressed {len(skipped)}, parsing errors {len(parse_errors)}")
sys.exit(1 if bad else 0)
PY

if [[ $status -eq 0 ]]; then
  echo "== infra lint: OK"
else
  echo "== infra lint: FAILED"
fi
exit $status
