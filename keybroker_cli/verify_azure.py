"""``keybroker verify EVIDENCE.json --tee az-snp-vtpm|az-tdx-vtpm``: Azure confidential VM
evidence (Trustee's JSON, v0 or v1) checked offline: the hardware report through the AMD chain
(the VCEK from the evidence or ``--collateral``) or the DCAP path (the TD quote and Intel
collateral from ``--collateral``), the runtime claims' binding, and the vTPM quote under the
bound HCLAkPub.

Invariants:
- This command composes the families (SNP, DCAP, TPM, Azure); the verifier modules stay apart.
- ``--insecure-simulator-root`` files are routed by content (AMD ARK [+ ASK] or DCAP root),
  as for ``--tee snp|tdx``; results then say the root is insecure.
- SNP reports must come from VMPL 0 (the paravisor's vTPM attests the whole VM), else
  PLATFORM_POLICY. Without ``--nonce`` extraData is not checked, and the output says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from keybroker_cli.evidence_input import UsageError, read_input, split_simulator_roots

AZURE = ("az-snp-vtpm", "az-tdx-vtpm")


def run_azure(args: argparse.Namespace,
              conclude: Callable[[Callable[[], tuple[Any, tuple[str, ...]]], datetime], int],
              load_collateral: Callable[[list[Any]], Any]) -> int:
    """Verify through ``conclude``; the exit code."""
    from keybroker.errors import Malformed, PlatformPolicyViolation  # noqa: PLC0415
    from keybroker.evidence.tpm_public import public_from_key  # noqa: PLC0415
    from keybroker.evidence.tpm_quote import (  # noqa: PLC0415
        ALG_RSASSA,
        TpmSignature,
        build_signature,
    )
    from verifier.azure.evidence import AzureEvidence, parse_azure_evidence  # noqa: PLC0415
    from verifier.azure.verify import vcek_table, verify_azure  # noqa: PLC0415
    from verifier.dcap.verify import DcapVerifier  # noqa: PLC0415
    from verifier.snp.trust import AmdTrustStore  # noqa: PLC0415
    from verifier.snp.verify import SnpVerifier  # noqa: PLC0415
    from verifier.tpm.claims import TpmClaims  # noqa: PLC0415
    from verifier.tpm_quote import BANK_IDS, verify_quote  # noqa: PLC0415

    if args.policy is not None or args.cert_table is not None:
        raise UsageError(f"--policy and --cert-table do not apply to --tee {args.tee}")
    try:
        nonce = bytes.fromhex(args.nonce) if args.nonce is not None else None
    except ValueError:
        raise UsageError(f"--nonce: not hex: {args.nonce!r}") from None
    if nonce is None:
        print("note: no --nonce given: the vTPM quote's extraData is not checked (freshness "
              "unproven)", file=sys.stderr)
    raw = read_input(args.file) or b""
    amd_roots, intel_roots = split_simulator_roots(list(args.insecure_simulator_root))
    if amd_roots or intel_roots:
        print("WARNING: trusting INSECURE simulator roots: "
              + ", ".join(str(p) for p in args.insecure_simulator_root), file=sys.stderr)
    try:
        trust = AmdTrustStore.pinned().with_simulator_roots(amd_roots)
    except Malformed as exc:
        raise UsageError(exc.detail) from None
    collateral = load_collateral(list(args.collateral))
    at = args.at or datetime.now(UTC)
    warnings: list[str] = []

    def snp(report: bytes, evidence: AzureEvidence) -> Any:
        table = vcek_table(evidence)
        claims = SnpVerifier(trust, collateral).verify(
            report, table, at=at, allow_missing_crl=args.allow_missing_crl)
        warnings.extend(claims.collateral_warnings)
        if claims.vmpl != 0:
            raise PlatformPolicyViolation("the SNP report is not from VMPL 0",
                                          rule="azure.vmpl", expected="0",
                                          actual=str(claims.vmpl))
        return claims

    def tdx(_tdreport: bytes, evidence: AzureEvidence) -> Any:
        if evidence.td_quote is None:
            raise UsageError("az-tdx-vtpm evidence without a td_quote")
        verifier = DcapVerifier(collateral, simulator_roots=intel_roots)
        claims = verifier.verify_tdx(evidence.td_quote, at=at,
                                     allow_missing_crl=args.allow_missing_crl)
        warnings.extend(claims.tcb.collateral_warnings)
        return claims

    def quote(evidence: AzureEvidence, ak_key: Any) -> TpmClaims:
        ak = public_from_key(ak_key)
        banks = {BANK_IDS["sha256"]: dict(enumerate(evidence.pcrs))}
        # Azure hands out the bare RSASSA-PKCS1-v1_5 SHA-256 signature of the HCL's AK.
        signature = build_signature(TpmSignature(ALG_RSASSA, BANK_IDS["sha256"],
                                                 evidence.tpm_signature))
        verified = verify_quote(evidence.tpm_message, signature, ak, banks, nonce=nonce)
        return TpmClaims.of(verified, ak, nonce_checked=nonce is not None, named=False)

    def verified() -> tuple[Any, tuple[str, ...]]:
        evidence = parse_azure_evidence(raw)
        claims = verify_azure(evidence, args.tee, hardware=snp if args.tee == AZURE[0] else tdx,
                              quote=quote)
        return claims, tuple(warnings)

    return conclude(verified, at)
