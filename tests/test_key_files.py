"""Private keys never sit in the repository (issue 27): the guides make and read key files in a private directory
outside it (`$KEYS`, `~/.skyporten-keys`), and `.gitignore` keeps key files out of a commit should one land here."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A key file a command writes or reads: openssl's -out, az's --file/--pem-file, a shell redirect.
KEY_FILE_ARGUMENT = re.compile(r"(?:-out|--file|--pem-file|>)\s+\"?([^\s\"`|;)]+\.(?:pem|pfx|p12|key|jwk\.json))\b")


@pytest.mark.parametrize("name", ["key.pem", "next.pem", "public.pem", "enterprise.pfx", "key.p12",
                                  "maskinporten.key", "key.jwk.json", "keys/partner-2026.pem"])
def test_gitignore_keeps_key_files_out_of_a_commit(name):
    checked = subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=REPO, capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, f"{name} is not ignored: one `git add .` from a commit"


def test_the_guides_make_and_read_key_files_outside_the_repository():
    found = {(doc.name, path) for doc in DOCS for path in KEY_FILE_ARGUMENT.findall(doc.read_text())}
    assert found, "the guides' key commands are no longer recognised: update KEY_FILE_ARGUMENT"
    inside = sorted((doc, path) for doc, path in found if not path.startswith("$KEYS/"))
    assert not inside, f"key files written or read in the working directory (the repository): {inside}"


def test_the_onboarding_guide_makes_the_private_key_directory_private():
    text = (REPO / "docs" / "onboarding.md").read_text()
    assert 'KEYS=~/.skyporten-keys' in text and 'mkdir -p -m 700 "$KEYS"' in text
