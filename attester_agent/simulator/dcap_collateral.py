"""Signed Intel-format collateral for the DCAP simulator PKI. INSECURE: test roots only.

The simulated platforms and their collateral share one TCB profile (``LEVELS``), so a simulator
asked for a status (``tcb="OutOfDate"``, ...) carries SVNs that match exactly that level:

- SGX: the PCK certificate's COMP01/COMP02 SVNs equal the level's ``key_svn`` (the other
  components and PCESVN are the same for every level); ``"unsupported"`` uses ``UNSUPPORTED_SVN``,
  below every level.
- TDX: the PCK certificate matches the first SGX level; the level is selected by TEE_TCB_SVN[2]
  (TDX late microcode) = ``key_svn``. TEE_TCB_SVN[1] = ``TDX_MODULE_MAJOR`` (1), so the module is
  rated by the ``TDX_01`` module identity (levels ``MODULE_LEVELS``) and TEE_TCB_SVN[0] =
  ``TDX_MODULE_SVN``.

Invariants:
- Documents are what Intel PCS v4 serves: ``{"tcbInfo":{...},"signature":"<hex r||s>"}`` and
  ``{"enclaveIdentity":{...},"signature":...}``, compact JSON; the ECDSA-P256-SHA256 signature
  (by the "Intel SGX TCB Signing" key) is over the exact bytes of the member as written.
- TCB Info is version 3 (TDX: ``tdxModule``, ``tdxModuleIdentities``, ``tdxtcbcomponents``),
  Enclave Identity version 2; dates are RFC 3339 UTC with a "Z"; hex is upper case.
- Every document is valid from ``now - 1 day`` to ``now + days`` unless told otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TcbChoice = Literal["UpToDate", "SWHardeningNeeded", "OutOfDate", "Revoked", "unsupported"]
TCB_CHOICES: tuple[str, ...] = ("UpToDate", "SWHardeningNeeded", "OutOfDate", "Revoked",
                                "unsupported")
PCE_ID = bytes(2)
PCESVN = 13
TDX_FMSPC = bytes.fromhex("5ec0de000081")
SGX_FMSPC = bytes.fromhex("5ec0de000000")
TCB_EVALUATION_DATA_NUMBER = 17
TDX_MODULE_MAJOR = 1
TDX_MODULE_SVN = 4
UNSUPPORTED_SVN = 2
QE_ISVSVN = 8
QE_ISVPRODID = {"QE": 1, "TD_QE": 2}
QE_MISCSELECT = 0
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")  # INIT|MODE64BIT|PROVISIONKEY
QE_IDENTITY_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_IDENTITY_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")
MODULE_MRSIGNER = bytes(48)  # Intel-signed TDX modules have an all-zero MRSIGNERSEAM
_SGX_BASE = (0, 0, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
_SGX_LABELS = {0: ("BIOS", "Early Microcode Update"), 1: ("OS/VMM", "SGX Late Microcode Update"),
               2: ("OS/VMM", "TXT SINIT"), 3: ("BIOS", ""), 4: ("BIOS", ""), 5: ("BIOS", ""),
               7: ("OS/VMM", "SEAMLDR ACM")}
_TDX_LABELS = {0: ("OS/VMM", "TDX Module"), 1: ("OS/VMM", "TDX Module"),
               2: ("OS/VMM", "TDX Late Microcode Update")}


@dataclass(frozen=True)
class LevelSpec:
    """One TCB level of the simulator profile."""

    status: str
    key_svn: int
    tcb_date: str
    advisory_ids: tuple[str, ...]


LEVELS = (
    LevelSpec("UpToDate", 7, "2024-11-13T00:00:00Z", ()),
    LevelSpec("SWHardeningNeeded", 6, "2024-03-13T00:00:00Z", ("INTEL-SA-00615",)),
    LevelSpec("OutOfDate", 5, "2023-08-09T00:00:00Z", ("INTEL-SA-00828", "INTEL-SA-00615")),
    LevelSpec("Revoked", 3, "2018-01-04T00:00:00Z", ("INTEL-SA-00233",)),
)
MODULE_LEVELS = (
    LevelSpec("UpToDate", TDX_MODULE_SVN, "2024-03-13T00:00:00Z", ()),
    LevelSpec("OutOfDate", 2, "2023-08-09T00:00:00Z", ("INTEL-SA-00837",)),
)
QE_LEVELS = (
    LevelSpec("UpToDate", QE_ISVSVN, "2024-03-13T00:00:00Z", ()),
    LevelSpec("OutOfDate", 6, "2023-08-09T00:00:00Z", ("INTEL-SA-00837",)),
)


def key_svn(tcb: str) -> int:
    """The distinguishing SVN of the level named ``tcb`` (``"unsupported"``: below all)."""
    if tcb == "unsupported":
        return UNSUPPORTED_SVN
    for level in LEVELS:
        if level.status == tcb:
            return level.key_svn
    raise ValueError(f"unknown simulator TCB {tcb!r}; one of {', '.join(TCB_CHOICES)}")


def sgx_svns(tcb: str) -> tuple[int, ...]:
    """The 16 SGX component SVNs of a platform at ``tcb``."""
    svn = key_svn(tcb)
    return (svn, svn, *_SGX_BASE[2:])


def tee_tcb_svn(tcb: str) -> bytes:
    """TEE_TCB_SVN of a TD at ``tcb``: module SVN, module major version, late microcode SVN."""
    return bytes([TDX_MODULE_SVN, TDX_MODULE_MAJOR, key_svn(tcb)]) + bytes(13)


def qe_mrsigner(name: str) -> bytes:
    """The simulated quoting enclaves' MRSIGNER for a CA named ``name``."""
    return hashlib.sha256(b"keybroker/dcap-simulator/qe-signer\x00" + name.encode()).digest()


