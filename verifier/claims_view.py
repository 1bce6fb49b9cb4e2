"""The claims view: the JSON that policies, CEL conditions, reference-value bindings, recorded
appraisals and policy test fixtures see, and its exact inverse back to typed claims.

Invariants:
- ``claims_view`` is ``{"platform", "evidence", "workload"}`` where ``evidence`` is the
  platform claims' ``as_dict()`` and ``workload`` the ``WorkloadClaims.as_dict()``; nothing
  else, so a CEL expression and a reference binding name the same paths as tokens and records.
- ``platform_claims_from_dict`` is the exact inverse of every platform's ``as_dict()``, chosen
  by ``evidence.platform`` through the registry (each TEE's ``view.py`` holds its inverse).
  Input is untrusted; an unknown platform is ``Malformed`` (rule ``claims.schema``) naming
  ``evidence.platform``.
- ``sample_activation(platform)`` is a fully populated, realistic view (no null, no empty list)
  used to type-check CEL conditions at policy compile time; it is a type template, not
  evidence (its workload has every field set even where a platform cannot bind init-data).
- ``lookup`` never raises ``KeyError`` / ``IndexError``: a path that does not exist is
  ``Malformed`` (rule ``claims.path``).
"""

from __future__ import annotations

from collections.abc import Mapping

from keybroker.errors import Malformed
from verifier import registry
from verifier.claim_fields import describe
from verifier.tee import Claims
from verifier.workload import WorkloadClaims

VIEW_VARIABLES = ("platform", "evidence", "workload")
_SAMPLE_IMAGE = "sha256:" + "ab" * 32
_SAMPLE_REGISTER = "INIT_DATA"  # a platform that cannot bind init-data still gets a template
_SAMPLE_DIGEST = bytes.fromhex("2c" * 48)


def platform_of(claims: Claims) -> str:
    """The platform name of ``claims`` (``sev-snp``, ``tdx``, ``sgx``, ...)."""
    return registry.of_claims(claims).platform


def platform_claims_from_dict(evidence: Mapping[str, object]) -> Claims:
    """Typed claims from an ``as_dict()`` map of any platform (chosen by its ``platform``)."""
    if not isinstance(evidence, Mapping):
        raise Malformed("claims: wrong type at 'evidence'", rule="claims.schema",
                        expected="a map", actual=describe(evidence))
    platform = evidence.get("platform")
    if not isinstance(platform, str) or platform not in registry.platforms():
        raise Malformed("claims: unknown platform at 'evidence.platform'", rule="claims.schema",
                        expected="one of " + ", ".join(registry.platforms()),
                        actual=describe(platform))
    return registry.by_platform(platform).claims_from_dict(evidence)


def claims_view(claims: Claims, workload: WorkloadClaims) -> dict[str, object]:
    """The view policies and CEL conditions see (module invariants)."""
    return {"platform": platform_of(claims), "evidence": claims.as_dict(),
            "workload": workload.as_dict()}


def lookup(view: Mapping[str, object], dotted: str) -> object:
    """The value at a dotted path (``evidence.tcb.status``; list items by index,
    ``evidence.cpuid.0``); ``Malformed`` when the path does not exist."""
    value: object = view
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif (isinstance(value, list | tuple) and part.isdigit() and part.isascii()
              and int(part) < len(value)):
            value = value[int(part)]
        else:
            raise Malformed(f"claims: no claim at '{'.'.join(walked)}'", rule="claims.path",
                            expected="an existing claim path such as evidence.measurement",
                            actual=dotted)
    return value


def sample_claims(platform: str) -> tuple[Claims, WorkloadClaims]:
    """Realistic, fully populated claims and workload claims for ``platform``."""
    tee = registry.by_platform(platform)
    claims = tee.sample_claims()
    register = tee.init_data_register
    name = register.name if register is not None else _SAMPLE_REGISTER
    digest = tee.init_data_value(claims) if register is not None else _SAMPLE_DIGEST
    workload = WorkloadClaims(
        init_data_register=name, init_data_digest=digest.hex(), name="demo",
        images=(_SAMPLE_IMAGE,), agent_policy="default",
        agent_policy_digest="sha256:" + "cd" * 32, measured_register="RTMR3",
        measured_images=(_SAMPLE_IMAGE,))
    return claims, workload


def sample_activation(platform: str) -> dict[str, object]:
    """The CEL variables (``platform``, ``evidence``, ``workload``) of a fully populated,
    realistic appraisal of ``platform`` (module invariants)."""
    claims, workload = sample_claims(platform)
    return claims_view(claims, workload)
