"""Typed appraisal of verified Nitro claims against the ``nitro:`` section of one policy.

Invariants:
- Input is ``NitroClaims`` of a document that verified (signature, chain, timestamp); output
  is an ``Appraisal`` or the first violated rule's typed error.
- Categories: a simulator root without the insecure switch -> CHAIN_UNTRUSTED; a debug-mode
  enclave (PCR0-2 all zero) without ``allow_debug`` -> PLATFORM_POLICY; a PCR the policy names
  that the document does not carry, or carries with a value not listed, and a PCR8 that is
  not the mark of a listed signer -> MEASUREMENT. Nitro has no TCB and no revocation list:
  no TCB debt and no collateral warnings.
"""

from __future__ import annotations

from keybroker.errors import ChainUntrusted, MeasurementMismatch, PlatformPolicyViolation
from verifier.nitro.claims import NitroClaims
from verifier.nitro.policy import nitro_section
from verifier.verdict import TRUST_VECTOR_AFFIRMING, Appraisal, PolicyRef, passed


def appraise_nitro(claims: NitroClaims, policy: PolicyRef, *,
                   allow_insecure_root: bool = False) -> Appraisal:
    """Appraise verified Nitro claims against ``policy`` (module invariants)."""
    nitro = nitro_section(policy)
    if claims.insecure and not allow_insecure_root:
        raise ChainUntrusted("the document chains to a simulator (insecure test) root",
                             rule="nitro.insecure_root", expected="the AWS Nitro root G1",
                             actual="simulator root")
    if claims.debug and not nitro.allow_debug:
        raise PlatformPolicyViolation("the enclave runs in debug mode (PCR0-2 all zero)",
                                      rule="nitro.debug", expected="a production enclave",
                                      actual="debug mode")
    for pcr, accepted in sorted(nitro.pcrs.items()):
        value = claims.pcrs.get(pcr)
        if value is None:
            raise MeasurementMismatch(f"PCR{pcr} is not in the document", rule="nitro.pcrs",
                                      expected=f"PCR{pcr} (48 bytes)", actual="absent")
        if value not in accepted:
            raise MeasurementMismatch(f"PCR{pcr} is not an accepted value", rule="nitro.pcrs",
                                      expected=f"one of {len(accepted)}", actual=value.hex())
    if nitro.signers and claims.pcrs.get(8) not in nitro.signer_pcr8:
        pcr8 = claims.pcrs.get(8)
        raise MeasurementMismatch("the image is not signed by an accepted certificate (PCR8)",
                                  rule="nitro.signers",
                                  expected=f"one of {len(nitro.signers)} signers",
                                  actual=pcr8.hex() if pcr8 else "absent")
    return passed(policy, TRUST_VECTOR_AFFIRMING)
