"""Policy test cases: recorded or hand-written claims with the decision a policy must reach.

Invariants:
- A case is a ``PolicyTestCase`` document (schema ``policy-test-case``) read with
  ``keybroker.document``; every error in it is ``Malformed`` with ``file:line``. Its evidence is
  a ``claims.as_dict()`` map (inline, or ``evidence_file`` relative to the case file: a claims
  JSON or a ``keybroker verify --json`` output, whose ``claims`` is used, and whose
  ``workload`` is the default for the case's ``workload``). ``set`` overrides
  dotted paths that must already exist in the evidence (a typo is an error, never a new field)
  and the result must still be valid claims (``platform_claims_from_dict``).
- A case runs the real decision engine (``verifier.policy.decision.appraise_claims``) at the case's
  ``at`` (default: the caller's ``now``), with the reference snapshot the caller passes; there
  is no second implementation of any rule here.
- ``--refs`` documents are checked exactly as an import checks them (a throwaway store in a
  temporary directory, public API only) and then count as ACTIVE versions.
- Outcome: ``affirming`` / ``warning`` for a passed appraisal, ``deny`` with the typed error's
  category and rule. A case passes when the decision equals ``expect.decision`` and, where the
  case names them, the category and the rule are equal too.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from keybroker.document import Document, read_document
from keybroker.errors import KeybrokerError, Malformed
from verifier.claims_view import platform_claims_from_dict
from verifier.policy.decision import appraise_claims
from verifier.policy.model import AppraisalPolicy
from verifier.reference.store import ReferenceStore
from verifier.reference.values import ReferenceSnapshot, RefState
from verifier.tee import Claims
from verifier.workload import NO_WORKLOAD, WorkloadClaims

SCHEMA_NAME = "policy-test-case"
CASE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Outcome:
    """What the engine decided for one appraisal."""

    decision: str  # "affirming" | "warning" | "deny"
    category: str | None = None
    rule: str | None = None
    reason: str = ""
    expected: str = ""
    actual: str = ""

    def render(self) -> str:
        """``affirming`` or ``deny TCB_POLICY snp.min_tcb.microcode``."""
        return " ".join(p for p in (self.decision, self.category, self.rule) if p)

    @classmethod
    def denied(cls, err: KeybrokerError) -> Outcome:
        """The outcome of a typed rejection."""
        return cls("deny", err.category.value, err.rule or None, err.reason, err.expected,
                   err.actual)


@dataclass(frozen=True)
class Expectation:
    """What a case requires (``None`` fields are not checked)."""

    decision: str
    category: str | None = None
    rule: str | None = None

    def render(self) -> str:
        """``deny PLATFORM_POLICY snp.allow_debug``."""
        return " ".join(p for p in (self.decision, self.category, self.rule) if p)

    def met_by(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` satisfies this expectation."""
        return (outcome.decision == self.decision
                and self.category in (None, outcome.category)
                and self.rule in (None, outcome.rule))


@dataclass(frozen=True)
class PolicyCase:
    """One loaded test case."""

    name: str
    source: str
    at: datetime | None
    claims: Claims
    workload: WorkloadClaims
    insecure: bool
    expect: Expectation


@dataclass(frozen=True)
class CaseResult:
    """A case and what happened to it."""

    case: PolicyCase
    outcome: Outcome

    @property
    def passed(self) -> bool:
        """Whether the outcome meets the expectation."""
        return self.case.expect.met_by(self.outcome)

    def line(self) -> str:
        """``PASS name`` / ``FAIL name: expected ..., got ...``."""
        if self.passed:
            return f"PASS {self.case.name}"
        got = self.outcome.render()
        if self.outcome.decision == "deny":
            got += f" ({self.outcome.reason})"
        return f"FAIL {self.case.name}: expected {self.case.expect.render()}, got {got}"


def _evidence_from_file(doc: Document, base: Path, name: str
                        ) -> tuple[dict[str, object], object]:
    """(claims, workload claims of a ``verify --json`` output or None)."""
    path = (base / name).resolve()
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise doc.fail(["evidence_file"], "cannot read evidence file", "a readable JSON file",
                       f"{path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise doc.fail(["evidence_file"], "evidence file is not JSON", "claims JSON",
                       f"{path}: {exc}") from None
    workload: object = None
    if isinstance(loaded, dict) and "platform" not in loaded and "claims" in loaded:
        workload = loaded.get("workload") or None  # a `keybroker verify --json` output
        loaded = loaded["claims"]
    if not isinstance(loaded, dict) or not loaded:
        raise doc.fail(["evidence_file"], "evidence file holds no claims",
                       "a claims map (or verify --json output with claims)", loaded)
    return {str(k): v for k, v in loaded.items()}, workload


def _override(doc: Document, evidence: dict[str, object], dotted: str, value: object) -> None:
    node: object = evidence
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict) and part in node:
            if last:
                node[part] = value
            else:
                node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            raise doc.fail(["set", dotted], "no such evidence field",
                           "an existing dotted path into the evidence", dotted)


