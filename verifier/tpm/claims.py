"""What a verified TPM quote proves, as typed claims.

Invariants:
- Only values the AK signed (directly, or through the quoted pcrDigest) appear: the PCRs of
  the quote's selection, its extraData, clock state and firmware version, and the AK's Name.
- ``eventlog_pcrs`` lists the PCRs an event log replayed to their quoted values; a log that
  did not replay never produces claims (``verifier.eventlog.pcr`` raises instead).
- ``nonce_checked`` says whether extraData was compared with an expected nonce; offline
  verification without ``--nonce`` proves nothing about freshness and says so.
- ``ak_trust`` says why the AK is trusted: ``enrolled`` (credential activation to an EK
  root), ``certificate`` (an AK certificate to a configured root) or ``operator`` (given by
  hand to ``keybroker verify``). ``insecure_root`` is true when that root is a simulator's.
- ``as_dict`` always carries every key (``ima``, ``secure_boot`` and ``boot`` null when no log
  proved them), so policies type-check against one shape. ``boot`` (firmware, boot
  applications, kernel, initrd, command line) is read from a replayed log by
  ``verifier.eventlog.boot``: informational, as its labels are not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.evidence.tpm_public import ALG_RSA, TpmPublic
from verifier.eventlog.boot import BootClaims
from verifier.eventlog.ima import ImaReplay
from verifier.eventlog.secure_boot import SecureBootClaims
from verifier.tpm_quote import BANK_NAMES, VerifiedQuote

PLATFORM_TPM = "tpm"


@dataclass(frozen=True)
class TpmClaims:
    """Claims of one verified TPM2_Quote."""

    ak_name: bytes
    ak_key: str
    signature: str
    extra_data: bytes
    nonce_checked: bool
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int
    pcrs: dict[str, dict[int, bytes]]
    eventlog_pcrs: dict[str, tuple[int, ...]]
    ak_chain: tuple[str, ...] = ()  # issuers up to the configured root, when certified
    ima_files: dict[str, str] | None = None  # path -> "algo:hex", measured before the quote
    ima_pending: int = 0  # IMA entries logged after the quote (not claimed)
    secure_boot: SecureBootClaims | None = None  # from a replayed log covering PCR 7
    ak_trust: str = "operator"  # "enrolled" | "certificate" | "operator"
    insecure: bool = False  # the AK's trust ends at a simulator root
    boot: BootClaims | None = None  # the boot chain a replayed log shows (informational)

    @classmethod
    def of(cls, quote: VerifiedQuote, ak: TpmPublic, *, nonce_checked: bool,
           replayed: dict[int, dict[int, bytes]] | None = None,
           named: bool = True, ak_chain: tuple[str, ...] = (),
           ima: ImaReplay | None = None,
           secure_boot: SecureBootClaims | None = None, ak_trust: str = "operator",
           insecure: bool = False, boot: BootClaims | None = None) -> TpmClaims:
        """The claims of ``quote`` signed by ``ak`` (and what a log replayed); ``named``
        False for an AK given as a bare public key (it has no TPM Name)."""
        attest, sig = quote.attest, quote.signature
        key = f"RSA-{ak.key_bits}" if ak.type == ALG_RSA else f"ECC-P{ak.key_bits}"
        scheme = {0x0014: "RSASSA", 0x0016: "RSAPSS", 0x0018: "ECDSA"}[sig.sig_alg]
        return cls(
            ak_name=ak.name if named else b"", ak_key=key,
            signature=f"{scheme}-{BANK_NAMES.get(sig.hash_alg, hex(sig.hash_alg)).upper()}",
            extra_data=attest.extra_data, nonce_checked=nonce_checked, clock=attest.clock,
            reset_count=attest.reset_count, restart_count=attest.restart_count,
            firmware_version=attest.firmware_version,
            pcrs={BANK_NAMES.get(a, hex(a)): dict(sorted(v.items()))
                  for a, v in quote.pcrs.items()},
            eventlog_pcrs={BANK_NAMES.get(a, hex(a)): tuple(sorted(v))
                           for a, v in (replayed or {}).items()},
            ak_chain=ak_chain,
            ima_files=({p: f"{a}:{d}" for p, (a, d) in ima.files().items()}
                       if ima is not None else None),
            ima_pending=len(ima.pending) if ima is not None else 0,
            secure_boot=secure_boot, ak_trust=ak_trust, insecure=insecure, boot=boot)

    @property
    def report_data(self) -> bytes:
        """Where a TPM quote carries the caller's binding: extraData."""
        return self.extra_data

    @property
    def insecure_root(self) -> bool:
        """Whether the AK's trust ends at a simulator (insecure test) root."""
        return self.insecure

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (``platform`` = tpm)."""
        return {
            "platform": PLATFORM_TPM,
            "ak_name": self.ak_name.hex(),
            "ak_key": self.ak_key,
            "signature": self.signature,
            "extra_data": self.extra_data.hex(),
            "nonce_checked": self.nonce_checked,
            "clock": self.clock,
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "firmware_version": f"{self.firmware_version:#018x}",
            "pcrs": {bank: {str(i): v.hex() for i, v in values.items()}
                     for bank, values in self.pcrs.items()},
            "eventlog_pcrs": {bank: list(pcrs) for bank, pcrs in self.eventlog_pcrs.items()},
            "ak_chain": list(self.ak_chain),
            "ak_trust": self.ak_trust,
            "insecure_root": self.insecure,
            "ima": ({"files": dict(self.ima_files), "pending": self.ima_pending}
                    if self.ima_files is not None else None),
            "secure_boot": (self.secure_boot.as_dict() if self.secure_boot is not None
                            else None),
            "boot": self.boot.as_dict() if self.boot is not None else None,
        }
