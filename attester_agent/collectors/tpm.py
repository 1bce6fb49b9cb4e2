"""The TPM 2.0 collector (tpm2-pytss over a TCTI: the kernel's resource manager
``/dev/tpmrm0`` by default, or a swtpm socket): EK certificate, AK, ActivateCredential and
TPM2_Quote with the PCR values, boot event log and IMA log.

Invariants:
- The AK is a primary key of the owner hierarchy made from one fixed template (ECC P-256,
  ECDSA-SHA256, restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin): the same TPM
  always derives the same AK, so nothing is stored between enrolment and quotes. The EK is
  made from the TCG default RSA-2048 template (or the template the TPM stores in NV), which is
  the key the EK certificate certifies.
- Every transient object and session this collector loads is flushed before it returns, on
  success and on failure (a TPM without a resource manager keeps them otherwise).
- A quote's qualifyingData is exactly the 64 report_data bytes; the quoted PCRs are read in
  the same call sequence, and a PCR update counter that moves between quote and read is
  UNAVAILABLE (retry), never evidence with values the quote does not prove.
- Reads are bounded: the EK certificate by its NV size (<= 4 KiB), the logs by ``MAX_LOG``.
- tpm2-pytss is imported only when the collector is used (hardware-only hosts without a TPM
  never load it); its failures become UNAVAILABLE naming the TPM command.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from attester_agent.collectors.base import check_report_data
from keybroker.errors import KeybrokerError, Malformed, Unavailable
from keybroker.v1 import evidence_pb2

DEFAULT_TCTI = "device:/dev/tpmrm0"
DEFAULT_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
DEFAULT_IMA_LOG = Path("/sys/kernel/security/ima/ascii_runtime_measurements")
DEFAULT_PCRS = tuple(range(11))  # firmware, boot loader, secure boot, PCR 8-9, IMA (10)
EK_CERT_RSA = 0x01C00002
MAX_EK_CERT = 4096
MAX_LOG = 16 << 20
SHA256 = 0x000B
_T = TypeVar("_T")


@dataclass(frozen=True)
class EnrolmentMaterial:
    """What the verifier needs to enrol this TPM's AK."""

    ek_certificate: bytes
    ak_public: bytes  # TPMT_PUBLIC


def _read_bounded(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LOG + 1)
    except OSError as exc:
        raise Unavailable(f"cannot read the {what}", expected=str(path),
                          actual=exc.strerror or str(exc)) from None
    if len(data) > MAX_LOG:
        raise Malformed(f"{what} too large", expected=f"<= {MAX_LOG} bytes", actual=str(path))
    return data


