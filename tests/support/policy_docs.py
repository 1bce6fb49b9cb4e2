"""Builders of small appraisal policy YAML documents for tests (schema ``appraisal-policy``).

Each builder starts from a minimal valid policy of its platform and applies keyword overrides to
its platform section; an override of ``None`` removes that key. Top-level sections
(``workload``, ``reference_values``, ``tcb_early_warning``, ``conditions``, ``description``) are
separate keywords. Values may be Python objects: ``bytes`` become hex strings, tuples and sets
become lists, aware datetimes become YAML timestamps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from keybroker.strict_yaml import dump_yaml
from verifier.policy.compile import parse_policy
from verifier.policy.model import AppraisalPolicy

DEFAULT_MEASUREMENT = bytes.fromhex("ab" * 48)
DEFAULT_MRTD = bytes.fromhex("11" * 48)
DEFAULT_MRENCLAVE = bytes.fromhex("aa" * 32)
ZERO_TCB = {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}
_PLATFORMS = {"sev-snp": "snp", "tdx": "tdx", "sgx": "sgx"}


def plain(value: object) -> object:
    """``value`` with bytes as hex, tuples/sets as lists and mappings as dicts."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)  # type: ignore[type-var]
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def to_yaml(data: Mapping[str, object]) -> bytes:
    """A YAML document of ``data`` (see ``plain`` for the conversions)."""
    return dump_yaml(plain(data))


def policy_yaml(platform: str, section: Mapping[str, object], *, name: str = "p",
                description: str | None = None,
                workload: Mapping[str, object] | None = None,
                reference_values: Sequence[Mapping[str, str] | tuple[str, str]] | None = None,
                tcb_early_warning: Mapping[str, object] | None = None,
                conditions: Sequence[Mapping[str, object]] | None = None) -> bytes:
    """A policy document for ``platform`` with ``section`` as its platform section.
    ``reference_values`` items may be ``(claim, set)`` pairs."""
    doc: dict[str, object] = {"kind": "AppraisalPolicy", "name": name, "platform": platform}
    if description is not None:
        doc["description"] = description
    doc[_PLATFORMS[platform]] = dict(section)
    if workload is not None:
        doc["workload"] = dict(workload)
    if reference_values is not None:
        doc["reference_values"] = [
            {"claim": r[0], "set": r[1]} if isinstance(r, tuple) else dict(r)
            for r in reference_values]
    if tcb_early_warning is not None:
        doc["tcb_early_warning"] = dict(tcb_early_warning)
    if conditions is not None:
        doc["conditions"] = [dict(c) for c in conditions]
    return to_yaml(doc)


def _merged(defaults: Mapping[str, object], overrides: Mapping[str, object]
            ) -> dict[str, object]:
    out = dict(defaults)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def snp_policy_yaml(name: str = "snp-test", *, description: str | None = None,
                    workload: Mapping[str, object] | None = None,
                    reference_values: Sequence[Mapping[str, str] | tuple[str, str]] | None = None,
                    tcb_early_warning: Mapping[str, object] | None = None,
                    conditions: Sequence[Mapping[str, object]] | None = None,
                    **snp: Any) -> bytes:
    """An SEV-SNP policy: ``measurements`` [DEFAULT_MEASUREMENT], ``min_tcb`` all zero, the
    rest strict defaults, then ``snp`` overrides."""
    section = _merged({"measurements": [DEFAULT_MEASUREMENT], "min_tcb": ZERO_TCB}, snp)
    return policy_yaml("sev-snp", section, name=name, description=description,
                       workload=workload, reference_values=reference_values,
                       tcb_early_warning=tcb_early_warning, conditions=conditions)


def tdx_policy_yaml(name: str = "tdx-test", *, description: str | None = None,
                    workload: Mapping[str, object] | None = None,
                    reference_values: Sequence[Mapping[str, str] | tuple[str, str]] | None = None,
                    tcb_early_warning: Mapping[str, object] | None = None,
                    conditions: Sequence[Mapping[str, object]] | None = None,
                    **tdx: Any) -> bytes:
    """A TDX policy: ``mrtd`` [DEFAULT_MRTD], the rest strict defaults, then ``tdx``
    overrides."""
    section = _merged({"mrtd": [DEFAULT_MRTD]}, tdx)
    return policy_yaml("tdx", section, name=name, description=description,
                       workload=workload, reference_values=reference_values,
                       tcb_early_warning=tcb_early_warning, conditions=conditions)


def sgx_policy_yaml(name: str = "sgx-test", *, description: str | None = None,
                    workload: Mapping[str, object] | None = None,
                    reference_values: Sequence[Mapping[str, str] | tuple[str, str]] | None = None,
                    tcb_early_warning: Mapping[str, object] | None = None,
                    conditions: Sequence[Mapping[str, object]] | None = None,
                    **sgx: Any) -> bytes:
    """An SGX policy: ``mrenclave`` [DEFAULT_MRENCLAVE], the rest strict defaults, then
    ``sgx`` overrides."""
    section = _merged({"mrenclave": [DEFAULT_MRENCLAVE]}, sgx)
    return policy_yaml("sgx", section, name=name, description=description,
                       workload=workload, reference_values=reference_values,
                       tcb_early_warning=tcb_early_warning, conditions=conditions)


def compiled(raw: bytes, version: int = 1, source: str = "test-policy.yaml") -> AppraisalPolicy:
    """``parse_policy`` of a built document (default version 1, as if stored once)."""
    return parse_policy(raw, source, version)


def with_rules(policy: AppraisalPolicy, **changes: object) -> AppraisalPolicy:
    """``policy`` with fields of its compiled platform section replaced (for values a document
    cannot express, such as an empty allow-list, which compiling refuses)."""
    rules = dataclasses.replace(policy.rules, **changes)  # type: ignore[type-var]
    return dataclasses.replace(policy, rules=rules)


def with_workload(policy: AppraisalPolicy, **changes: object) -> AppraisalPolicy:
    """``policy`` with fields of its compiled workload rules replaced."""
    return dataclasses.replace(policy, workload=dataclasses.replace(policy.workload,
                                                                    **changes))  # type: ignore[arg-type]
