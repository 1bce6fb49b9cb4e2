"""TPM AK enrolment by credential activation against a real swtpm: the EK certificate chain,
the AK attributes, the single-use credential, re-enrolment, revocation and the counters
(``verifier.tpm.enrolment``; MakeCredential checked by the TPM's own ActivateCredential)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from support.store_backends import StoreBackend

from attester_agent.collectors.tpm import EnrolmentMaterial, TpmCollector
from attester_agent.simulator.tpm import Swtpm, SwtpmLayout
from keybroker.errors import Category, Exhausted, KeybrokerError
from keybroker.evidence.tpm_public import (
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SIGN,
    build_public,
    parse_public,
    public_from_key,
)
from verifier.tpm import enrolment as enrolment_module
from verifier.tpm.credential import make_credential
from verifier.tpm.enrolment import PENDING_SECONDS, EkRoots, TpmEnrolments, ek_fingerprint

pytestmark = pytest.mark.integration

AK_BITS = RESTRICTED | SIGN | FIXED_TPM | FIXED_PARENT


@dataclasses.dataclass
class Machine:
    tpm: Swtpm
    collector: TpmCollector
    material: EnrolmentMaterial
    roots: EkRoots


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    layout = SwtpmLayout(tmp_path_factory.mktemp("swtpm"))
    tpm = Swtpm(layout).start()
    try:
        collector = TpmCollector(tpm.tcti, event_log=None)
        yield Machine(tpm, collector, collector.enrolment_material(),
                      EkRoots.load(list(layout.ek_roots), []))
    finally:
        tpm.stop()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def store(where: StoreBackend, machine: Machine, clock: Clock | None = None) -> TpmEnrolments:
    return TpmEnrolments(where.target("state"), machine.roots, clock or Clock())


def enrol(enrolments: TpmEnrolments, machine: Machine) -> None:
    pending = enrolments.begin(machine.material.ek_certificate, [], machine.material.ak_public)
    enrolments.activate(pending.enrolment_id,
                        machine.collector.activate(pending.blob, pending.encrypted_secret))


def other_ak(attributes: int = AK_BITS) -> bytes:
    """A well-formed AK public area of a software key (never in this TPM)."""
    public = public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    return build_public(dataclasses.replace(public, attributes=attributes))


def code(call: object) -> tuple[Category, str]:
    assert callable(call)
    with pytest.raises(KeybrokerError) as exc:
        call()
    return exc.value.category, exc.value.rule


def test_tpm_enrolment_by_activation_then_idempotent(swtpm: Machine,
                                                     db_backend: StoreBackend) -> None:
    """The TPM's ActivateCredential recovers our MakeCredential; the AK is then enrolled for
    the EK, and enrolling the same AK again is accepted."""
    enrolments = store(db_backend, swtpm)
    enrol(enrolments, swtpm)
    enrol(enrolments, swtpm)
    ek = x509.load_der_x509_certificate(swtpm.material.ek_certificate)
    enrolled = enrolments.by_ek(ek_fingerprint(ek))
    assert enrolled is not None and enrolled.ak_public == swtpm.material.ak_public
    assert enrolled.insecure is False  # the swtpm CA was configured as a trusted root here


def test_tpm_another_ak_for_an_enrolled_ek_needs_a_revocation(swtpm: Machine,
                                                              db_backend: StoreBackend) -> None:
    """A second AK for the same EK is refused until the old one is revoked."""
    enrolments = store(db_backend, swtpm)
    enrol(enrolments, swtpm)
    ek = x509.load_der_x509_certificate(swtpm.material.ek_certificate)
    begin = lambda: enrolments.begin(swtpm.material.ek_certificate, [], other_ak())  # noqa: E731
    assert code(begin) == (Category.CHAIN_UNTRUSTED, "tpm.enrolment-conflict")
    assert enrolments.revoke(ek_fingerprint(ek))
    assert enrolments.by_ek(ek_fingerprint(ek)) is None
    begin()  # now the EK may enrol another AK
    enrol(enrolments, swtpm)


@pytest.mark.parametrize("attributes", [
    AK_BITS & ~RESTRICTED, AK_BITS & ~SIGN, AK_BITS & ~FIXED_TPM, AK_BITS & ~FIXED_PARENT,
    AK_BITS | (1 << 17)])
def test_tpm_a_key_that_is_not_an_ak_is_refused(swtpm: Machine, db_backend: StoreBackend,
                                                attributes: int) -> None:
    """Unrestricted, non-signing, movable or decrypting keys are CHAIN_UNTRUSTED."""
    enrolments = store(db_backend, swtpm)
    begin = lambda: enrolments.begin(swtpm.material.ek_certificate, [],  # noqa: E731
                                     other_ak(attributes))
    assert code(begin) == (Category.CHAIN_UNTRUSTED, "tpm.ak-attributes")


def test_tpm_wrong_credential_consumes_the_enrolment(swtpm: Machine,
                                                     db_backend: StoreBackend) -> None:
    """A wrong credential is CHAIN_UNTRUSTED and the enrolment is gone (the right one then
    finds nothing: FRESHNESS)."""
    enrolments = store(db_backend, swtpm)
    pending = enrolments.begin(swtpm.material.ek_certificate, [], swtpm.material.ak_public)
    right = swtpm.collector.activate(pending.blob, pending.encrypted_secret)
    wrong = bytes(b ^ 1 for b in right)
    assert code(lambda: enrolments.activate(pending.enrolment_id, wrong)) == (
        Category.CHAIN_UNTRUSTED, "tpm.activation")
    assert code(lambda: enrolments.activate(pending.enrolment_id, right)) == (
        Category.FRESHNESS, "tpm.enrolment")


def test_tpm_expired_enrolment_is_freshness(swtpm: Machine, db_backend: StoreBackend) -> None:
    """An activation after ``PENDING_SECONDS`` is FRESHNESS."""
    clock = Clock()
    enrolments = store(db_backend, swtpm, clock)
    pending = enrolments.begin(swtpm.material.ek_certificate, [], swtpm.material.ak_public)
    right = swtpm.collector.activate(pending.blob, pending.encrypted_secret)
    clock.now += timedelta(seconds=PENDING_SECONDS + 1)
    assert code(lambda: enrolments.activate(pending.enrolment_id, right)) == (
        Category.FRESHNESS, "tpm.enrolment")


def test_tpm_ek_of_an_unconfigured_root_is_refused(swtpm: Machine,
                                                  db_backend: StoreBackend) -> None:
    """Without the swtpm CA among the roots, the EK certificate does not chain."""
    enrolments = TpmEnrolments(db_backend.target("state"), EkRoots(), Clock())
    begin = lambda: enrolments.begin(swtpm.material.ek_certificate, [],  # noqa: E731
                                     swtpm.material.ak_public)
    assert code(begin) == (Category.CHAIN_UNTRUSTED, "tpm.ek-cert")
    garbage = lambda: enrolments.begin(b"\x30\x03\x02\x01\x00", [],  # noqa: E731
                                       swtpm.material.ak_public)
    assert code(garbage) == (Category.MALFORMED, "tpm.ek")


def test_tpm_counters_must_not_go_backwards(swtpm: Machine, db_backend: StoreBackend) -> None:
    """(resetCount, restartCount) only grow per enrolled AK; lower is FRESHNESS."""
    enrolments = store(db_backend, swtpm)
    enrol(enrolments, swtpm)
    name = parse_public(swtpm.material.ak_public).name
    enrolments.observe(name, 5, 0)
    enrolments.observe(name, 5, 2)
    enrolments.observe(name, 6, 0)
    assert code(lambda: enrolments.observe(name, 5, 9)) == (Category.FRESHNESS, "tpm.counters")
    assert code(lambda: enrolments.observe(name, 6, 0) or enrolments.observe(name, 5, 0)) == (
        Category.FRESHNESS, "tpm.counters")


def test_tpm_make_credential_needs_an_rsa_2048_ek() -> None:
    """An EC EK (not the default template this verifier activates with) is MALFORMED."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert code(lambda: make_credential(key, b"\x00\x0b" + bytes(32))) == (
        Category.MALFORMED, "tpm.ek")


def test_tpm_pending_enrolments_are_bounded(swtpm: Machine, db_backend: StoreBackend,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Begun but unactivated enrolments are capped; expired ones make room again."""
    monkeypatch.setattr(enrolment_module, "MAX_PENDING", 2)
    clock = Clock()
    enrolments = store(db_backend, swtpm, clock)

    def begin() -> object:
        return enrolments.begin(swtpm.material.ek_certificate, [], swtpm.material.ak_public)
    begin()
    begin()
    with pytest.raises(Exhausted) as exc:
        begin()
    assert exc.value.category is Category.UNAVAILABLE and exc.value.rule == "tpm.enrolment"
    clock.now += timedelta(seconds=PENDING_SECONDS + 1)
    begin()
