"""Benchmark: appraisal policy evaluation cost per request, against one P-384 signature verify.

Measures in one run, on one core:

- ``verifier.policy.decision.appraise`` for a realistic policy on verified simulator claims: the
  typed platform section (SEV-SNP: TCB floor, debug / VMPL / migration / SMT / provisional
  firmware switches; TDX: TCB status, advisories, attributes), the init-data binding and
  workload section (names, approved images), a reference-value binding of the launch
  measurement to an active set (several versions and values), three CEL conditions and the
  TCB early warning (which fires, so its strings are built too);
- the parts separately: the typed appraisal only, the workload claims (init-data digest check
  and TOML parse) and workload policy, the claims view the CEL and reference steps read, the
  reference matching only, the CEL conditions only as the engine runs them (one shared
  ``Activation``: each variable a condition names is converted to CEL values once per
  request), and inside them what that one conversion of the claims view costs; the early
  warning only;
- the cryptographic floor of a request: one ECDSA P-384 / SHA-384 verify over an SEV-SNP
  report-sized message (672 bytes, the signed part of a report).

Prints microseconds per call of each and

    policy_ratio = appraise µs / P-384 verify µs

SEV-SNP claims come from the simulator (``attester_agent.simulator.snp``) verified by
``SnpVerifier`` under the simulator root (the ``--insecure-simulator`` path, hence
``allow_insecure_root=True``); TDX claims from the DCAP simulator verified by
``DcapVerifier`` with its generated collateral, with a container image measured into RTMR3 and
the runtime log replayed. Each measurement is repeated for ``--rounds`` rounds and the best
round counts (least disturbed by other load on the machine).

Usage: python bench/policy.py [--tee snp|tdx] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from celpy.adapter import json_to_cel
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from timing import per_op

from attester_agent.simulator.dcap import DcapTestCa, TdxSimulator
from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.condition import Activation
from keybroker.evidence.runtime_log import encode_log, image_event
from verifier.claims_view import claims_view, lookup
from verifier.collateral.cache import CollateralStore
from verifier.dcap.appraisal import appraise_tdx
from verifier.dcap.claims import TdxClaims
from verifier.dcap.trust import IntelTrustStore
from verifier.dcap.verify import DcapVerifier
from verifier.eventlog.measured import td_event_claims
from verifier.policy.compile import parse_policy
from verifier.policy.decision import appraise, early_warning, evidence_workload
from verifier.policy.model import AppraisalPolicy
from verifier.reference.values import ReferenceSnapshot, RefSetVersion, RefState, RefValue
from verifier.snp.appraisal import appraise_snp
from verifier.snp.claims import SnpClaims
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier
from verifier.tee import Claims
from verifier.workload import check_workload

SNP_REPORT_SIGNED_BYTES = 0x2A0
AT = datetime.now(UTC).replace(microsecond=0)
NOT_BEFORE = AT - timedelta(days=90)
NOT_AFTER = AT + timedelta(days=365)
IMAGES = tuple("sha256:" + hashlib.sha256(f"payments image {i}".encode()).hexdigest()
               for i in range(4))
INIT_DATA = ('[workload]\nname = "payments-api"\n'
             f'images = ["{IMAGES[0]}", "{IMAGES[1]}"]\n'
             '\n[agent]\npolicy = "default"\n'
             'policy_digest = "sha256:' + "ab" * 32 + '"\n').encode()
LAUNCH = hashlib.sha384(b"payments guest image 2026.11").digest()

WORKLOAD = f"""workload:
  require_init_data: true
  names: [payments-api, payments-worker, payments-batch]
  approved_images: [{", ".join(f'"{i}"' for i in IMAGES)}]
"""

SNP_POLICY = f"""kind: AppraisalPolicy
name: snp-prod
platform: sev-snp
description: Production payments guests on Milan / Genoa / Turin.
snp:
  min_tcb: {{bootloader: 3, tee: 0, snp: 8, microcode: 115}}
  allow_debug: false
  allowed_vmpls: [0]
  allow_migration_agent: false
  allow_smt: true
  allow_provisional_firmware: false
{WORKLOAD}reference_values:
  - claim: evidence.measurement
    set: snp-launch
tcb_early_warning:
  snp_min_tcb: {{microcode: 220, snp: 22}}
