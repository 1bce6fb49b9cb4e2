"""A simulated Nitro Security Module under a test CA. INSECURE: its root is for tests and demos
only (subjects name "keybroker simulator (INSECURE TEST ROOT)").

Invariants:
- The test CA is ECDSA P-384 like AWS's: a self-signed root -> a regional intermediate (CA,
  path length 1) -> an enclave leaf (not a CA, digitalSignature, valid ``LEAF_LIFETIME`` from
  the simulated NSM's start). Documents are COSE_Sign1 (untagged, ``{1: -35}`` protected,
  empty unprotected) over the NSM's payload map, signed raw r||s with the leaf key, and built
  with ``keybroker.evidence.nitro_document`` (the verifier's parser is its exact inverse).
- ``SimulatedNsm.call`` answers NSM requests in the NSM's CBOR: Attestation, DescribePCR,
  ExtendPCR and LockPCR; anything else is ``{"Error": "InvalidOperation"}``. A locked PCR
  cannot be extended (``ReadOnlyIndex``).
- PCRs: 32 SHA-384 registers; 0..15 are locked from the start (the boot's), and a document
  carries the locked ones (real documents: 0..15). PCR0-2 are the image's unless ``debug``
  (all zero, as a debug-mode enclave reports them); PCR8 is set when a signing certificate
  fingerprint is given. Init-data is extended into PCR16 and locked at start, as the
  enclave's init does, so documents then carry PCR16 too.
- ``save`` writes private keys with mode 0600 in a directory with mode 0700.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attester_agent.collectors.nitro_nsm import NitroNsmCollector
from attester_agent.collectors.simulator import SIMULATOR_CA_HINT
from attester_agent.simulator.ca_files import load_pairs, save_pairs
from keybroker.errors import Unavailable
from keybroker.evidence.nitro_document import (
    ALG_ES384,
    CoseSign1,
    NitroPayload,
    build_document,
    build_payload,
    sig_structure,
)

_log = logging.getLogger(__name__)
ORG = "keybroker simulator (INSECURE TEST ROOT)"
LEAF_LIFETIME = dt.timedelta(hours=3)
CA_NOT_BEFORE = dt.datetime(2019, 10, 28, tzinfo=dt.UTC)
CA_NOT_AFTER = dt.datetime(2049, 10, 28, tzinfo=dt.UTC)
INIT_DATA_PCR = 16
PCR_COUNT = 32
DEFAULT_IMAGE = hashlib.sha384(b"keybroker demo enclave image v1").digest()
PROTECTED = bytes(cbor2.dumps({1: ALG_ES384}))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def _issue(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
           signer: ec.EllipticCurvePrivateKey, *, ca: bool, path_length: int | None = None,
           not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    """A CA certificate (``path_length`` None: unlimited) or a leaf for ``key``."""
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(issuer.subject if issuer else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length),
                              critical=True)
               .add_extension(_usage(ca=ca), critical=True))
    return builder.sign(signer, hashes.SHA384())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class NitroTestCa:
    """Root and intermediate of the simulated NSM's chain."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate

    @classmethod
    def generate(cls) -> NitroTestCa:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = _issue("aws.nitro-enclaves (simulator)", root_key, None, root_key,
                      ca=True, not_before=CA_NOT_BEFORE, not_after=CA_NOT_AFTER)
        key = ec.generate_private_key(ec.SECP384R1())
        intermediate = _issue("sim.us-east-1.aws.nitro-enclaves", key, root, root_key,
                              ca=True, path_length=1, not_before=CA_NOT_BEFORE,
                              not_after=CA_NOT_AFTER)
        return cls(root_key, root, key, intermediate)

    def save(self, directory: Path) -> None:
        """``root.pem``, ``intermediate.pem`` and their ``*-key.pem`` (mode 0600)."""
        save_pairs(directory, [("root", self.root, self.root_key),
                               ("intermediate", self.intermediate, self.intermediate_key)])

    @classmethod
    def load(cls, directory: Path) -> NitroTestCa:
        """Read a CA written by ``save``."""
        (root, root_key), (intermediate, key) = load_pairs(directory, ("root", "intermediate"))
        return cls(root_key, root, key, intermediate)


def image_pcrs(image: bytes = DEFAULT_IMAGE, *, debug: bool = False,
               signer: bytes | None = None) -> dict[int, bytes]:
    """PCR0..15 of an enclave of ``image`` (PCR1/2 derived from it); PCR8 from ``signer``
    (the SHA-384 fingerprint of the signing certificate) when given."""
    pcrs = {i: bytes(48) for i in range(16)}
    if not debug:
        pcrs[0] = image
        pcrs[1] = hashlib.sha384(b"kernel and boot ramfs of " + image).digest()
        pcrs[2] = hashlib.sha384(b"application of " + image).digest()
    pcrs[3] = hashlib.sha384(b"arn:aws:iam::123456789012:role/keybroker-demo").digest()
    pcrs[4] = hashlib.sha384(b"i-0keybrokersimulator").digest()
    if signer is not None:
        pcrs[8] = hashlib.sha384(bytes(48) + signer).digest()
    return pcrs


