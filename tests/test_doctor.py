"""The doctor's runner and its list of checks (shared/doctor.py); each link against the stack is in test_cli.py."""

from __future__ import annotations

from shared.doctor import CHECKS, DOCTOR_EXIT, Check, run_checks
from shared.errors import RelayError


def notes(*lines: str):
    return lambda run: list(lines)


def broken(message: str, hint: str | None = None):
    def probe(run):
        raise RelayError(message, hint=hint)

    return probe


def test_the_checks_follow_the_chain_of_trust_with_exit_codes_10_to_18() -> None:
    assert [(c.link, c.exit_code) for c in CHECKS] == [
        ("settings", 10), ("clock", 11), ("key_vault", 12), ("key", 13), ("skyporten", 14), ("entra", 15),
        ("gateway", 16), ("exports", 17), ("ledger", 18),
    ]
    assert DOCTOR_EXIT == {c.link: c.exit_code for c in CHECKS}


def test_a_run_stops_at_the_first_broken_link_with_its_cause_and_fix() -> None:
    checks = (Check("a", "A", notes("fine"), 10), Check("b", "B", broken("b is down.", "restart b"), 11),
              Check("c", "C", notes("never run"), 12))
    results = list(run_checks(checks, read_only=False))
    assert [(r.link, r.status) for r in results] == [("a", "ok"), ("b", "fail")]
    assert (results[1].details, results[1].fix, results[1].exit_code) == (["b is down."], "restart b", 11)


def test_a_note_that_starts_with_warning_makes_the_check_a_warning_not_a_failure() -> None:
    checks = (Check("a", "A", notes("WARNING: soon"), 10), Check("b", "B", notes("fine"), 11))
    assert [r.status for r in run_checks(checks, read_only=False)] == ["warn", "ok"]


def test_an_unexpected_error_is_one_scrubbed_line_without_a_fix() -> None:
    def probe(run):
        raise OSError("refused by https://acct.blob.core.windows.net/c?sig=SECRET\nsecond line")

    (result,) = run_checks((Check("a", "A", probe, 10),), read_only=False)
    assert result.status == "fail" and result.fix is None
    assert result.details[0].startswith("OSError: refused by") and "SECRET" not in result.details[0]
    assert "second line" not in result.details[0]


def test_the_gateway_title_says_whether_it_reads_or_writes() -> None:
    gateway = next(c for c in CHECKS if c.link == "gateway")
    assert (gateway.heading(True), gateway.heading(False)) == ("Bane NOR gateway read", "Bane NOR gateway write")
