"""The agent's Nitro NSM collector: the CBOR Attestation request it sends, what it makes of
each NSM answer, the ioctl path on something that is not the NSM, and the simulated NSM it
runs against in tests and demos (PCR extend/lock, init-data in PCR16)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2
import pytest

from attester_agent.collectors.base import RequestBound, collect_evidence
from attester_agent.collectors.nitro_nsm import (
    RESPONSE_SIZE,
    NitroNsmCollector,
    NsmDevice,
    attestation_document,
    attestation_request,
)
from attester_agent.simulator.nitro import INIT_DATA_PCR, NitroTestCa, SimulatedNsm
from keybroker.errors import Category, KeybrokerError, Malformed, Unavailable
from keybroker.evidence.nitro_document import decode_document, parse_payload


def test_nitro_attestation_request_is_the_nsm_cbor() -> None:
    """{"Attestation": {"user_data", "nonce", "public_key"}}, absent fields as null."""
    request = attestation_request(user_data=b"u" * 64, nonce=b"n", public_key=None)
    assert cbor2.loads(request) == {"Attestation": {"user_data": b"u" * 64, "nonce": b"n",
                                                    "public_key": None}}
    with pytest.raises(Malformed, match="nonce too long"):
        attestation_request(user_data=b"", nonce=b"n" * 513, public_key=None)
    with pytest.raises(Malformed, match="public_key too long"):
        attestation_request(user_data=b"", nonce=None, public_key=b"k" * 1025)


@pytest.mark.parametrize(("answer", "category", "words"), [
    (cbor2.dumps({"Error": "InvalidArgument"}), Category.UNAVAILABLE, "refused"),
    (cbor2.dumps({"Attestation": {}}), Category.MALFORMED, "not an attestation document"),
    (cbor2.dumps({"Attestation": {"document": b""}}), Category.MALFORMED, "not an attestation"),
    (cbor2.dumps("GetRandom"), Category.MALFORMED, "not an attestation document"),
    (b"\xff\x00", Category.MALFORMED, "not CBOR"),
])
def test_nitro_nsm_answers_are_typed(answer: bytes, category: Category, words: str) -> None:
    """An NSM error names its code (UNAVAILABLE); any other shape is MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        attestation_document(bytes(answer))
    assert exc.value.category is category and words in exc.value.reason


def test_nitro_nsm_device_that_is_not_the_nsm(tmp_path: Path) -> None:
    """A regular file is not available; an ioctl on /dev/null fails as UNAVAILABLE (errno);
    a path that does not exist cannot be opened (UNAVAILABLE)."""
    plain = tmp_path / "nsm"
    plain.write_bytes(b"")
    assert not NsmDevice(plain).available()
    assert not NitroNsmCollector(tmp_path / "absent").available()
    with pytest.raises(Unavailable, match="NSM_IOCTL_RAW failed"):
        NsmDevice(Path("/dev/null")).call(b"\xa0")
    with pytest.raises(Unavailable, match="cannot open"):
        NsmDevice(tmp_path / "absent").call(b"\xa0")
    assert RESPONSE_SIZE == 0x3000


def test_nitro_collector_binds_the_request_through_the_simulated_nsm() -> None:
    """collect_for puts nonce, public key and report_data in the document; the client's
    collect_evidence chooses collect_for for it."""
    nsm = SimulatedNsm(NitroTestCa.generate())
    collector = NitroNsmCollector(transport=nsm.call, name="nitro-simulator")
    assert isinstance(collector, RequestBound) and collector.available()
    evidence = collect_evidence(collector, b"r" * 64, nonce=b"n" * 32, public_key=b"k" * 32)
    payload = parse_payload(decode_document(evidence.nitro.document).payload)
    assert (payload.user_data, payload.nonce, payload.public_key) == (
        b"r" * 64, b"n" * 32, b"k" * 32)
    bare = parse_payload(decode_document(collector.collect(b"r" * 64).nitro.document).payload)
    assert (bare.nonce, bare.public_key) == (None, None)
    with pytest.raises(Malformed):
        collector.collect(b"short")


def test_nitro_simulated_nsm_pcr_operations() -> None:
    """Init-data is extended into PCR16 and locked; other PCRs extend with SHA-384 until
    locked; unknown requests are the NSM's InvalidOperation."""
    init = b'[workload]\nname = "demo"\n'
    nsm = SimulatedNsm(NitroTestCa.generate(), init_data=init)
    expected = hashlib.sha384(bytes(48) + hashlib.sha384(init).digest()).digest()
    assert nsm.pcrs[INIT_DATA_PCR] == expected

    def ask(request: object) -> object:
        return cbor2.loads(nsm.call(bytes(cbor2.dumps(request))))

    assert ask({"DescribePCR": {"index": 16}}) == {"DescribePCR": {"lock": True,
                                                                   "data": expected}}
    assert ask({"ExtendPCR": {"index": 16, "data": b"x"}}) == {"Error": "ReadOnlyIndex"}
    extended = ask({"ExtendPCR": {"index": 17, "data": b"x"}})
    assert extended == {"ExtendPCR": {"data": hashlib.sha384(bytes(48) + b"x").digest()}}
    assert ask({"LockPCR": {"index": 17}}) == "LockPCR"
    assert ask({"ExtendPCR": {"index": 17, "data": b"y"}}) == {"Error": "ReadOnlyIndex"}
    assert ask("DescribeNSM") == {"Error": "InvalidOperation"}
