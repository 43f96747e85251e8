"""`make demo` runs the same script: run it (smaller large file) and check its report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.stack


def test_demo_delivers_everything_but_the_refused_extension_and_verifies_checksums(tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "sim.demo", "--large-mib", "8", "--json", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["files"] == 61
    assert report["delivered"] == 60
    assert [r["source"] for r in report["rejected"]] == ["verktøy.exe"]
    assert report["all_md5_verified"]
    assert report["tokens"] == {"skyporten": 1, "entra": 1}
    renamed = {r["source"]: r["destination"] for r in report["deliveries"] if r["renamed"]}
    assert renamed["Målinger 2024_01 (rev B).csv"] == "partner-987654321/Maalinger-2024-01-rev-B.csv"
    assert "Delivery report" in result.stdout
    assert "Checksums verified at the destination: all" in result.stdout
    # The report alone on the terminal (issue 27): the host's and the relay's log lines go to the demo's log file,
    # which the report names with its count of warnings.
    assert "WARNING" not in result.stdout + result.stderr
    assert "delivery outcome=" not in result.stdout + result.stderr
    log_line = next(line for line in result.stdout.splitlines() if line.startswith("Log of the host and the relay"))
    log_file = Path(log_line.rsplit(": ", 1)[1])
    logged = log_file.read_text()
    for raw in ("delivery outcome=rejected", "sync timer is past due", "Auth level is not applied"):
        assert raw in logged
    warnings = logged.count(" WARNING ")
    assert f"({warnings} warning{'' if warnings == 1 else 's'}, " in log_line