def _plain(value: object) -> object:
    """Datetimes in fixtures become RFC 3339 strings, as in ``as_dict()``."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _copy(value: object) -> object:
    return json.loads(json.dumps(_plain(value)))


def case_from_document(doc: Document, base: Path) -> PolicyCase:
    """A case from a schema-valid document; ``base`` resolves ``evidence_file``."""
    data = doc.data
    file_workload: object = None
    if "evidence" in data:
        evidence = _copy(data["evidence"])
        where: list[str | int] = ["evidence"]
        if not isinstance(evidence, dict):
            raise doc.fail(where, "wrong type", "a claims map", evidence)
    elif isinstance(data.get("evidence_file"), str):
        evidence, file_workload = _evidence_from_file(doc, base, str(data["evidence_file"]))
        where = ["evidence_file"]
    else:
        raise doc.fail([], "no evidence", "evidence or evidence_file", "neither")
    overrides = data.get("set") or {}
    if not isinstance(overrides, Mapping):
        raise doc.fail(["set"], "wrong type", "a map of dotted paths", overrides)
    for dotted, value in overrides.items():
        _override(doc, evidence, str(dotted), _copy(value))
        where = ["set"]
    try:
        claims = platform_claims_from_dict(evidence)
    except Malformed as err:
        raise doc.fail(where, f"evidence is not valid claims: {err.reason}", err.expected,
                       err.actual) from None
    workload = NO_WORKLOAD
    declared = data.get("workload", file_workload)
    if declared is not None:
        where = ["workload"] if "workload" in data else ["evidence_file"]
        raw_workload = _copy(declared)
        if not isinstance(raw_workload, dict):
            raise doc.fail(where, "wrong type", "workload claims map", raw_workload)
        try:
            workload = WorkloadClaims.from_dict(raw_workload)
        except Malformed as err:
            raise doc.fail(where, f"not valid workload claims: {err.reason}",
                           err.expected, err.actual) from None
    expect = data.get("expect")
    if not isinstance(expect, Mapping):
        raise doc.fail(["expect"], "wrong type", "a map", expect)
    at = data.get("at")
    return PolicyCase(
        name=str(data.get("name", Path(doc.source).stem)),
        source=doc.source,
        at=at if isinstance(at, datetime) else None,
        claims=claims,
        workload=workload,
        insecure=bool(data.get("insecure", False)),
        expect=Expectation(
            decision=str(expect.get("decision")),
            category=None if expect.get("category") is None else str(expect["category"]),
            rule=None if expect.get("rule") is None else str(expect["rule"]),
        ),
    )


def load_case(path: Path) -> PolicyCase:
    """Read and check one case file."""
    return case_from_document(read_document(path, SCHEMA_NAME), path.resolve().parent)


def case_files(directory: Path) -> list[Path]:
    """The case files (``*.yaml``, ``*.yml``) of ``directory``, sorted by name."""
    if not directory.is_dir():
        raise Malformed(f"{directory}: not a directory of test cases", rule="policy.file",
                        expected="a directory", actual=str(directory))
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in CASE_SUFFIXES)


def evaluate(policy: AppraisalPolicy, claims: Claims, workload: WorkloadClaims, *,
             at: datetime, references: ReferenceSnapshot, allow_insecure_root: bool,
             include_staged: bool = False) -> tuple[Outcome, tuple[str, ...], tuple[str, ...]]:
    """(outcome, would_match, tcb_debt) of one appraisal by the real engine."""
    try:
        appraisal = appraise_claims(policy, claims, workload, at=at, references=references,
                                    allow_insecure_root=allow_insecure_root,
                                    include_staged=include_staged)
    except KeybrokerError as err:
        return Outcome.denied(err), (), ()
    return (Outcome(appraisal.status), tuple(appraisal.would_match),
            tuple(appraisal.tcb_debt))


def run_case(policy: AppraisalPolicy, case: PolicyCase, references: ReferenceSnapshot, *,
             now: datetime) -> CaseResult:
    """Appraise one case's claims with ``policy``."""
    outcome, _, _ = evaluate(policy, case.claims, case.workload, at=case.at or now,
                             references=references, allow_insecure_root=case.insecure)
    return CaseResult(case, outcome)


def run_cases(policy: AppraisalPolicy, cases: Sequence[PolicyCase],
              references: ReferenceSnapshot, *, now: datetime) -> list[CaseResult]:
    """Run every case, in order."""
    return [run_case(policy, case, references, now=now) for case in cases]


def active_references(documents: Sequence[tuple[bytes, str]], *, now: datetime
                      ) -> ReferenceSnapshot:
    """A snapshot in which each ReferenceValues document (bytes, source) is an ACTIVE set
    version, checked exactly as an import would check it."""
    with tempfile.TemporaryDirectory(prefix="keybroker-refs-") as tmp:
        store = ReferenceStore(Path(tmp) / "refs.db")
        try:
            for raw, source in documents:
                version = store.import_document(raw, source, provenance="policy-test",
                                                author="policy-test", comment=source, now=now)
                store.transition(version.name, version.version, RefState.ACTIVE,
                                 author="policy-test", comment=source, now=now)
            return store.snapshot()
        finally:
            store.close()
