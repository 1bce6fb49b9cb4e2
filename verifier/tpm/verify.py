"""A TPM 2.0 quote to typed claims: the AK's trust (certificate or enrolment), the quote, the
boot event log replayed to the quoted PCRs, and the IMA log replayed to PCR 10.

Invariants:
- The AK is trusted only through configuration: an AK certificate chained to a configured AK
  root (its key must be the AK's), or an enrolment made by credential activation to a
  configured EK root (``verifier.tpm.enrolment``). Anything else is CHAIN_UNTRUSTED (rule
  tpm.ak-enrolment), checked before the quote is even parsed. The AK must carry the
  attributes of an attestation key either way.
- extraData must equal the 64-byte challenge binding (FRESHNESS otherwise,
  hostile-evidence row 31); ``safe`` must be set; for an enrolled AK the reset/restart
  counters must not go backwards (``TpmEnrolments.observe``), checked after every other check
  of the quote so a forged quote cannot move them.
- A boot log must replay to the quoted PCRs; claims interpret only a replayed log (secure
  boot from PCR 7 data whose digests recompute; the boot chain from PCRs 0..9, read in the
  SHA-256 bank when the log records it). An IMA log must replay to the quoted PCR 10.
- A boot log is parsed once per content (``verifier.eventlog.cache``); the replay against
  each quote always runs.
- Sizes are bounded before anything is parsed (``MAX_*``, hostile-evidence rows 4 and 5);
  every failure is a typed error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from keybroker.errors import ChainUntrusted, Malformed, MeasurementMismatch
from keybroker.evidence.ima_log import parse_ima_log
from keybroker.evidence.tcg_log import (
    EV_NO_ACTION,
    HASH_NAMES,
    KNOWN_DIGEST_SIZES,
    EventLog,
    parse_event_log,
)
from keybroker.evidence.tpm_public import TpmPublic, parse_public
from keybroker.v1 import evidence_pb2
from verifier.eventlog.boot import BootClaims, boot_claims
from verifier.eventlog.cache import ParsedCache
from verifier.eventlog.ima import IMA_PCR, ImaReplay, replay_ima
from verifier.eventlog.pcr import PCR_COUNT, check_pcrs
from verifier.eventlog.secure_boot import SECURE_BOOT_PCR, secure_boot_claims
from verifier.tpm.ak import check_certified_key, lenient_names, verify_ak_certificate
from verifier.tpm.claims import TpmClaims
from verifier.tpm.enrolment import TpmEnrolments, check_ak_attributes
from verifier.tpm_quote import verify_quote

MAX_BANKS = 4
MAX_EVENT_LOG = 4 << 20
MAX_IMA_LOG = 16 << 20
MAX_CERT_BYTES = 8192
_IMA_BANKS = (0x000B, 0x0004, 0x000C)  # SHA-256 preferred, then SHA-1, SHA-384
_BOOT_BANKS = (0x000B, 0x000C, 0x000D, 0x0004)  # the bank boot claims are read in, preferred
_LAST_BOOT_PCR = 9  # PCRs 0..9: firmware, boot loader, kernel and its command line


@dataclass(frozen=True)
class AkTrust:
    """Why the AK is trusted."""

    mode: str  # "enrolled" | "certificate" | "operator"
    chain: tuple[str, ...] = ()  # certificate mode: issuers up to the root
    insecure: bool = False  # the trust ends at a simulator root


def ima_replay(raw: bytes, pcrs: Mapping[int, Mapping[int, bytes]]) -> ImaReplay:
    """The IMA log replayed against the quoted PCR 10 (SHA-256 bank preferred)."""
    bank = next((b for b in _IMA_BANKS if IMA_PCR in pcrs.get(b, {})), None)
    if bank is None:
        raise MeasurementMismatch("the quote does not cover PCR 10, which the IMA log extends",
                                  rule="tpm.pcr-selection", expected="PCR 10 quoted",
                                  actual="not selected")
    return replay_ima(parse_ima_log(raw), pcrs[bank][IMA_PCR], bank)


def verify_tpm_quote(attest: bytes, signature: bytes, ak: TpmPublic,
                     banks: Mapping[int, Mapping[int, bytes]], *, nonce: bytes | None,
                     trust: AkTrust, event_log: bytes | None = None,
                     ima_log: bytes | None = None, named: bool = True,
                     logs: ParsedCache[EventLog] | None = None) -> TpmClaims:
    """The quote, its logs and the AK's trust as claims (module invariants); a long-lived
    caller passes ``logs`` so a machine's unchanged boot log is parsed once."""
    quote = verify_quote(attest, signature, ak, banks, nonce=nonce)
    log = None
    if event_log is not None:
        log = (logs.get(event_log, lambda: parse_event_log(event_log)) if logs is not None
               else parse_event_log(event_log))
    replayed = check_pcrs(log, quote.pcrs) if log is not None else None
    secure_boot = (secure_boot_claims(log) if log is not None and replayed is not None
                   and any(SECURE_BOOT_PCR in bank for bank in replayed.values()) else None)
    boot = (boot_claims_in(log, next(b for b in _BOOT_BANKS + tuple(replayed) if b in replayed))
            if log is not None and replayed else None)
    ima = ima_replay(ima_log, quote.pcrs) if ima_log is not None else None
    return TpmClaims.of(quote, ak, nonce_checked=nonce is not None, replayed=replayed,
                        named=named, ak_chain=trust.chain, ima=ima, secure_boot=secure_boot,
                        ak_trust=trust.mode, insecure=trust.insecure, boot=boot)