conditions:
  - name: vcek-only
    when: 'evidence.signing_key == "vcek"'
  - name: supported-product
    when: 'evidence.product in ["Milan", "Genoa", "Turin"] && evidence.vmpl == 0'
  - name: default-agent-policy
    when: 'workload.agent_policy == "default" && size(workload.images) <= 4'
    category: MEASUREMENT
"""

TDX_POLICY = f"""kind: AppraisalPolicy
name: tdx-prod
platform: tdx
description: Production payments trust domains.
tdx:
  accepted_tcb_statuses: [UpToDate]
  allowed_advisories: []
  allow_migratable: false
  allow_perfmon: false
  allow_profiling: false
  require_sept_ve_disable: true
{WORKLOAD}reference_values:
  - claim: evidence.mr_td
    set: tdx-mrtd
tcb_early_warning:
  min_tcb_date: {(AT + timedelta(days=3650)).strftime("%Y-%m-%dT%H:%M:%SZ")}
conditions:
  - name: up-to-date-modules
    when: 'evidence.tcb.tdx_status == "UpToDate" && evidence.tcb.qe_status == "UpToDate"'
  - name: no-debug
    when: '!evidence.td_attributes.debug && !evidence.td_attributes.migratable'
  - name: default-agent-policy
    when: 'workload.agent_policy == "default" && size(workload.measured_images) >= 1'
    category: MEASUREMENT