@dataclass
class SimulatedNsm:
    """An NSM answering CBOR requests (module invariants)."""

    ca: NitroTestCa
    pcrs: dict[int, bytes] = field(default_factory=image_pcrs)
    module_id: str = "i-0keybrokersimulator-enc0000000000000001"
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    init_data: bytes = b""
    locked: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.pcrs = {**{i: bytes(48) for i in range(PCR_COUNT)}, **self.pcrs}
        self.locked |= set(range(16))
        start = self.clock()
        self._leaf_key = ec.generate_private_key(ec.SECP384R1())
        self._leaf = _issue(f"{self.module_id}.us-east-1.aws", self._leaf_key,
                            self.ca.intermediate, self.ca.intermediate_key, ca=False,
                            not_before=start - dt.timedelta(seconds=1),
                            not_after=start + LEAF_LIFETIME)
        if self.init_data:
            self.extend(INIT_DATA_PCR, hashlib.sha384(self.init_data).digest())
            self.locked.add(INIT_DATA_PCR)

    def extend(self, index: int, data: bytes) -> bytes:
        """ExtendPCR: SHA-384(old || data)."""
        self.pcrs[index] = hashlib.sha384(self.pcrs[index] + data).digest()
        return self.pcrs[index]

    def payload(self, *, user_data: bytes | None, nonce: bytes | None,
                public_key: bytes | None) -> NitroPayload:
        """The payload the NSM would sign now, with the current PCRs."""
        return NitroPayload(
            module_id=self.module_id, digest="SHA384",
            timestamp_ms=int(self.clock().timestamp() * 1000),
            pcrs={i: self.pcrs[i] for i in sorted(self.locked)},
            certificate=_der(self._leaf), cabundle=(_der(self.ca.root),
                                                    _der(self.ca.intermediate)),
            public_key=public_key, user_data=user_data, nonce=nonce)

    def sign(self, payload: bytes, *, protected: bytes = PROTECTED,
             unprotected: Mapping[Any, Any] | None = None, tagged: bool = False) -> bytes:
        """A COSE_Sign1 over ``payload`` bytes, signed by the leaf key (tests pass other
        headers to build hostile documents)."""
        signature = self._leaf_key.sign(sig_structure(protected, payload),
                                        ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(signature)
        return build_document(CoseSign1(protected, {}, dict(unprotected or {}), payload,
                                        r.to_bytes(48, "big") + s.to_bytes(48, "big"), tagged))

    def document(self, *, user_data: bytes | None, nonce: bytes | None,
                 public_key: bytes | None) -> bytes:
        """A signed attestation document with the current PCRs."""
        return self.sign(build_payload(self.payload(user_data=user_data, nonce=nonce,
                                                    public_key=public_key)))

    def call(self, request: bytes) -> bytes:
        """The NSM's CBOR answer to ``request``."""
        message: Any = cbor2.loads(request)
        kind, body = next(iter(message.items())) if isinstance(message, dict) else (message, {})
        answer: Mapping[str, Any] | str
        if kind == "Attestation":
            answer = {"Attestation": {"document": self.document(
                user_data=body.get("user_data"), nonce=body.get("nonce"),
                public_key=body.get("public_key"))}}
        elif kind == "DescribePCR" and body.get("index") in self.pcrs:
            answer = {"DescribePCR": {"lock": body["index"] in self.locked,
                                      "data": self.pcrs[body["index"]]}}
        elif kind == "ExtendPCR" and body.get("index") in self.pcrs:
            answer = ({"Error": "ReadOnlyIndex"} if body["index"] in self.locked
                      else {"ExtendPCR": {"data": self.extend(body["index"], body["data"])}})
        elif kind == "LockPCR" and body.get("index") in self.pcrs:
            self.locked.add(body["index"])
            answer = "LockPCR"
        else:
            answer = {"Error": "InvalidOperation"}
        return bytes(cbor2.dumps(answer))


def simulated_nitro_collector(sim_dir: Path, *, image: bytes | None = None,
                              debug: bool = False, init_data: bytes = b"") -> NitroNsmCollector:
    """INSECURE: the NSM collector on a simulated NSM with the test CA in ``sim_dir/nitro``
    (PCR0 = ``image``, PCR0-2 zero when ``debug``, init-data extended into PCR16)."""
    try:
        ca = NitroTestCa.load(sim_dir / "nitro")
    except (OSError, ValueError, TypeError) as exc:
        raise Unavailable(f"cannot load the Nitro simulator test CA from {sim_dir / 'nitro'}",
                          expected=SIMULATOR_CA_HINT, actual=str(exc)) from exc
    _log.warning("INSECURE: using the Nitro NSM SIMULATOR with the test CA in %s; its "
                 "documents prove nothing about a real enclave", sim_dir / "nitro")
    nsm = SimulatedNsm(ca, pcrs=image_pcrs(image or DEFAULT_IMAGE, debug=debug),
                       init_data=init_data)
    return NitroNsmCollector(transport=nsm.call, name="nitro-simulator")