@dataclass(frozen=True)
class _BankEvent:
    event_type: int
    digest: bytes
    data: bytes


def boot_claims_in(log: EventLog, bank: int) -> BootClaims:
    """The boot chain of a replayed log, read in ``bank`` (events of PCRs 0..9 that extend)."""
    events = [_BankEvent(ev.event_type, digest, ev.data) for ev in log.events
              if ev.event_type != EV_NO_ACTION and ev.index <= _LAST_BOOT_PCR
              and (digest := ev.digest(bank)) is not None]
    return boot_claims(events, HASH_NAMES[bank])


def evidence_banks(evidence: evidence_pb2.TpmEvidence) -> dict[int, dict[int, bytes]]:
    """The PCR banks of the wire message (bounded, one entry per bank, sizes checked)."""
    if len(evidence.pcrs) > MAX_BANKS:
        raise Malformed("too many PCR banks", rule="tpm.pcrs", expected=f"<= {MAX_BANKS}",
                        actual=str(len(evidence.pcrs)))
    banks: dict[int, dict[int, bytes]] = {}
    for bank in evidence.pcrs:
        size = KNOWN_DIGEST_SIZES.get(bank.hash_alg)
        if size is None or bank.hash_alg in banks:
            raise Malformed("PCR bank unknown or repeated", rule="tpm.pcrs",
                            expected="SHA-1/256/384/512, each once",
                            actual=f"{bank.hash_alg:#06x}")
        values: dict[int, bytes] = {}
        for index, value in bank.values.items():
            if index >= PCR_COUNT or len(value) != size:
                raise Malformed("PCR value out of range or of the wrong size", rule="tpm.pcrs",
                                expected=f"PCR 0..{PCR_COUNT - 1} with {size}-byte values",
                                actual=f"PCR {index}: {len(value)} bytes")
            values[index] = bytes(value)
        banks[bank.hash_alg] = values
    return banks


def _bounded(value: bytes, limit: int, what: str) -> bytes | None:
    if len(value) > limit:
        raise Malformed(f"{what} too large", rule="tpm.evidence", expected=f"<= {limit} bytes",
                        actual=str(len(value)))
    return bytes(value) if value else None


def _certificate(der: bytes) -> x509.Certificate:
    if len(der) > MAX_CERT_BYTES:
        raise Malformed("AK certificate too large", rule="tpm.ak-cert",
                        expected=f"<= {MAX_CERT_BYTES} bytes", actual=str(len(der)))
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Malformed("AK certificate is not DER", rule="tpm.ak-cert", expected="X.509 DER",
                        actual=str(exc)[:120]) from None


class TpmVerifier:
    """Verifies ``tpm`` evidence against configured AK roots and the enrolled AKs."""

    def __init__(self, ak_roots: Sequence[x509.Certificate],
                 simulator_ak_roots: Sequence[x509.Certificate],
                 enrolments: TpmEnrolments | None) -> None:
        self._ak_roots = tuple(ak_roots)
        self._simulator_roots = tuple(simulator_ak_roots)
        self._enrolments = enrolments
        self._logs: ParsedCache[EventLog] = ParsedCache()  # boot logs, parsed once each

    def _certified(self, evidence: evidence_pb2.TpmEvidence, ak: TpmPublic,
                   at: datetime) -> AkTrust:
        leaf = _certificate(evidence.ak_certificate)
        pool = [_certificate(der) for der in evidence.ak_intermediates[:4]]
        insecure = False
        try:
            links = verify_ak_certificate(leaf, pool, self._ak_roots, at=at)
        except ChainUntrusted:
            if not self._simulator_roots:
                raise
            links = verify_ak_certificate(leaf, pool, self._simulator_roots, at=at)
            insecure = True
        check_certified_key(leaf, ak)
        with lenient_names():
            chain = tuple(c.subject.rfc4514_string()[:120] for c in links[1:])
        return AkTrust("certificate", chain, insecure)

    def _trust(self, evidence: evidence_pb2.TpmEvidence, ak: TpmPublic,
               at: datetime) -> AkTrust:
        if evidence.ak_certificate:
            return self._certified(evidence, ak, at)
        enrolled = (self._enrolments.by_ak_name(ak.name)
                    if self._enrolments is not None else None)
        if enrolled is None:
            raise ChainUntrusted("the AK is neither enrolled nor certified",
                                 rule="tpm.ak-enrolment",
                                 expected="an AK enrolled by credential activation, or an AK "
                                          "certificate to a configured root",
                                 actual=f"AK {ak.name.hex()}")
        return AkTrust("enrolled", (f"EK {enrolled.ek_fingerprint}",), enrolled.insecure)

    def verify(self, evidence: evidence_pb2.TpmEvidence, *, at: datetime,
               expected_report_data: bytes) -> TpmClaims:
        """Typed claims of ``evidence`` bound to ``expected_report_data`` (module
        invariants)."""
        banks = evidence_banks(evidence)
        event_log = _bounded(evidence.event_log, MAX_EVENT_LOG, "event log")
        ima_log = _bounded(evidence.ima_log, MAX_IMA_LOG, "IMA log")
        ak = parse_public(evidence.ak_public)
        check_ak_attributes(ak)
        trust = self._trust(evidence, ak, at)
        claims = verify_tpm_quote(evidence.quote, evidence.signature, ak, banks,
                                  nonce=expected_report_data, trust=trust,
                                  event_log=event_log, ima_log=ima_log, logs=self._logs)
        if trust.mode == "enrolled" and self._enrolments is not None:
            self._enrolments.observe(ak.name, claims.reset_count, claims.restart_count)
        return claims
