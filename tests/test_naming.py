"""Destination naming: Bane NOR's name and extension rules, the template, and every refusal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.errors import NameRejected, RelayError
from shared.naming import BANENOR_EXTENSIONS, NamePolicy, destination_path, sanitize_segment

WHEN = datetime(2024, 3, 7, 9, 30, tzinfo=UTC)
SANITIZE = NamePolicy()
STRICT = NamePolicy(mode="strict")


def dest(name: str, directory: str = "", policy: NamePolicy = SANITIZE) -> str:
    return destination_path(name, directory, policy, WHEN)


def rejected(name: str, directory: str = "", policy: NamePolicy = SANITIZE) -> NameRejected:
    with pytest.raises(NameRejected) as info:
        dest(name, directory, policy)
    return info.value


# -- sanitising ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Målinger 2024_01 (rev B).csv", "Maalinger-2024-01-rev-B.csv"),
        ("kjørebok.xlsx", "kjoerebok.xlsx"),
        ("ola´s-reisebok.txt", "olas-reisebok.txt"),
        ("ola's-reisebok.txt", "olas-reisebok.txt"),
        ("ola’s-reisebok.txt", "olas-reisebok.txt"),
        ("ola`s-reisebok.txt", "olas-reisebok.txt"),
        ("ÆRØ ÅS.pdf", "AeROe-AaS.pdf"),  # capitals: Æ -> Ae, Ø -> Oe, Å -> Aa
        ("Ma\u030alinger.csv", "Maalinger.csv"),  # decomposed å (macOS NFD) is still å
        ("Café Zürich naïve.txt", "Cafe-Zurich-naive.txt"),
        ("Straße.csv", "Strasse.csv"),
        ("a  --  b.csv", "a-b.csv"),
        ("--a--.csv", "a.csv"),
        ("a.(1).csv", "a.1.csv"),
        ("report.csv.", "report.csv"),
        ("Report.CSV", "Report.CSV"),
        ("archive.tar.gz", "archive.tar.gz"),
        ("already-valid.2024.json", "already-valid.2024.json"),
        ("tab\u00a0nbsp.txt", "tab-nbsp.txt"),
        ("ｆｕｌｌｗｉｄｔｈ.csv", "fullwidth.csv"),
    ],
)
def test_sanitize_mode_rewrites_each_example_to_a_name_bane_nor_accepts(source: str, expected: str) -> None:
    assert dest(source) == expected


def test_sanitize_segment_returns_empty_when_nothing_valid_remains() -> None:
    assert sanitize_segment("(###)") == ""


def test_sanitize_segment_drops_trailing_dots_azure_would_drop() -> None:
    assert sanitize_segment("folder.") == "folder"


def test_sanitized_names_are_fixed_points() -> None:
    once = sanitize_segment("Målinger 2024_01 (rev B).csv")
    assert sanitize_segment(once) == once


def test_extension_case_is_kept_in_the_name_but_ignored_by_the_allow_list() -> None:
    assert dest("SCAN.JPEG") == "SCAN.JPEG"


# -- folders, directory and template ---------------------------------------------------------
def test_source_folders_stay_folders_by_default() -> None:
    assert dest("Eksport 1/Målinger/data.csv", "inn") == "inn/Eksport-1/Maalinger/data.csv"


def test_flatten_joins_folders_into_the_name_with_dashes() -> None:
    policy = NamePolicy(folders="flatten")
    assert dest("Eksport 1/Målinger/data.csv", "inn", policy) == "inn/Eksport-1-Maalinger-data.csv"


def test_empty_directory_is_the_container_root() -> None:
    assert dest("data.csv", "") == "data.csv"


def test_nested_directory_is_prefixed() -> None:
    assert dest("data.csv", "partner/inn") == "partner/inn/data.csv"


def test_template_places_the_file_under_date_folders_from_when() -> None:
    policy = NamePolicy(template="{yyyy}/{MM}/{dd}/{HH}/{path}")
    assert dest("a/data.csv", "inn", policy) == "inn/2024/03/07/09/a/data.csv"


def test_template_can_rebuild_the_name_from_stem_and_ext() -> None:
    policy = NamePolicy(template="{dir}/{stem}-{yyyy}{MM}{dd}.{ext}")
    assert dest("a b/data.CSV", "", policy) == "a-b/data-20240307.CSV"


def test_template_drops_the_empty_dir_segment_of_a_file_at_the_root() -> None:
    policy = NamePolicy(template="{dir}/{name}")
    assert dest("data.csv", "inn", policy) == "inn/data.csv"


def test_template_renders_the_name_only_when_asked() -> None:
    policy = NamePolicy(template="{name}")
    assert dest("x/y/data.csv", "", policy) == "data.csv"


def test_template_ending_in_a_refused_extension_is_rejected() -> None:
    policy = NamePolicy(template="{path}.bak")
    assert "'.bak'" in rejected("data.csv", "", policy).reason


def test_directory_is_sanitised_in_sanitize_mode() -> None:
    assert dest("data.csv", "inn å") == "inn-aa/data.csv"


def test_directory_is_refused_in_strict_mode_when_not_valid() -> None:
    assert "destination directory" in rejected("data.csv", "inn å", STRICT).reason


@pytest.mark.parametrize("directory", ["/inn", "inn//ut", "inn/..", "inn\\ut", "./inn", "inn/"])
def test_malformed_directory_is_refused_in_every_mode(directory: str) -> None:
    assert "destination directory" in rejected("data.csv", directory).reason
    assert "destination directory" in rejected("data.csv", directory, STRICT).reason


# -- strict mode -----------------------------------------------------------------------------
def test_strict_mode_passes_a_valid_name_unchanged() -> None:
    assert dest("inn/Maalinger-2024-01.csv", "ut", STRICT) == "ut/inn/Maalinger-2024-01.csv"


@pytest.mark.parametrize("name", ["kjørebok.xlsx", "ola´s-reisebok.txt", "a b.csv", "a_b.csv", "dir 1/a.csv"])
def test_strict_mode_refuses_any_segment_that_is_not_already_valid(name: str) -> None:
    error = rejected(name, "", STRICT)
    assert "contains" in error.reason
    assert "sanitize" in (error.hint or "")


def test_strict_mode_refuses_a_segment_of_only_dots() -> None:
    assert "only dots" in rejected("..../data.csv", "", STRICT).reason


def test_strict_mode_refuses_a_trailing_dot() -> None:
    assert "ends with a dot" in rejected("dir./a.csv", "", STRICT).reason


# -- refusals in every mode ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "reason_part"),
    [
        ("", "empty"),
        ("/etc/data.csv", "starts with '/'"),
        ("a\\b.csv", "backslash"),
        ("../data.csv", "'..' segment"),
        ("a/../../data.csv", "'..' segment"),
        ("./data.csv", "'.' segment"),
        ("a//data.csv", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b.csv", "U+0000"),
        ("a\nb.csv", "U+000A"),
        ("a\x7fb.csv", "U+007F"),
        ("evil\u202egpj.exe", "U+202E"),  # right-to-left override: "evilexe.jpg" on screen
        ("zero\u200bwidth.csv", "U+200B"),
        ("README", "no file extension"),
        ("tool.exe", "'.exe' is not on Bane NOR's allow list"),
        ("data.CSV.EXE", "'.EXE' is not on Bane NOR's allow list"),
        (".csv", "nothing before its extension"),
        ("x" * 300 + ".csv", "the limit is 255"),
        ("/".join(["d" * 200] * 6) + "/a.csv", "the limit is 1024"),
        ("x" * 5000 + ".csv", "5004 characters long"),
    ],
)
def test_hostile_or_undeliverable_names_are_refused_with_a_reason(name: str, reason_part: str) -> None:
    for policy in (SANITIZE, STRICT):
        error = rejected(name, "", policy)
        assert reason_part in error.reason
        assert error.source_name == name


@pytest.mark.parametrize(
    ("name", "reason_part"),
    [
        ("(###)/data.csv", "no character Bane NOR accepts"),
        ("... /data.csv", "no character Bane NOR accepts"),
        ("..../data.csv", "no character Bane NOR accepts"),
        ("###.csv", "nothing before its extension"),
        ("data.c_v", "'.c-v' is not on Bane NOR's allow list"),
    ],
)
def test_sanitize_mode_refuses_names_that_sanitise_to_nothing_usable(name: str, reason_part: str) -> None:
    assert reason_part in rejected(name).reason


def test_a_refusal_is_a_relay_error_with_a_hint() -> None:
    error = rejected("tool.exe")
    assert isinstance(error, RelayError)
    assert "ask Bane NOR to allow '.exe'" in str(error)


def test_a_refusal_message_escapes_control_characters() -> None:
    assert "\n" not in str(rejected("a\nb.csv"))


def test_a_custom_extension_list_is_honoured() -> None:
    policy = NamePolicy(allowed_extensions=frozenset({"dat"}))
    assert dest("x.DAT", "", policy) == "x.DAT"
    assert "'.csv'" in rejected("x.csv", "", policy).reason


def test_the_path_limit_counts_the_directory() -> None:
    policy = NamePolicy(max_path=20)
    assert dest("abcdefghij.csv", "inn", policy) == "inn/abcdefghij.csv"  # 18 characters
    assert "the limit is 20" in rejected("abcdefghijklm.csv", "inn", policy).reason  # 21 characters


def test_the_segment_limit_is_inclusive() -> None:
    policy = NamePolicy(max_segment=10)
    assert dest("abcdef.csv", "", policy) == "abcdef.csv"
    assert "the limit is 10" in rejected("abcdefg.csv", "", policy).reason


# -- the allow list and the policy itself ----------------------------------------------------
def test_allow_list_matches_bane_nor_restrictions_page() -> None:
    assert {"csv", "xlsx", "json", "pdf", "gz", "vp0", "vspe", "kmm2", "hdr"} <= BANENOR_EXTENSIONS
    assert len(BANENOR_EXTENSIONS) == 40
    assert "exe" not in BANENOR_EXTENSIONS


def test_default_policy_is_valid() -> None:
    assert NamePolicy().validate() == []


@pytest.mark.parametrize(
    ("policy", "problem_part"),
    [
        (NamePolicy(mode="lenient"), "mode 'lenient'"),
        (NamePolicy(folders="drop"), "folders 'drop'"),
        (NamePolicy(allowed_extensions=frozenset()), "allow list is empty"),
        (NamePolicy(allowed_extensions=frozenset({".csv", "PDF"})), "lower-case"),
        (NamePolicy(template="{yyyy}/{MM}"), "must end with a segment"),
        (NamePolicy(template="{path}/{yyyy}"), "must end with a segment"),
        (NamePolicy(template="{path}{year}"), "unknown placeholders ['year']"),
        (NamePolicy(template="{path.__class__}"), "unknown placeholders"),
        (NamePolicy(template="{path"), "unmatched brace"),
        (NamePolicy(template="in box/{path}"), "literal characters"),
        (NamePolicy(template="/{path}"), "must not start or end"),
        (NamePolicy(template="a//{path}"), "must not start or end"),
        (NamePolicy(template="../{path}"), "'..' segments"),
        (NamePolicy(max_segment=0), "max_segment 0"),
        (NamePolicy(max_path=2048), "max_path 2048"),
    ],
)
def test_policy_validation_names_each_problem(policy: NamePolicy, problem_part: str) -> None:
    assert any(problem_part in p for p in policy.validate())


def test_an_invalid_policy_raises_value_error_not_a_rejection() -> None:
    with pytest.raises(ValueError, match="invalid naming policy"):
        dest("data.csv", "", NamePolicy(mode="lenient"))


def test_the_policy_is_validated_once_when_built_not_on_every_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.naming as naming

    calls = []
    real = naming.template_problems
    monkeypatch.setattr(naming, "template_problems", lambda template: calls.append(template) or real(template))
    policy = NamePolicy(template="{yyyy}/{path}")
    for name in ("a.csv", "b.csv", "c/d.csv"):
        destination_path(name, "", policy, WHEN)
    assert calls == ["{yyyy}/{path}"]
