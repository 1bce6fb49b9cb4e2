"""The ``tpm`` evidence arm before any signature is checked: sizes bounded first (hostile rows
4 and 5), PCR banks well formed, and an AK that is neither enrolled nor certified refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.tpm_public import (
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SIGN,
    build_public,
    public_from_key,
)
from keybroker.v1 import evidence_pb2
from verifier.tpm.verify import MAX_EVENT_LOG, MAX_IMA_LOG, TpmVerifier

AK_BITS = RESTRICTED | SIGN | FIXED_TPM | FIXED_PARENT


def ak(attributes: int = AK_BITS) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return build_public(dataclasses.replace(public_from_key(key), attributes=attributes))


def refusal(ak_public: bytes | None = None, **fields: object) -> tuple[Category, str]:
    evidence = evidence_pb2.TpmEvidence(ak_public=ak_public or ak(), quote=b"q",
                                        signature=b"s")
    for name, value in fields.items():
        if name == "pcrs":
            for alg, values in value:  # type: ignore[attr-defined]
                evidence.pcrs.add(hash_alg=alg, values=values)
        else:
            setattr(evidence, name, value)
    with pytest.raises(KeybrokerError) as exc:
        TpmVerifier([], [], None).verify(evidence, at=datetime.now(UTC),
                                         expected_report_data=bytes(64))
    return exc.value.category, exc.value.rule


@pytest.mark.parametrize(("fields", "rule"), [
    ({"event_log": b"\x00" * (MAX_EVENT_LOG + 1)}, "tpm.evidence"),
    ({"ima_log": b"x" * (MAX_IMA_LOG + 1)}, "tpm.evidence"),
    ({"ak_certificate": b"\x30" * 9000}, "tpm.ak-cert"),
    ({"pcrs": [(0x000B, {0: bytes(20)})]}, "tpm.pcrs"),
    ({"pcrs": [(0x000B, {24: bytes(32)})]}, "tpm.pcrs"),
    ({"pcrs": [(0x0099, {0: bytes(32)})]}, "tpm.pcrs"),
    ({"pcrs": [(0x000B, {0: bytes(32)}), (0x000B, {1: bytes(32)})]}, "tpm.pcrs"),
])
def test_bounds_come_first_and_are_malformed(fields: dict[str, object], rule: str) -> None:
    """Oversize logs and certificates, wrong PCR sizes, indices and banks are MALFORMED before
    the AK is even looked up."""
    assert refusal(**fields) == (Category.MALFORMED, rule)


def test_unenrolled_uncertified_ak_is_chain_untrusted() -> None:
    """A well-formed AK with no enrolment and no certificate is CHAIN_UNTRUSTED."""
    assert refusal() == (Category.CHAIN_UNTRUSTED, "tpm.ak-enrolment")


def test_an_ak_that_is_not_restricted_is_chain_untrusted() -> None:
    """A signing key without the restricted attribute could sign forged quotes."""
    assert refusal(ak(SIGN | FIXED_TPM | FIXED_PARENT)) == (Category.CHAIN_UNTRUSTED,
                                                             "tpm.ak-attributes")
