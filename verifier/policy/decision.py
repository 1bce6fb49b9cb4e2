"""The decision engine: one appraisal policy applied to verified claims, every step in a fixed
order, first failure wins.

Invariants:
- Order: the policy's platform must be the evidence's (else ``Malformed``, rule
  ``policy.platform``, expected the evidence's platform, actual the policy's); the appraisal
  time must be timezone-aware (``Malformed``); the typed platform appraisal (the registry's
  ``Tee.appraise``); workload claims (init-data bound by the platform's register, e.g. SNP
  HOST_DATA or TDX MRCONFIGID, else ``MeasurementMismatch`` rule
  ``workload.require_init_data``; evidence of a platform without such a register (SGX) with
  init-data is ``MeasurementMismatch`` rule ``<section>.init_data``); the workload policy
  (``check_workload``); reference-value bindings; CEL conditions; the TCB early warning.
- ``appraise_claims`` is the same decision on recorded claims (dry runs, policy test cases):
  instead of binding init-data bytes, workload claims that say they were bound must name the
  platform's register and its value in the evidence.
- Reference bindings never pass vacuously: an absent or null claim, an empty list, or a value
  that is not a string or integer is ``MeasurementMismatch`` (rule
  ``reference_values.<set>``); every element of a list claim must match. ``include_staged``
  (dry runs only) lets staged values match; such matches are listed in ``would_match``.
  ``matched`` maps the claim path (``<path>.<index>`` for each element of a list claim) to
  ``<set>@<version>/<value name>``.
- Conditions: false -> the rule's category, rule ``conditions.<name>``, reason the rule's
  message (or "condition failed"), expected the expression, actual the values of the claims
  it names; an evaluation error denies the same way (fail closed).
- Status is "warning" when the typed appraisal said so or a DEPRECATED reference value
  matched; a deprecated match names itself in ``warnings`` and puts ``executables`` in the
  warning tier (32), so the status stays derivable from the trust vector.
- The TCB early warning never changes the decision: it only fills ``tcb_debt``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from keybroker.condition import Activation, ConditionError
from keybroker.errors import Malformed, MeasurementMismatch, error_for
from verifier import registry
from verifier.claims_view import claims_view
from verifier.init_data import InitDataRegister
from verifier.policy.model import AppraisalPolicy, ConditionRule, ReferenceBinding
from verifier.reference.values import ReferenceSnapshot, RefMatch, RefState
from verifier.tee import Claims, Tee
from verifier.verdict import APPROVED, APPROVED_BOOT_ONLY, UNSAFE, WARNING, Appraisal
from verifier.workload import (
    NO_WORKLOAD,
    WorkloadClaims,
    check_binding,
    check_workload,
    workload_claims,
)

# Besides the platform's own runtime claims (``Tee.runtime_claims``), a binding of these pins
# the runtime too.
WORKLOAD_RUNTIME_CLAIMS = frozenset({"workload.measured_images"})
_MAX_ACTUAL = 300
_MISSING = object()


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_platform(policy: AppraisalPolicy, claims: Claims) -> Tee:
    tee = registry.of_claims(claims)
    if policy.platform != tee.platform:
        raise Malformed(f"appraisal policy {policy.policy_id} is for platform "
                        f"{policy.platform}, not {tee.platform}", rule="policy.platform",
                        expected=tee.platform, actual=policy.platform)
    return tee


def _check_time(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise Malformed("appraisal time must be timezone-aware", rule="appraisal.at",
                        expected="aware datetime", actual=at.isoformat())
    return at.astimezone(UTC)


def init_data_register(claims: Claims) -> tuple[InitDataRegister | None, bytes]:
    """The register that binds init-data for ``claims`` and its value (None: the platform
    cannot bind init-data)."""
    return _register(registry.of_claims(claims), claims)


def _register(tee: Tee, claims: Claims) -> tuple[InitDataRegister | None, bytes]:
    if tee.init_data_register is None:
        return None, b""
    return tee.init_data_register, tee.init_data_value(claims)


def _unbindable(tee: Tee, actual: str) -> MeasurementMismatch:
    return MeasurementMismatch(f"{tee.display_name} evidence cannot bind init-data",
                               rule=f"{tee.section}.init_data", expected="no init-data",
                               actual=actual)


def evidence_workload(claims: Claims, init_data: bytes, *,
                      required: bool = False) -> WorkloadClaims:
    """The workload claims of verified evidence and presented init-data (policy-independent
    unless ``required``): binding checked, document parsed, runtime images added."""
    tee = registry.of_claims(claims)
    register, value = _register(tee, claims)
    if register is None:
        if init_data:
            raise _unbindable(tee, f"{len(init_data)} bytes")
        return NO_WORKLOAD
    measured_register, measured = tee.measured_images(claims)
    return workload_claims(register, value, init_data, required=required,
                           measured_register=measured_register, measured_images=measured)


def appraise(policy: AppraisalPolicy, claims: Claims, *, init_data: bytes, at: datetime,
             references: ReferenceSnapshot, allow_insecure_root: bool,
             include_staged: bool = False) -> tuple[Appraisal, WorkloadClaims]:
    """Appraise verified claims and presented init-data; the passed appraisal and the workload
    claims (for tokens and records), or the first violated rule as a typed error."""
    tee = _check_platform(policy, claims)
    at = _check_time(at)
    typed = tee.appraise(claims, policy, at, allow_insecure_root)
    workload = evidence_workload(claims, init_data, required=policy.workload.require_init_data)
    return _decide(tee, policy, claims, typed, workload, at=at, references=references,
                   include_staged=include_staged), workload


def appraise_claims(policy: AppraisalPolicy, claims: Claims, workload: WorkloadClaims,
                    *, at: datetime, references: ReferenceSnapshot, allow_insecure_root: bool,
                    include_staged: bool = False) -> Appraisal:
    """The same decision on recorded claims and workload claims (module invariants)."""
    tee = _check_platform(policy, claims)
    at = _check_time(at)
    typed = tee.appraise(claims, policy, at, allow_insecure_root)
    register, value = _register(tee, claims)
    if register is None and workload.init_data_register is not None:
        raise _unbindable(tee, f"bound by {workload.init_data_register}")
    check_binding(workload, register, value)
    return _decide(tee, policy, claims, typed, workload, at=at, references=references,
                   include_staged=include_staged)


def _decide(tee: Tee, policy: AppraisalPolicy, claims: Claims, typed: Appraisal,
            workload: WorkloadClaims, *, at: datetime, references: ReferenceSnapshot,
            include_staged: bool) -> Appraisal:
    check_workload(workload, policy.workload)
    view = claims_view(claims, workload)
    matched: dict[str, str] = {}
    matches: list[RefMatch] = []
    would_match: list[str] = []
    for binding in policy.references:
        for key, match in _match_binding(binding, view, at, references, include_staged):
            matched[key] = f"{matched[key]}, {match.label}" if key in matched else match.label
            matches.append(match)
            if match.state is RefState.STAGED:
                would_match.append(f"{key}: {match.label}")
    activation = Activation(view)  # converted to CEL once, shared by the conditions
    for rule in policy.conditions:
        _check_condition(rule, view, activation)
    warnings = list(typed.warnings)
    deprecated = [m for m in matches if m.state is RefState.DEPRECATED]
    for match in dict.fromkeys(deprecated):
        warnings.append(f"{match.label} is deprecated ({_retires(references, match)})")
    vector = dict(typed.trust_vector)
    if vector.get("executables") == APPROVED_BOOT_ONLY and (
            _runtime_appraised(tee, policy, workload)):
        vector["executables"] = APPROVED
    status = typed.status
    if deprecated:
        vector["executables"] = max(vector.get("executables", 0), UNSAFE)
        status = WARNING
    return dataclasses.replace(
        typed, status=status, trust_vector=MappingProxyType(vector), warnings=tuple(warnings),
        matched=MappingProxyType(matched), would_match=tuple(would_match),
        tcb_debt=tee.tcb_debt(claims, policy.early_warning))


def _runtime_appraised(tee: Tee, policy: AppraisalPolicy, workload: WorkloadClaims) -> bool:
    """Whether the engine's steps pinned the runtime (a runtime register or its replayed
    images)."""
    runtime = tee.runtime_claims | WORKLOAD_RUNTIME_CLAIMS
    if any(b.claim in runtime for b in policy.references):
        return True
    return policy.workload.approved_images is not None and workload.measured_register is not None


def _retires(references: ReferenceSnapshot, match: RefMatch) -> str:
    for version in references.versions:
        if ((version.name, version.version) == (match.set_name, match.version)
                and version.retire_at is not None):
            return f"retires {_rfc3339(version.retire_at)}"
    return "no retirement date"


def _resolve(view: Mapping[str, object], dotted: str) -> object:
    value: object = view
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif (isinstance(value, list) and part.isascii() and part.isdigit()
              and int(part) < len(value)):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _match_binding(binding: ReferenceBinding, view: Mapping[str, object], at: datetime,
                   references: ReferenceSnapshot,
                   include_staged: bool) -> list[tuple[str, RefMatch]]:
    rule = f"reference_values.{binding.set_name}"
    value = _resolve(view, binding.claim)
    if value is _MISSING or value is None:
        raise MeasurementMismatch(f"claim {binding.claim} is absent from the evidence",
                                  rule=rule, expected=f"a value of {binding.set_name}",
                                  actual="absent" if value is _MISSING else "null")
    if isinstance(value, list):
        if not value:
            raise MeasurementMismatch(f"claim {binding.claim} is an empty list", rule=rule,
                                      expected=f"at least one value of {binding.set_name}",
                                      actual="[]")
        items = [(f"{binding.claim}.{i}", item) for i, item in enumerate(value)]
    else:
        items = [(binding.claim, value)]
    out: list[tuple[str, RefMatch]] = []
    for key, item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise MeasurementMismatch(f"claim {key} cannot be compared with reference values",
                                      rule=rule, expected="a string or integer claim",
                                      actual=_render(item))
        out.append((key, references.match(binding.set_name, str(item), at,
                                          include_staged=include_staged)))
    return out


def _render(value: object) -> str:
    if value is _MISSING:
        return "absent"
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _named_claims(paths: tuple[str, ...], view: Mapping[str, object]) -> str:
    """``path=value`` for each claim path a condition names (longest resolvable prefix)."""
    parts: list[str] = []
    for path in paths:
        segments = path.split(".")
        while len(segments) > 1 and _resolve(view, ".".join(segments)) is _MISSING:
            segments.pop()
        shown = ".".join(segments)
        parts.append(f"{shown}={_render(_resolve(view, shown))}")
    parts = list(dict.fromkeys(parts))
    text = ", ".join(parts) or "no claims named"
    return text if len(text) <= _MAX_ACTUAL else text[:_MAX_ACTUAL - 3] + "..."


def _check_condition(rule: ConditionRule, view: Mapping[str, object],
                     activation: Activation) -> None:
    expression = rule.condition.expression
    try:
        passed = rule.condition.evaluate(activation)
    except ConditionError as exc:
        raise error_for(rule.category, f"condition could not be evaluated: {exc}",
                        rule=f"conditions.{rule.name}", expected=expression,
                        actual=_named_claims(rule.condition.references, view)) from None
    if not passed:
        raise error_for(rule.category, rule.message or "condition failed",
                        rule=f"conditions.{rule.name}", expected=expression,
                        actual=_named_claims(rule.condition.references, view))


def early_warning(policy: AppraisalPolicy, claims: Claims) -> tuple[str, ...]:
    """Claims below the policy's next TCB floor (``tcb_early_warning``), as
    "reported_tcb.microcode 209 < next floor 220" / "tcb_date <date> < next floor <date>"."""
    return registry.of_claims(claims).tcb_debt(claims, policy.early_warning)