def rfc3339(value: dt.datetime) -> str:
    """``2025-01-02T03:04:05Z`` (seconds precision, UTC)."""
    if value.tzinfo is None:
        raise ValueError("collateral times must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _components(svns: tuple[int, ...] | bytes,
                labels: dict[int, tuple[str, str]]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i, svn in enumerate(svns):
        comp: dict[str, object] = {"svn": svn}
        category, kind = labels.get(i, ("", ""))
        if category:
            comp["category"] = category
        if kind:
            comp["type"] = kind
        out.append(comp)
    return out


def _level(tcb: dict[str, object], spec: LevelSpec) -> dict[str, object]:
    level: dict[str, object] = {"tcb": tcb, "tcbDate": spec.tcb_date, "tcbStatus": spec.status}
    if spec.advisory_ids:
        level["advisoryIDs"] = list(spec.advisory_ids)
    return level


def _window(now: dt.datetime, days: int) -> dict[str, object]:
    return {"issueDate": rfc3339(now - dt.timedelta(days=1)),
            "nextUpdate": rfc3339(now + dt.timedelta(days=days))}


def _module(with_levels: bool, ident: str = "") -> dict[str, object]:
    doc: dict[str, object] = {"mrsigner": MODULE_MRSIGNER.hex().upper(),
                              "attributes": "0000000000000000",
                              "attributesMask": "FFFFFFFFFFFFFFFF"}
    if with_levels:
        doc = {"id": ident, **doc,
               "tcbLevels": [_level({"isvsvn": m.key_svn}, m) for m in MODULE_LEVELS]}
    return doc


def tcb_info_member(tee: Literal["TDX", "SGX"], *, now: dt.datetime, days: int) -> bytes:
    """The exact bytes of a ``tcbInfo`` member for the simulator profile."""
    doc: dict[str, object] = {"id": tee, "version": 3, **_window(now, days),
                              "fmspc": (TDX_FMSPC if tee == "TDX" else SGX_FMSPC).hex(),
                              "pceId": PCE_ID.hex(), "tcbType": 0,
                              "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER}
    levels: list[dict[str, object]] = []
    for spec in LEVELS:
        if tee == "TDX":
            tcb: dict[str, object] = {
                "sgxtcbcomponents": _components(sgx_svns("UpToDate"), _SGX_LABELS),
                "pcesvn": PCESVN,
                "tdxtcbcomponents": _components(tee_tcb_svn(spec.status), _TDX_LABELS)}
        else:
            tcb = {"sgxtcbcomponents": _components(sgx_svns(spec.status), _SGX_LABELS),
                   "pcesvn": PCESVN}
        levels.append(_level(tcb, spec))
    if tee == "TDX":
        doc["tdxModule"] = _module(False)
        doc["tdxModuleIdentities"] = [_module(True, f"TDX_{TDX_MODULE_MAJOR:02X}")]
    doc["tcbLevels"] = levels
    return json.dumps(doc, separators=(",", ":")).encode()


def qe_identity_member(enclave: Literal["QE", "TD_QE"], *, name: str, now: dt.datetime,
                       days: int) -> bytes:
    """The exact bytes of an ``enclaveIdentity`` member for the simulated QE or TD QE."""
    doc: dict[str, object] = {
        "id": enclave, "version": 2, **_window(now, days),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": f"{QE_MISCSELECT:08X}", "miscselectMask": "FFFFFFFF",
        "attributes": QE_IDENTITY_ATTRIBUTES.hex().upper(),
        "attributesMask": QE_IDENTITY_ATTRIBUTES_MASK.hex().upper(),
        "mrsigner": qe_mrsigner(name).hex().upper(), "isvprodid": QE_ISVPRODID[enclave],
        "tcbLevels": [_level({"isvsvn": q.key_svn}, q) for q in QE_LEVELS]}
    return json.dumps(doc, separators=(",", ":")).encode()


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 over ``data`` as 64 bytes r||s (big-endian)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signed_body(member_name: str, member: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """``{"<member_name>":<member>,"signature":"<hex>"}`` signed over ``member`` as written."""
    signature = raw_signature(key, member).hex()
    return (b'{"' + member_name.encode() + b'":' + member + b',"signature":"'
            + signature.encode() + b'"}')