class TpmCollector:
    """TPM 2.0 evidence through tpm2-pytss (module invariants)."""

    def __init__(self, tcti: str = DEFAULT_TCTI, *, event_log: Path | None = DEFAULT_EVENT_LOG,
                 ima_log: Path | None = None, pcrs: tuple[int, ...] = DEFAULT_PCRS,
                 name: str = "tpm", logs_optional: bool = False) -> None:
        """``logs_optional``: a log file that does not exist is left out (the kernel's
        defaults on a machine without securityfs logs) instead of being an error."""
        if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
            raise Malformed("PCR selection out of range", expected="PCR indices 0..23",
                            actual=str(pcrs))
        self._tcti = tcti
        self._event_log = event_log
        self._ima_log = ima_log
        self._pcrs = tuple(sorted(set(pcrs)))
        self._name = name
        self._logs_optional = logs_optional

    @property
    def name(self) -> str:
        return self._name

    @property
    def tee(self) -> int:
        return evidence_pb2.TEE_TYPE_TPM

    def available(self) -> bool:
        """Whether the TCTI's device exists (a socket TCTI is probed by connecting)."""
        kind, _, conf = self._tcti.partition(":")
        if kind == "device":
            return os.access(conf or "/dev/tpmrm0", os.R_OK | os.W_OK)
        try:
            self.run("TPM2_GetRandom", lambda esys, _: esys.get_random(8))
        except KeybrokerError:
            return False
        return True

    @contextmanager
    def _esys(self) -> Iterator[Any]:
        os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logs to stderr otherwise
        from tpm2_pytss import ESAPI, TCTILdr  # noqa: PLC0415 - only when a TPM is used

        kind, _, conf = self._tcti.partition(":")
        try:
            tcti = TCTILdr(kind, conf or None)
            esys = ESAPI(tcti)
        except Exception as exc:  # tpm2-pytss raises its own TSS2_Exception types
            raise Unavailable("cannot open the TPM", expected=self._tcti,
                              actual=str(exc)[:200]) from None
        try:
            yield esys
        finally:
            esys.close()
            tcti.close()

    def run(self, command: str, body: Callable[[Any, list[Any]], _T]) -> _T:
        """``body(esys, loaded)`` with every handle appended to ``loaded`` flushed after."""
        with self._esys() as esys:
            loaded: list[Any] = []
            try:
                return body(esys, loaded)
            except KeybrokerError:
                raise
            except Exception as exc:
                raise Unavailable(f"{command} failed", actual=str(exc)[:200]) from None
            finally:
                for handle in loaded:
                    with contextlib.suppress(Exception):  # best effort; errors were raised
                        esys.flush_context(handle)

    @staticmethod
    def _ak(esys: Any, loaded: list[Any]) -> tuple[Any, bytes]:
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT  # noqa: PLC0415
        from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE  # noqa: PLC0415

        attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
                 | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | TPMA_OBJECT.USERWITHAUTH)
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attrs)
        template.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
        handle, public, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), template,
                                                 ESYS_TR.OWNER)
        loaded.append(handle)
        return handle, bytes(public.publicArea.marshal())

    @staticmethod
    def nv_read(esys: Any, index: int, limit: int) -> bytes:
        from tpm2_pytss.constants import ESYS_TR  # noqa: PLC0415

        handle = esys.tr_from_tpmpublic(index)
        public, _ = esys.nv_read_public(handle)
        size = int(public.nvPublic.dataSize)
        if size > limit:
            raise Malformed("NV index larger than expected", expected=f"<= {limit} bytes",
                            actual=f"{index:#x}: {size} bytes")
        data = b""
        while len(data) < size:
            data += bytes(esys.nv_read(handle, min(512, size - len(data)), len(data),
                                       auth_handle=ESYS_TR.OWNER))
        return data

    def enrolment_material(self) -> EnrolmentMaterial:
        """The EK certificate (NV 0x01C00002) and this TPM's AK public area."""
        def body(esys: Any, loaded: list[Any]) -> EnrolmentMaterial:
            certificate = self.nv_read(esys, EK_CERT_RSA, MAX_EK_CERT)
            return EnrolmentMaterial(certificate, self._ak(esys, loaded)[1])
        return self.run("reading the EK certificate", body)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential: the credential the verifier made for this TPM's AK."""
        def body(esys: Any, loaded: list[Any]) -> bytes:
            from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE  # noqa: PLC0415
            from tpm2_pytss.types import (  # noqa: PLC0415
                TPM2B_ENCRYPTED_SECRET,
                TPM2B_ID_OBJECT,
                TPM2B_SENSITIVE_CREATE,
                TPMT_SYM_DEF,
            )
            from tpm2_pytss.utils import create_ek_template  # noqa: PLC0415

            ak, _ = self._ak(esys, loaded)
            _, template = create_ek_template("EK-RSA2048", self._nv_reader(esys))
            ek, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), template,
                                         ESYS_TR.ENDORSEMENT)
            loaded.append(ek)
            session = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                              TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                              TPM2_ALG.SHA256)
            loaded.append(session)
            esys.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            recovered = esys.activate_credential(
                ak, ek, TPM2B_ID_OBJECT(credential_blob), TPM2B_ENCRYPTED_SECRET(encrypted_secret),
                session1=ESYS_TR.PASSWORD, session2=session)
            return bytes(recovered)
        return self.run("TPM2_ActivateCredential", body)

    def _nv_reader(self, esys: Any) -> Callable[[int], bytes]:
        from tpm2_pytss.utils import NoSuchIndex  # noqa: PLC0415

        def read(index: int) -> bytes:
            try:
                return self.nv_read(esys, int(index), MAX_EK_CERT)
            except Malformed:
                raise
            except Exception:
                raise NoSuchIndex(index) from None
        return read

    def _quote(self, esys: Any, loaded: list[Any], report_data: bytes
               ) -> tuple[bytes, bytes, bytes, dict[int, bytes]]:
        from tpm2_pytss.constants import TPM2_ALG  # noqa: PLC0415
        from tpm2_pytss.types import TPM2B_DATA, TPML_PCR_SELECTION, TPMT_SIG_SCHEME  # noqa: PLC0415

        ak, ak_public = self._ak(esys, loaded)
        text = "sha256:" + ",".join(str(p) for p in self._pcrs)
        counter, values = self.pcr_values(esys)
        attest, signature = esys.quote(ak, TPML_PCR_SELECTION.parse(text),
                                       TPM2B_DATA(report_data),
                                       TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        after, _ = self.pcr_values(esys)
        if after != counter:
            raise Unavailable("PCRs changed while quoting; try again",
                              expected=f"update counter {counter}", actual=str(after))
        return (bytes(attest.attestationData), bytes(signature.marshal()), ak_public, values)

    def pcr_values(self, esys: Any) -> tuple[int, dict[int, bytes]]:
        """(PCR update counter, PCR -> value), reading at most 8 PCRs per TPM2_PCR_Read."""
        from tpm2_pytss.types import TPML_PCR_SELECTION  # noqa: PLC0415

        values: dict[int, bytes] = {}
        counters = set()
        for start in range(0, len(self._pcrs), 8):
            chunk = self._pcrs[start:start + 8]
            counter, _, digests = esys.pcr_read(
                TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in chunk)))
            counters.add(int(counter))
            values.update({pcr: bytes(d) for pcr, d in zip(chunk, digests, strict=True)})
        if len(counters) != 1:
            raise Unavailable("PCRs changed while reading them; try again",
                              expected="one update counter", actual=str(sorted(counters)))
        return counters.pop(), values

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """A quote over the selected SHA-256 PCRs with ``report_data`` as qualifyingData."""
        check_report_data(report_data)
        attest, signature, ak_public, values = self.run(
            "TPM2_Quote", lambda esys, loaded: self._quote(esys, loaded, report_data))
        evidence = evidence_pb2.TpmEvidence(quote=attest, signature=signature,
                                            ak_public=ak_public)
        evidence.pcrs.add(hash_alg=SHA256, values=values)
        for path, field, what in ((self._event_log, "event_log", "boot event log"),
                                  (self._ima_log, "ima_log", "IMA log")):
            if path is not None and (path.exists() or not self._logs_optional):
                setattr(evidence, field, _read_bounded(path, what))
        return evidence_pb2.Evidence(tpm=evidence)
