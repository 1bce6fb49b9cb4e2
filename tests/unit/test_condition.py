"""CEL conditions: refused at compile time on the sample, fail closed at evaluation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from keybroker.condition import Condition, ConditionError, compile_condition

SAMPLE: dict[str, object] = {
    "platform": "sev-snp",
    "evidence": {
        "policy": {"debug": False, "single_socket": True},
        "reported_tcb": {"microcode": 213},
        "images": [{"digest": "sha256:" + "ab" * 32}],
        "issued": datetime(2026, 1, 1, tzinfo=UTC),
        "chip_id": "00" * 64,
    },
    "workload": {"name": "demo", "images": ["sha256:" + "ab" * 32], "agent_policy": None},
}


def _view(**evidence: object) -> dict[str, object]:
    base = dict(SAMPLE["evidence"])  # type: ignore[call-overload]
    base.update(evidence)
    return {**SAMPLE, "evidence": base}


@pytest.mark.parametrize(("expression", "expected"), [
    ("evidence.policy.single_socket", True),
    ("!evidence.policy.debug && platform == 'sev-snp'", True),
    ("evidence.reported_tcb.microcode >= 220", False),
    ("workload.name in ['demo', 'other']", True),
    ("workload.agent_policy == null", True),
    ("evidence.images.exists(i, i.digest.startsWith('sha256:'))", True),
    ("size(workload.images) == 1 && workload.images.all(i, i.size() == 71)", True),
    ("has(evidence.policy.migrate_ma) || true", True),
    ("timestamp(evidence.issued) < timestamp('2027-01-01T00:00:00Z')", True),
    ("type(evidence.reported_tcb.microcode) == int", True),
])
def test_compile_and_evaluate(expression: str, expected: bool) -> None:
    """Valid expressions compile once and evaluate to the expected boolean."""
    condition = compile_condition(expression, SAMPLE)
    assert condition.expression == expression
    assert condition.evaluate(SAMPLE) is expected


@pytest.mark.parametrize(("expression", "words"), [
    ("evidence.policy.debug ==", "not a valid CEL expression"),
    ("(", "not a valid CEL expression at line 1 column 1"),
    ("nope == 1", "unknown variable 'nope'"),
    ("evidence.nope", "unknown field 'evidence.nope'"),
    ("evidence.policy.nope == true", "unknown field 'evidence.policy.nope'"),
    ("true || evidence.nope", "unknown field 'evidence.nope'"),
    ("evidence.reported_tcb.microcode", "result is int, not a boolean"),
    ("platform", "result is string, not a boolean"),
    ('1 + "a" == 2', "no such overload"),
    ("evidence.reported_tcb.microcode == 'x'", "no such overload"),
    ("evidence['zz'] == 1", "no such member"),
    ("undefined_fn(1)", "unbound function"),
    ("  ", "empty expression"),
    ("true && " * 600 + "true", "longer than 4096"),
])
def test_compile_refusals(expression: str, words: str) -> None:
    """Parse errors, unknown names, non-bool results and type errors are refused at compile."""
    with pytest.raises(ConditionError) as exc:
        compile_condition(expression, SAMPLE)
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


def test_evaluation_error_fails_closed() -> None:
    """A runtime type error or a non-bool runtime result raises, never returns True."""
    condition = compile_condition("evidence.reported_tcb.microcode >= 200", SAMPLE)
    with pytest.raises(ConditionError):
        condition.evaluate(_view(reported_tcb={"microcode": "high"}))
    with pytest.raises(ConditionError):
        condition.evaluate(_view(reported_tcb={}))
    flag = compile_condition("evidence.policy.debug", SAMPLE)
    with pytest.raises(ConditionError, match="not a boolean"):
        flag.evaluate(_view(policy={"debug": 1}))


def test_uncompiled_condition_refuses() -> None:
    """A Condition built without a program never evaluates to True."""
    with pytest.raises(ConditionError):
        Condition("true").evaluate({})


def test_datetimes_are_rfc3339_strings() -> None:
    """Datetimes in the activation reach CEL as RFC 3339 strings ending in Z."""
    condition = compile_condition("evidence.issued == '2026-01-01T00:00:00Z'", SAMPLE)
    assert condition.evaluate(SAMPLE) is True


def test_references_name_the_fields() -> None:
    """A condition lists the dotted paths it names (for deny details)."""
    condition = compile_condition(
        "!evidence.policy.debug && evidence.images.exists(i, i.digest != '') "
        "&& platform == 'sev-snp' && has(evidence.x)", SAMPLE)
    assert condition.references == ("evidence.policy.debug", "evidence.images", "platform")


def test_celpy_error_logs_are_silenced(caplog: pytest.LogCaptureFixture) -> None:
    """A failing evaluation raises ConditionError without cel-python ERROR log records."""
    condition = compile_condition("evidence.reported_tcb.microcode >= 200", SAMPLE)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConditionError):
        condition.evaluate(_view(reported_tcb={"microcode": "high"}))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
