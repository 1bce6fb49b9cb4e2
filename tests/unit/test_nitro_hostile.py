"""Hostile Nitro documents built with the simulator's test chain (re-signed, so the named
check, not the signature, must reject them): hostile-evidence rows 6 (algorithm), 10 (body
changed without re-signing), 12 (unconfigured root), 13 (root shipped in the cabundle), 18
(expired leaf), 32 (timestamp window), 42 (debug mode), the leaf as a CA, the request echo
(nonce, public_key) and the policy rules (PCRs, signers)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support.paths import VECTORS

from attester_agent.simulator.nitro import NitroTestCa, SimulatedNsm, image_pcrs
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.nitro_document import build_payload
from verifier.nitro.appraisal import appraise_nitro
from verifier.nitro.chain import configured_roots, pinned_root, simulator_roots
from verifier.nitro.claims import NitroClaims
from verifier.nitro.verify import NitroVerifier
from verifier.policy.compile import load_policy
from verifier.policy.model import AppraisalPolicy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
USER_DATA = b"\x11" * 64


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NitroTestCa, Path]]:
    ca = NitroTestCa.generate()
    path = tmp_path_factory.mktemp("nitro-ca")
    ca.save(path)
    yield ca, path / "root.pem"


def _verifier(root: Path) -> NitroVerifier:
    return NitroVerifier((pinned_root(), *simulator_roots([root])))


def _nsm(ca: NitroTestCa, *, at: datetime = NOW, **kwargs: object) -> SimulatedNsm:
    return SimulatedNsm(ca, clock=lambda: at, **kwargs)


def _category(verifier: NitroVerifier, raw: bytes, at: datetime = NOW) -> Category:
    with pytest.raises(KeybrokerError) as exc:
        verifier.verify(raw, at=at)
    return exc.value.category


def test_nitro_simulated_document_verifies(ca: tuple[NitroTestCa, Path]) -> None:
    """The baseline: the simulator's document verifies under its root, marked insecure."""
    nsm = _nsm(ca[0])
    claims = _verifier(ca[1]).verify(
        nsm.document(user_data=USER_DATA, nonce=b"n" * 32, public_key=b"k" * 32), at=NOW)
    assert claims.insecure and claims.report_data == USER_DATA and not claims.debug


@pytest.mark.parametrize(("protected", "unprotected", "category"), [
    (b"", {}, Category.SIG_INVALID),  # no algorithm at all
    (bytes(cbor2.dumps({1: -7})), {}, Category.SIG_INVALID),  # ES256
    (bytes(cbor2.dumps({1: "ES384"})), {}, Category.SIG_INVALID),  # a string alg
    (bytes(cbor2.dumps({})), {1: -35}, Category.SIG_INVALID),  # only unprotected
    (bytes(cbor2.dumps({1: -35})), {1: -35}, Category.SIG_INVALID),  # also unprotected
    (bytes(cbor2.dumps({1: -35, 4: b"kid"})), {}, Category.SIG_INVALID),  # extra header
    (bytes(cbor2.dumps({1: -35})), {4: b"kid"}, Category.MALFORMED),
])
def test_nitro_algorithm_is_pinned_to_es384(ca: tuple[NitroTestCa, Path], protected: bytes,
                                            unprotected: dict[int, object],
                                            category: Category) -> None:
    """Row 6: the protected header must be exactly {1: -35}; an algorithm absent, another
    one, or only in the unprotected header is SIG_INVALID, even when the signature is right."""
    nsm = _nsm(ca[0])
    payload = build_payload(nsm.payload(user_data=USER_DATA, nonce=None, public_key=None))
    raw = nsm.sign(payload, protected=protected, unprotected=unprotected)
    assert _category(_verifier(ca[1]), raw) is category


def test_nitro_payload_changed_without_resigning(ca: tuple[NitroTestCa, Path]) -> None:
    """Row 10: a PCR changed after signing: SIG_INVALID."""
    nsm = _nsm(ca[0])
    good = nsm.payload(user_data=USER_DATA, nonce=None, public_key=None)
    signed = nsm.sign(build_payload(good))
    forged = build_payload(dataclasses.replace(good, pcrs={**good.pcrs, 0: b"\x01" * 48}))
    raw = signed.replace(build_payload(good), forged)
    assert _category(_verifier(ca[1]), raw) is Category.SIG_INVALID


def test_nitro_unconfigured_root_is_chain_untrusted(ca: tuple[NitroTestCa, Path]) -> None:
    """Row 12: a document under another (unconfigured) test root: CHAIN_UNTRUSTED."""
    other = _nsm(NitroTestCa.generate())
    raw = other.document(user_data=USER_DATA, nonce=None, public_key=None)
    assert _category(_verifier(ca[1]), raw) is Category.CHAIN_UNTRUSTED
    assert _category(NitroVerifier([pinned_root()]), raw) is Category.CHAIN_UNTRUSTED