"""


@dataclass(frozen=True)
class Scenario:
    """A compiled policy, verified claims, the init-data presented and a reference snapshot."""

    policy: AppraisalPolicy
    claims: Claims
    init_data: bytes
    references: ReferenceSnapshot



def snapshot(set_name: str, current: bytes) -> ReferenceSnapshot:
    """A set with a deprecated, an active (4 values, one of them ``current``) and a staged
    version, as after a few image roll-outs."""
    def values(tag: str, n: int) -> tuple[RefValue, ...]:
        return tuple(RefValue(f"{tag}-{i}", hashlib.sha384(f"{tag} {i}".encode()).hexdigest(),
                              NOT_BEFORE, NOT_AFTER) for i in range(n))

    def version(number: int, state: RefState, vals: tuple[RefValue, ...],
                retire_at: datetime | None = None) -> RefSetVersion:
        return RefSetVersion(set_name, number, state, retire_at, "admin:secops", "secops",
                             NOT_BEFORE, vals)

    active = (*values("image-2026.10", 3),
              RefValue("image-2026.11", current.hex(), NOT_BEFORE, NOT_AFTER))
    return ReferenceSnapshot([
        version(1, RefState.DEPRECATED, values("image-2026.08", 2), AT + timedelta(days=30)),
        version(2, RefState.ACTIVE, active),
        version(3, RefState.STAGED, values("image-2026.12", 2)),
    ])


def snp_scenario(directory: Path) -> Scenario:
    """Simulator SEV-SNP claims (Milan), verified under the simulator root."""
    ca = SnpTestCa.generate("Milan")
    ca.save(directory)
    trust = AmdTrustStore.pinned().with_simulator_roots([directory / "ark.pem"])
    verifier = SnpVerifier(trust, CollateralStore.empty())
    sim = SnpSimulator(ca, measurement=LAUNCH, host_data=hashlib.sha256(INIT_DATA).digest())
    raw, table = sim.attest(hashlib.sha512(b"report data").digest())
    claims = verifier.verify(raw, table, at=AT)
    policy = parse_policy(SNP_POLICY.encode(), "snp-prod.yaml", version=7)
    return Scenario(policy, claims, INIT_DATA, snapshot("snp-launch", LAUNCH))


def tdx_scenario(directory: Path) -> Scenario:
    """Simulator TDX claims verified with generated collateral; one image measured into RTMR3
    and the runtime log replayed."""
    ca = DcapTestCa.generate()
    ca.write_collateral(directory, now=AT)
    verifier = DcapVerifier(CollateralStore.load([directory]),
                            simulator_roots=[IntelTrustStore.from_der(ca.root_der)])
    sim = TdxSimulator(ca, mr_config_id=hashlib.sha384(INIT_DATA).digest())
    event = image_event(IMAGES[0])
    sim.extend_rtmr3(event)
    claims = verifier.verify_tdx(sim.quote(hashlib.sha512(b"report data").digest()), at=AT)
    events = td_event_claims(claims.rtmrs, ccel_table=None, ccel_data=None,
                             runtime_log=encode_log([event]))
    claims = replace(claims, events=events)
    policy = parse_policy(TDX_POLICY.encode(), "tdx-prod.yaml", version=7)
    return Scenario(policy, claims, INIT_DATA, snapshot("tdx-mrtd", sim.mr_td))


def p384_verify() -> Callable[[], object]:
    """One ECDSA P-384 / SHA-384 verify over an SEV-SNP report-sized message."""
    key = ec.generate_private_key(ec.SECP384R1())
    message = os.urandom(SNP_REPORT_SIGNED_BYTES)
    signature = key.sign(message, ec.ECDSA(hashes.SHA384()))
    public = key.public_key()
    return lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA384()))


def operations(s: Scenario) -> dict[str, Callable[[], object]]:
    """The timed calls: the whole decision, its parts, and the P-384 floor."""
    def full() -> object:
        return appraise(s.policy, s.claims, init_data=s.init_data, at=AT,
                        references=s.references, allow_insecure_root=True)

    def typed() -> object:
        if isinstance(s.claims, TdxClaims):
            return appraise_tdx(s.claims, s.policy, at=AT, allow_insecure_root=True)
        assert isinstance(s.claims, SnpClaims)
        return appraise_snp(s.claims, s.policy, allow_insecure_root=True)

    def workload() -> object:
        claims = evidence_workload(s.claims, s.init_data, required=True)
        check_workload(claims, s.policy.workload)
        return claims

    bound = evidence_workload(s.claims, s.init_data, required=True)
    view = claims_view(s.claims, bound)

    def references() -> object:
        return [s.references.match(b.set_name, str(lookup(view, b.claim)), AT)
                for b in s.policy.references]

    def conditions() -> object:
        shared = Activation(view)
        return [rule.condition.evaluate(shared) for rule in s.policy.conditions]

    return {
        "appraise (whole policy)": full,
        "  typed platform section": typed,
        "  init-data + workload section": workload,
        "  claims view (as_dict)": lambda: claims_view(s.claims, bound),
        "  reference matching": references,
        "  CEL conditions": conditions,
        "    json_to_cel(claims view), once": lambda: {k: json_to_cel(v)  # type: ignore[arg-type]
                                                     for k, v in view.items()},
        "  TCB early warning": lambda: early_warning(s.policy, s.claims),
        "ECDSA P-384 verify": p384_verify(),
    }


def check(s: Scenario) -> None:
    """The scenario is realistic: affirming, reference-matched, with TCB debt."""
    appraisal, workload = appraise(s.policy, s.claims, init_data=s.init_data, at=AT,
                                   references=s.references, allow_insecure_root=True)
    assert appraisal.status == "affirming", appraisal.status
    assert appraisal.matched, "no reference match"
    assert appraisal.tcb_debt, "no TCB debt"
    assert workload.name == "payments-api", workload


def main() -> int:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tee", default="snp", choices=["snp", "tdx"])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        scenario = (tdx_scenario if args.tee == "tdx" else snp_scenario)(Path(tmp))
    check(scenario)
    ops = operations(scenario)
    best = dict.fromkeys(ops, float("inf"))
    for _ in range(args.rounds):
        for name, fn in ops.items():
            best[name] = min(best[name], per_op(fn, args.seconds))
    policy = scenario.policy
    print(f"{args.tee}: policy {policy.policy_id}: {len(policy.conditions)} CEL conditions, "
          f"{len(policy.references)} reference binding(s), "
          f"{len(policy.workload.approved_images or ())} approved images; "
          f"best of {args.rounds} rounds x {args.seconds:.1f} s")
    for name, seconds in best.items():
        print(f"{name:<34} {seconds * 1e6:9.1f} µs")
    conversion = best["    json_to_cel(claims view), once"]
    evaluation = best["  CEL conditions"] - conversion
    print(f"{'    CEL evaluation only':<34} {evaluation * 1e6:9.1f} µs")
    without = best["appraise (whole policy)"] - best["  CEL conditions"]
    print(f"{'appraise - CEL conditions':<34} {without * 1e6:9.1f} µs")
    ratio = best["appraise (whole policy)"] / best["ECDSA P-384 verify"]
    print(f"policy_ratio = {ratio:.2f}  (appraise µs / P-384 verify µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
