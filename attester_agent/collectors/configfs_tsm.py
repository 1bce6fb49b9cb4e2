"""Evidence through the Linux configfs-tsm report interface (evidence-formats.md section 6.3).

Invariants:
- Every attempt uses its own freshly created instance directory (unique name) that is removed
  afterwards, whatever happens.
- ``provider`` must be a provider this collector supports (``sev_guest`` -> SEV-SNP evidence,
  ``tdx_guest`` -> TDX evidence); anything else is UNAVAILABLE, never guessed. The provider
  decides ``tee`` (probed once, then fixed): an instance whose provider differs from it later is
  UNAVAILABLE.
- ``inblob`` receives exactly the 64 report_data bytes in one write.
- A report is accepted only when ``generation`` after reading equals the generation before the
  writes plus the number of writes; otherwise another writer interfered and the attempt is
  retried, at most ``max_attempts`` times, then UNAVAILABLE.
- The SNP ``outblob`` must be exactly one ATTESTATION_REPORT (1184 bytes), parse, and carry the
  requested report_data; a wrong size or shape is MALFORMED, a foreign report_data is BINDING.
- The TDX ``outblob`` must be a DCAP TDX quote carrying the requested report_data (same
  categories); it is sent with the CCEL and the runtime log (``tdx_evidence.collect_tdx``, which
  holds the runtime log's shared lock while the quote is generated).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Final

from attester_agent.collectors.base import check_report_data
from attester_agent.collectors.pseudo_file import describe_oserror, read_bounded, write_once
from attester_agent.collectors.tdx_evidence import TdxSources, collect_tdx
from keybroker.errors import BindingMismatch, Malformed, Unavailable
from keybroker.evidence.snp_report import REPORT_SIZE, parse_report
from keybroker.v1 import evidence_pb2

logger = logging.getLogger(__name__)

DEFAULT_ROOT: Final = Path("/sys/kernel/config/tsm/report")
PROVIDER_SEV_GUEST: Final = "sev_guest"
PROVIDER_TDX_GUEST: Final = "tdx_guest"
SUPPORTED_PROVIDERS: Final = (PROVIDER_SEV_GUEST, PROVIDER_TDX_GUEST)
TEE_FOR_PROVIDER: Final = {
    PROVIDER_SEV_GUEST: evidence_pb2.TEE_TYPE_SEV_SNP,
    PROVIDER_TDX_GUEST: evidence_pb2.TEE_TYPE_TDX,
}
# Upper bound for outblob/auxblob reads (the kernel's newest TSM_REPORT_OUTBLOB_MAX is 16 MiB).
_MAX_BLOB: Final = 16 * 1024 * 1024
_PRIVLEVEL_MAX: Final = 3


class ConfigfsTsmCollector:
    """SEV-SNP or TDX evidence from ``<root>/<instance>/{inblob,outblob,auxblob}``."""

    name: Final = "configfs-tsm"

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        *,
        privlevel: int | None = None,
        max_attempts: int = 3,
        tdx_sources: TdxSources | None = None,
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= _PRIVLEVEL_MAX:
            raise ValueError(f"privlevel must be 0..{_PRIVLEVEL_MAX}, got {privlevel}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.root = root
        self.privlevel = privlevel
        self.max_attempts = max_attempts
        self.tdx_sources = tdx_sources if tdx_sources is not None else TdxSources()
        self._provider: str | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def tee(self) -> int:
        """The TeeType of the provider (probed on first use; UNAVAILABLE if unsupported)."""
        provider = self._provider if self._provider is not None else self.provider()
        if provider not in SUPPORTED_PROVIDERS:
            raise _unsupported(provider)
        return TEE_FOR_PROVIDER[provider]

    def provider(self) -> str:
        """The provider behind the interface (probes with a short-lived instance)."""
        instance = self._new_instance()
        try:
            provider = self._read_provider(instance)
        finally:
            self._remove(instance)
        if self._provider is None and provider in SUPPORTED_PROVIDERS:
            self._provider = provider  # the first supported answer fixes the TEE
        return provider

    def available(self) -> bool:
        """True when the root exists and its provider is one this collector supports."""
        if not self.root.is_dir():
            return False
        try:
            provider = self.provider()
        except (Unavailable, Malformed) as exc:
            logger.info("configfs-tsm at %s not usable: %s", self.root, exc)
            return False
        if provider not in SUPPORTED_PROVIDERS:
            logger.info("configfs-tsm at %s has unsupported provider %s", self.root, provider)
            return False
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """SNP: the report (outblob) and certificate table (auxblob); TDX: the quote (outblob)
        with the CCEL and the runtime log; all for exactly ``report_data``."""
        check_report_data(report_data)
        if self.tee == evidence_pb2.TEE_TYPE_TDX:
            return collect_tdx(self._tdx_quote, report_data, self.tdx_sources,
                               source="configfs-tsm")
        report, aux = self._generate(report_data)
        _check_snp_report(report, report_data)
        logger.info("configfs-tsm report collected (%d cert-table bytes)", len(aux))
        return evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(report=report, cert_table=aux))

    def _tdx_quote(self, report_data: bytes) -> bytes:
        quote, _aux = self._generate(report_data)
        return quote

    def _generate(self, report_data: bytes) -> tuple[bytes, bytes]:
        """(outblob, auxblob) of a generation-checked attempt (retried on interference)."""
        for attempt in range(1, self.max_attempts + 1):
            instance = self._new_instance()
            try:
                result = self._attempt(instance, report_data)
            finally:
                self._remove(instance)
            if result is not None:
                logger.debug("configfs-tsm outblob generated on attempt %d", attempt)
                return result
            logger.warning("configfs-tsm generation changed during attempt %d of %d; retrying",
                           attempt, self.max_attempts)
        raise Unavailable("configfs-tsm report kept being overwritten by another writer",
                          rule="configfs-tsm generation", expected="generation == g0 + writes",
                          actual=f"mismatch on all {self.max_attempts} attempts")

    # -- one attempt -----------------------------------------------------------------------

    def _attempt(self, instance: Path, report_data: bytes) -> tuple[bytes, bytes] | None:
        """(outblob, auxblob), or None when the generation check failed."""
        provider = self._read_provider(instance)
        if provider not in SUPPORTED_PROVIDERS:
            raise _unsupported(provider)
        if provider != self._provider:
            raise Unavailable("configfs-tsm provider changed after it was probed",
                              rule="configfs-tsm provider", expected=str(self._provider),
                              actual=provider)
        g0 = self._read_generation(instance)
        writes = 0
        if self.privlevel is not None:
            self._write_attr(instance / "privlevel", f"{self.privlevel}\n".encode("ascii"))
            writes += 1
        self._write_attr(instance / "inblob", report_data)
        writes += 1
        outblob = self._read_attr(instance / "outblob")
        auxblob = self._read_optional(instance / "auxblob")
        g1 = self._read_generation(instance)
        if g1 != g0 + writes:
            logger.debug("configfs-tsm generation %d -> %d after %d writes", g0, g1, writes)
            return None
        return outblob, auxblob

    def _read_provider(self, instance: Path) -> str:
        raw = self._read_attr(instance / "provider")
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise Malformed("configfs-tsm provider is not ASCII", actual=raw[:32].hex()) from exc

    def _read_generation(self, instance: Path) -> int:
        raw = self._read_attr(instance / "generation")
        text = raw.decode("ascii", errors="replace").strip()
        if not text.isdigit():
            raise Malformed("configfs-tsm generation is not a decimal counter",
                            expected="decimal integer", actual=text[:32])
        return int(text)

    # -- file-system operations (the kernel interface) -------------------------------------

    def _new_instance(self) -> Path:
        instance = self.root / f"keybroker-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._make_instance(instance)
        except OSError as exc:
            raise Unavailable("cannot create a configfs-tsm report instance",
                              expected=f"writable {self.root}",
                              actual=describe_oserror(exc)) from exc
        return instance

    def _make_instance(self, instance: Path) -> None:
        """mkdir the instance; configfs populates its attributes."""
        os.mkdir(instance, 0o700)

    def _remove(self, instance: Path) -> None:
        try:
            self._remove_instance(instance)
        except OSError as exc:
            logger.warning("could not remove configfs-tsm instance %s: %s", instance,
                           describe_oserror(exc))

    def _remove_instance(self, instance: Path) -> None:
        """rmdir the instance (configfs drops its attributes with it)."""
        os.rmdir(instance)

    def _write_attr(self, path: Path, data: bytes) -> None:
        """Write ``data`` to an attribute in a single write call."""
        write_once(path, data, what="configfs-tsm")

    def _read_attr(self, path: Path) -> bytes:
        """Read a whole attribute (bounded)."""
        return read_bounded(path, _MAX_BLOB, what="configfs-tsm")

    def _read_optional(self, path: Path) -> bytes:
        """Read an attribute that a provider may not expose (empty when absent)."""
        if not path.exists():
            return b""
        return self._read_attr(path)


def _unsupported(provider: str) -> Unavailable:
    return Unavailable("configfs-tsm provider is not supported", rule="configfs-tsm provider",
                       expected=" | ".join(SUPPORTED_PROVIDERS), actual=provider)


def _check_snp_report(report: bytes, report_data: bytes) -> None:
    if len(report) != REPORT_SIZE:
        raise Malformed("configfs-tsm outblob is not one SEV-SNP attestation report",
                        rule="configfs-tsm outblob size", expected=f"{REPORT_SIZE} bytes",
                        actual=f"{len(report)} bytes")
    parsed = parse_report(report)
    if parsed.report_data != report_data:
        raise BindingMismatch("configfs-tsm report carries another report_data",
                              rule="configfs-tsm report_data", expected=report_data.hex(),
                              actual=parsed.report_data.hex())