def test_nitro_root_in_the_cabundle_is_not_trusted(ca: tuple[NitroTestCa, Path]) -> None:
    """Row 13: an attacker's self-consistent chain whose cabundle[0] is the pinned root's
    bytes but whose intermediate is signed by the attacker: the path cannot reach the real
    root (CHAIN_UNTRUSTED); a cabundle[0] of the attacker's own root is refused outright."""
    attacker = _nsm(NitroTestCa.generate())
    payload = attacker.payload(user_data=USER_DATA, nonce=None, public_key=None)
    g1 = pinned_root().der
    for bundle in ((g1, *payload.cabundle[1:]), payload.cabundle):
        raw = attacker.sign(build_payload(dataclasses.replace(payload, cabundle=bundle)))
        assert _category(_verifier(ca[1]), raw) is Category.CHAIN_UNTRUSTED


def test_nitro_expired_leaf_is_chain_untrusted(ca: tuple[NitroTestCa, Path]) -> None:
    """Row 18: a leaf issued four hours before (valid three): CHAIN_UNTRUSTED."""
    nsm = _nsm(ca[0], at=NOW - timedelta(hours=4))
    raw = nsm.document(user_data=USER_DATA, nonce=None, public_key=None)
    assert _category(_verifier(ca[1]), raw) is Category.CHAIN_UNTRUSTED


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=2)])
def test_nitro_timestamp_outside_the_window_is_freshness(ca: tuple[NitroTestCa, Path],
                                                         offset: timedelta) -> None:
    """Row 32: six minutes old, or two minutes in the future (leaf still valid): FRESHNESS."""
    nsm = _nsm(ca[0], at=NOW + offset)
    raw = nsm.document(user_data=USER_DATA, nonce=None, public_key=None)
    if offset > timedelta(0):  # the leaf starts at the NSM's clock: check inside its window
        raw_at = NOW
        with pytest.raises(KeybrokerError) as exc:
            _verifier(ca[1]).verify(raw, at=raw_at)
        assert exc.value.category in {Category.FRESHNESS, Category.CHAIN_UNTRUSTED}
        late = _nsm(ca[0], at=NOW - timedelta(minutes=1))
        payload = late.payload(user_data=USER_DATA, nonce=None, public_key=None)
        future = dataclasses.replace(payload, timestamp_ms=int(
            (NOW + offset).timestamp() * 1000))
        raw = late.sign(build_payload(future))
    assert _category(_verifier(ca[1]), raw) is Category.FRESHNESS


def test_nitro_leaf_that_is_a_ca_is_refused(ca: tuple[NitroTestCa, Path]) -> None:
    """The signing certificate must not be a CA: a document 'signed' with the intermediate's
    key and the intermediate as its certificate is CHAIN_UNTRUSTED."""
    nsm = _nsm(ca[0])
    payload = nsm.payload(user_data=USER_DATA, nonce=None, public_key=None)
    intermediate = ca[0].intermediate.public_bytes(Encoding.DER)
    forged = dataclasses.replace(payload, certificate=intermediate, cabundle=payload.cabundle[:1])
    raw = nsm.sign(build_payload(forged))
    assert _category(_verifier(ca[1]), raw) is Category.CHAIN_UNTRUSTED


def test_nitro_request_echo(ca: tuple[NitroTestCa, Path]) -> None:
    """The document's nonce must be the challenge's (FRESHNESS), its public_key the agent's
    (BINDING); absent counts as different."""
    nsm = _nsm(ca[0])
    claims = _verifier(ca[1]).verify(
        nsm.document(user_data=USER_DATA, nonce=b"n" * 32, public_key=b"k" * 32), at=NOW)
    claims.check_request(nonce=b"n" * 32, public_key=b"k" * 32)
    for nonce, key, category in ((b"m" * 32, b"k" * 32, Category.FRESHNESS),
                                 (b"n" * 32, b"K" * 32, Category.BINDING)):
        with pytest.raises(KeybrokerError) as exc:
            claims.check_request(nonce=nonce, public_key=key)
        assert exc.value.category is category
    bare = _verifier(ca[1]).verify(
        nsm.document(user_data=USER_DATA, nonce=None, public_key=None), at=NOW)
    with pytest.raises(KeybrokerError) as exc:
        bare.check_request(nonce=b"n" * 32, public_key=b"k" * 32)
    assert exc.value.category is Category.FRESHNESS


SIGNER = hashlib.sha384(b"a signing certificate").digest()


def _policy(tmp_path: Path, body: str) -> AppraisalPolicy:
    path = tmp_path / "nitro.yaml"
    path.write_text("kind: AppraisalPolicy\nname: n\nplatform: nitro\nnitro:\n" + body)
    return load_policy(path)


