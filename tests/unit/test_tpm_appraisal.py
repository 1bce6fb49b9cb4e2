"""The ``tpm:`` policy section and the TPM appraisal: strict compiling, each rule's category,
and the claims view (the exact inverse of ``TpmClaims.as_dict``)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.view_checks import round_trips_or_is_malformed

from keybroker.errors import Category, KeybrokerError, Malformed
from verifier.eventlog.secure_boot import SecureBootClaims
from verifier.policy.compile import parse_policy
from verifier.policy.model import AppraisalPolicy
from verifier.tpm.appraisal import appraise_tpm
from verifier.tpm.claims import TpmClaims
from verifier.tpm.view import sample_tpm_claims, tpm_claims_from_dict

PCR7 = bytes([7]) * 32
PCR4 = bytes([4]) * 32
ZERO = "sha256:" + "00" * 32
IMA_X = "  ima:\n    allow:\n      - {path: /x, digests: ['" + ZERO + "']}\n"


def policy(tpm: str) -> AppraisalPolicy:
    return parse_policy(f"kind: AppraisalPolicy\nname: t\nplatform: tpm\ntpm:\n{tpm}".encode(),
                        "t.yaml")


BASE = (f"  pcrs:\n    - {{bank: sha256, pcr: 7, values: ['{PCR7.hex()}']}}\n"
        f"    - {{bank: sha256, pcr: 4, values: ['{PCR4.hex()}']}}\n")


def refused(claims: TpmClaims, tpm: str = BASE, *, insecure_ok: bool = False
            ) -> KeybrokerError:
    with pytest.raises(KeybrokerError) as exc:
        appraise_tpm(claims, policy(tpm), allow_insecure_root=insecure_ok)
    return exc.value


def test_sample_claims_pass_a_policy_pinning_their_pcrs() -> None:
    """The sample claims (PCR i = byte i) pass PCRs 4 and 7, the log, secure boot and IMA."""
    digest = sample_tpm_claims().ima_files["/usr/bin/workload"]  # type: ignore[index]
    tpm = BASE + ("  require_event_log: true\n  secure_boot: true\n  ima:\n    allow:\n"
                  f"      - {{path: '/usr/bin/*', digests: ['{digest}']}}\n")
    appraisal = appraise_tpm(sample_tpm_claims(), policy(tpm))
    assert appraisal.status == "affirming"


@pytest.mark.parametrize(("change", "tpm", "category", "rule"), [
    ({"pcrs": {"sha256": {7: PCR7}}}, BASE, Category.MEASUREMENT, "tpm.pcr-selection"),
    ({"pcrs": {"sha256": {7: PCR7, 4: bytes(32)}}}, BASE, Category.MEASUREMENT, "tpm.pcrs"),
    ({"insecure": True}, BASE, Category.CHAIN_UNTRUSTED, "tpm.insecure_root"),
    ({"ak_trust": "certificate"}, BASE + "  ak_trust: [enrolled]\n", Category.CHAIN_UNTRUSTED,
     "tpm.ak_trust"),
    ({"eventlog_pcrs": {}}, BASE + "  require_event_log: true\n", Category.EVENT_LOG,
     "tpm.require_event_log"),
    ({"secure_boot": None}, BASE + "  secure_boot: true\n", Category.PLATFORM_POLICY,
     "tpm.secure_boot"),
    ({"secure_boot": SecureBootClaims(False, {})}, BASE + "  secure_boot: true\n",
     Category.PLATFORM_POLICY, "tpm.secure_boot"),
    ({"ima_files": None}, BASE + IMA_X,
     Category.MEASUREMENT, "tpm.ima"),
    ({}, BASE + "  ima:\n    allow:\n      - {path: '/usr/*', digests: ['" + ZERO + "']}\n",
     Category.MEASUREMENT, "tpm.ima"),
])
def test_each_rule_refuses_with_its_category(change: dict[str, object], tpm: str,
                                             category: Category, rule: str) -> None:
    """Every TPM rule raises its own category and rule name (none is a silent pass)."""
    claims = dataclasses.replace(sample_tpm_claims(), **change)  # type: ignore[arg-type]
    err = refused(claims, tpm)
    assert (err.category, err.rule) == (category, rule)


def test_insecure_root_passes_only_with_the_switch() -> None:
    """Claims of a simulator root pass when the verifier runs with its insecure switch."""
    claims = dataclasses.replace(sample_tpm_claims(), insecure=True)
    assert appraise_tpm(claims, policy(BASE), allow_insecure_root=True).status == "affirming"


def test_excluded_ima_paths_are_not_appraised() -> None:
    """A measured file under an ``exclude`` pattern needs no allow rule."""
    tpm = BASE + IMA_X + "    exclude: ['/usr/bin/*']\n"
    assert appraise_tpm(sample_tpm_claims(), policy(tpm)).status == "affirming"


@pytest.mark.parametrize(("tpm", "where"), [
    ("  ak_trust: [enrolled]\n", "pcrs"),
    (BASE + "  colour: red\n", "colour"),
    (BASE + f"    - {{bank: sha256, pcr: 7, values: ['{PCR7.hex()}']}}\n", "pcr"),
    ("  pcrs:\n    - {bank: sha256, pcr: 24, values: ['" + PCR7.hex() + "']}\n", "pcr"),
    ("  pcrs:\n    - {bank: sha256, pcr: 1, values: ['" + PCR7.hex()[:40] + "']}\n", "values"),
    ("  pcrs:\n    - {bank: md5, pcr: 1, values: ['" + PCR7.hex() + "']}\n", "bank"),
    (BASE + "  ak_trust: [operator]\n", "ak_trust"),
    (BASE + "  ima:\n    allow:\n      - {path: relative, digests: ['" + ZERO + "']}\n", "path"),
])
def test_compiling_is_strict(tpm: str, where: str) -> None:
    """Missing PCRs, unknown keys, a PCR named twice, bad indices, lengths, banks, trust
    modes and relative IMA paths are MALFORMED naming the field."""
    with pytest.raises(Malformed) as exc:
        policy(tpm)
    assert where in exc.value.reason or where in (exc.value.expected or ""), exc.value


def test_view_is_the_exact_inverse() -> None:
    """``tpm_claims_from_dict(c.as_dict()) == c`` for the sample and for bare claims."""
    sample = sample_tpm_claims()
    assert tpm_claims_from_dict(sample.as_dict()) == sample
    bare = dataclasses.replace(sample, ima_files=None, ima_pending=0, secure_boot=None,
                               ak_chain=(), eventlog_pcrs={}, ak_name=b"", boot=None)
    assert tpm_claims_from_dict(bare.as_dict()) == bare


@given(st.dictionaries(st.sampled_from(sorted(sample_tpm_claims().as_dict())),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                                 st.lists(st.integers(0, 30), max_size=3)), max_size=4))
def test_view_rejects_any_wrong_value_as_malformed(changes: dict[str, object]) -> None:
    """Arbitrary values in any claim either round-trip or raise only MALFORMED."""
    round_trips_or_is_malformed(tpm_claims_from_dict, {**sample_tpm_claims().as_dict(), **changes})