def _claims(ca: NitroTestCa, root: Path, **pcr_kwargs: object) -> NitroClaims:
    nsm = _nsm(ca, pcrs=image_pcrs(**pcr_kwargs))
    return _verifier(root).verify(nsm.document(user_data=USER_DATA, nonce=None,
                                               public_key=None), at=NOW)


def test_nitro_policy_rules(ca: tuple[NitroTestCa, Path], tmp_path: Path) -> None:
    """Debug mode (row 42), a PCR not listed or missing, a signer not listed: each its
    category; the production enclave with the listed values and signer passes."""
    good = image_pcrs(signer=SIGNER)
    pcr0, pcr2 = good[0].hex(), good[2].hex()
    policy = _policy(tmp_path, f"  pcrs:\n    - {{pcr: 0, values: ['{pcr0}']}}\n"
                               f"    - {{pcr: 2, values: ['{pcr2}']}}\n"
                               f"  signers: ['{SIGNER.hex()}']\n")
    ok = appraise_nitro(_claims(*ca, signer=SIGNER), policy, allow_insecure_root=True)
    assert ok.status == "affirming"
    cases = [
        (_claims(*ca, debug=True, signer=SIGNER), Category.PLATFORM_POLICY, "nitro.debug"),
        (_claims(*ca, image=b"\x02" * 48, signer=SIGNER), Category.MEASUREMENT, "nitro.pcrs"),
        (_claims(*ca, signer=b"\x03" * 48), Category.MEASUREMENT, "nitro.signers"),
        (_claims(*ca), Category.MEASUREMENT, "nitro.signers"),  # unsigned image
    ]
    for claims, category, rule in cases:
        with pytest.raises(KeybrokerError) as exc:
            appraise_nitro(claims, policy, allow_insecure_root=True)
        assert (exc.value.category, exc.value.rule) == (category, rule)
    with pytest.raises(KeybrokerError) as insecure:
        appraise_nitro(_claims(*ca, signer=SIGNER), policy)
    assert insecure.value.category is Category.CHAIN_UNTRUSTED
    missing = _policy(tmp_path, f"  pcrs:\n    - {{pcr: 20, values: ['{pcr0}']}}\n")
    with pytest.raises(KeybrokerError) as absent:
        appraise_nitro(_claims(*ca), missing, allow_insecure_root=True)
    assert (absent.value.category, absent.value.reason) == (
        Category.MEASUREMENT, "PCR20 is not in the document")


def test_nitro_debug_allowed_only_when_the_policy_says(ca: tuple[NitroTestCa, Path],
                                                       tmp_path: Path) -> None:
    """allow_debug: true accepts a debug enclave whose pinned PCRs match (zeros)."""
    policy = _policy(tmp_path, f"  pcrs:\n    - {{pcr: 0, values: ['{'00' * 48}']}}\n"
                               "  allow_debug: true\n")
    result = appraise_nitro(_claims(*ca, debug=True), policy,
                            allow_insecure_root=True)
    assert result.status == "affirming"


@pytest.mark.parametrize(("body", "words"), [
    ("  allow_debug: false\n", "pcrs"),
    ("  pcrs:\n    - {pcr: 32, values: ['" + "00" * 48 + "']}\n", "pcr"),
    ("  pcrs:\n    - {pcr: 1, values: ['" + "00" * 32 + "']}\n", "96 hex digits"),
    ("  signers: ['zz']\n", "hex"),
    ("  signers: ['" + "00" * 48 + "']\n  pcr0: ['" + "00" * 48 + "']\n", "pcr0"),
])
def test_nitro_policy_section_is_strict(tmp_path: Path, body: str, words: str) -> None:
    """No identity rule, a PCR out of range, a value of the wrong size, bad hex and unknown
    keys are refused when the policy is loaded."""
    with pytest.raises(KeybrokerError) as exc:
        _policy(tmp_path, body)
    assert exc.value.category is Category.MALFORMED
    assert words in str(exc.value)


def test_nitro_operator_roots_replace_the_pinned_one(ca: tuple[NitroTestCa, Path]) -> None:
    """``nitro_roots`` (another partition's root) replaces G1: documents under it verify as
    production (not insecure), and G1 documents are no longer trusted."""
    assert configured_roots([]) == (pinned_root(),)
    verifier = NitroVerifier(configured_roots([ca[1]]))
    claims = verifier.verify(_nsm(ca[0]).document(user_data=USER_DATA, nonce=None,
                                                  public_key=None), at=NOW)
    assert not claims.insecure
    real = (VECTORS / "nitro" / "evervault-2022-10-13-nondebug.cbor").read_bytes()
    at = datetime.fromtimestamp(1665651482136 / 1000, UTC)
    assert _category(verifier, real, at) is Category.CHAIN_UNTRUSTED
