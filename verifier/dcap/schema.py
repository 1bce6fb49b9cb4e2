"""Typed Intel collateral documents: TCB Info v3 (SGX and TDX) and Enclave (QE) Identity v2, as
Intel PCS v4 serves them (evidence-formats.md section 2.8).

Invariants:
- Parsing is strict and total: every field the verifier uses must be present with the right JSON
  type (booleans are not integers), hex fields have their exact length, dates are RFC 3339 UTC
  ("...Z"), ``tcbStatus`` is one of the seven known values, TCB Info has version 3 and id
  SGX|TDX, a TDX TCB Info carries ``tdxModule`` and 16 ``tdxtcbcomponents`` per level (an SGX
  one carries neither), Enclave Identity has version 2. Anything else is ``Malformed``.
- These functions only interpret bytes; they never decide trust. ``verifier.dcap.documents``
  calls them only after the signature over the exact bytes has verified.
- All results are frozen dataclasses; byte fields are ``bytes``, never hex strings.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from keybroker.errors import Malformed
from keybroker.evidence.pcs_document import parse_date

_JsonObj = dict[str, object]


class TcbStatus(enum.Enum):
    """TCB level statuses (evidence-formats.md section 2.10); values are the JSON strings."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


@dataclass(frozen=True)
class TcbLevel:
    """One ``tcbInfo.tcbLevels`` entry; ``tdx_svns`` is None for SGX TCB Info."""

    sgx_svns: tuple[int, ...]
    pcesvn: int
    tdx_svns: tuple[int, ...] | None
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class IsvTcbLevel:
    """A level keyed by one ISVSVN (TDX module identities and QE identities)."""

    isvsvn: int
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """``tdxModule`` (module major version 0) or one ``tdxModuleIdentities`` entry."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[IsvTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    """A TCB Info v3 document (``tcbInfo`` member)."""

    id: Literal["SGX", "TDX"]
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModule, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class EnclaveIdentity:
    """An Enclave Identity v2 document (``enclaveIdentity`` member): QE, TD_QE or QVE."""

    id: Literal["QE", "TD_QE", "QVE"]
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[IsvTcbLevel, ...]


def _reject_duplicates(pairs: list[tuple[str, object]]) -> _JsonObj:
    out: _JsonObj = {}
    for key, value in pairs:
        if key in out:
            raise Malformed("duplicate JSON member", actual=key)
        out[key] = value
    return out


def load_json_object(raw: bytes, what: str) -> _JsonObj:
    """Decode UTF-8 JSON that must be an object with unique member names."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, Malformed):
            raise
        raise Malformed(f"{what} is not JSON", actual=str(exc)[:80]) from exc
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object", actual=type(value).__name__)
    return cast(_JsonObj, value)


def _field(obj: _JsonObj, key: str, what: str) -> object:
    if key not in obj:
        raise Malformed(f"{what}: missing member", expected=key)
    return obj[key]


def _obj(obj: _JsonObj, key: str, what: str) -> _JsonObj:
    value = _field(obj, key, what)
    if not isinstance(value, dict):
        raise Malformed(f"{what}.{key} is not an object", actual=type(value).__name__)
    return cast(_JsonObj, value)


def _list(obj: _JsonObj, key: str, what: str) -> list[object]:
    value = _field(obj, key, what)
    if not isinstance(value, list):
        raise Malformed(f"{what}.{key} is not an array", actual=type(value).__name__)
    return cast(list[object], value)


def _objs(obj: _JsonObj, key: str, what: str) -> list[_JsonObj]:
    items = _list(obj, key, what)
    if not all(isinstance(item, dict) for item in items):
        raise Malformed(f"{what}.{key} holds a non-object")
    return cast(list[_JsonObj], items)


def _int(obj: _JsonObj, key: str, what: str, maximum: int = 2**32 - 1) -> int:
    value = _field(obj, key, what)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise Malformed(f"{what}.{key} is not an integer in range", expected=f"0..{maximum}",
                        actual=repr(value)[:40])
    return value


def _str(obj: _JsonObj, key: str, what: str) -> str:
    value = _field(obj, key, what)
    if not isinstance(value, str):
        raise Malformed(f"{what}.{key} is not a string", actual=type(value).__name__)
    return value


def _hex(obj: _JsonObj, key: str, what: str, size: int) -> bytes:
    text = _str(obj, key, what)
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise Malformed(f"{what}.{key} is not hex", actual=text[:40]) from exc
    if len(text) != 2 * size or len(value) != size:
        raise Malformed(f"{what}.{key} is not {size} bytes of hex", actual=text[:40])
    return value


def _status(obj: _JsonObj, what: str) -> TcbStatus:
    text = _str(obj, "tcbStatus", what)
    try:
        return TcbStatus(text)
    except ValueError as exc:
        raise Malformed(f"{what}: unrecognized tcbStatus",
                        expected=" | ".join(s.value for s in TcbStatus), actual=text) from exc


def _advisories(obj: _JsonObj, what: str) -> tuple[str, ...]:
    if "advisoryIDs" not in obj:
        return ()
    items = _list(obj, "advisoryIDs", what)
    if not all(isinstance(item, str) for item in items):
        raise Malformed(f"{what}.advisoryIDs holds a non-string")
    return tuple(cast(list[str], items))


def _svns(tcb: _JsonObj, key: str, what: str) -> tuple[int, ...]:
    comps = _objs(tcb, key, what)
    if len(comps) != 16:
        raise Malformed(f"{what}.{key} must have 16 components", actual=str(len(comps)))
    return tuple(_int(c, "svn", f"{what}.{key}", 0xFF) for c in comps)


def _isv_levels(obj: _JsonObj, what: str) -> tuple[IsvTcbLevel, ...]:
    levels = []
    for i, level in enumerate(_objs(obj, "tcbLevels", what)):
        where = f"{what}.tcbLevels[{i}]"
        levels.append(IsvTcbLevel(
            isvsvn=_int(_obj(level, "tcb", where), "isvsvn", where, 0xFFFF),
            tcb_date=parse_date(_str(level, "tcbDate", where), f"{where}.tcbDate"),
            status=_status(level, where), advisory_ids=_advisories(level, where)))
    if not levels:
        raise Malformed(f"{what}: no tcbLevels")
    return tuple(levels)


def _module(obj: _JsonObj, what: str, *, levels: bool) -> TdxModule:
    return TdxModule(
        id=_str(obj, "id", what) if levels else "TDX_00",
        mrsigner=_hex(obj, "mrsigner", what, 48), attributes=_hex(obj, "attributes", what, 8),
        attributes_mask=_hex(obj, "attributesMask", what, 8),
        tcb_levels=_isv_levels(obj, what) if levels else ())


def parse_tcb_info(raw: bytes) -> TcbInfo:
    """Parse the exact bytes of a ``tcbInfo`` member."""
    what = "tcbInfo"
    doc = load_json_object(raw, what)
    ident = _str(doc, "id", what)
    if ident not in ("SGX", "TDX"):
        raise Malformed("tcbInfo.id is not SGX or TDX", actual=ident)
    version = _int(doc, "version", what)
    if version != 3:
        raise Malformed("unsupported tcbInfo version", expected="3", actual=str(version))
    tdx = ident == "TDX"
    levels = []
    for i, level in enumerate(_objs(doc, "tcbLevels", what)):
        where = f"tcbInfo.tcbLevels[{i}]"
        tcb = _obj(level, "tcb", where)
        if tdx != ("tdxtcbcomponents" in tcb):
            raise Malformed(f"{where}: tdxtcbcomponents must be present exactly for TDX",
                            expected=ident)
        levels.append(TcbLevel(
            sgx_svns=_svns(tcb, "sgxtcbcomponents", where),
            pcesvn=_int(tcb, "pcesvn", where, 0xFFFF),
            tdx_svns=_svns(tcb, "tdxtcbcomponents", where) if tdx else None,
            tcb_date=parse_date(_str(level, "tcbDate", where), f"{where}.tcbDate"),
            status=_status(level, where), advisory_ids=_advisories(level, where)))
    if not levels:
        raise Malformed("tcbInfo: no tcbLevels")
    if tdx != ("tdxModule" in doc):
        raise Malformed("tcbInfo.tdxModule must be present exactly for TDX", expected=ident)
    identities = tuple(_module(m, f"tcbInfo.tdxModuleIdentities[{i}]", levels=True)
                       for i, m in enumerate(_objs(doc, "tdxModuleIdentities", what)
                                             if "tdxModuleIdentities" in doc else []))
    return TcbInfo(
        id=cast(Literal["SGX", "TDX"], ident), version=version,
        issue_date=parse_date(_str(doc, "issueDate", what), "tcbInfo.issueDate"),
        next_update=parse_date(_str(doc, "nextUpdate", what), "tcbInfo.nextUpdate"),
        fmspc=_hex(doc, "fmspc", what, 6), pce_id=_hex(doc, "pceId", what, 2),
        tcb_type=_int(doc, "tcbType", what),
        tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", what),
        tdx_module=_module(_obj(doc, "tdxModule", what), "tcbInfo.tdxModule", levels=False)
        if tdx else None,
        tdx_module_identities=identities, tcb_levels=tuple(levels))


def parse_enclave_identity(raw: bytes) -> EnclaveIdentity:
    """Parse the exact bytes of an ``enclaveIdentity`` member."""
    what = "enclaveIdentity"
    doc = load_json_object(raw, what)
    ident = _str(doc, "id", what)
    if ident not in ("QE", "TD_QE", "QVE"):
        raise Malformed("enclaveIdentity.id is not QE, TD_QE or QVE", actual=ident)
    version = _int(doc, "version", what)
    if version != 2:
        raise Malformed("unsupported enclaveIdentity version", expected="2",
                        actual=str(version))
    return EnclaveIdentity(
        id=cast(Literal["QE", "TD_QE", "QVE"], ident), version=version,
        issue_date=parse_date(_str(doc, "issueDate", what), "enclaveIdentity.issueDate"),
        next_update=parse_date(_str(doc, "nextUpdate", what), "enclaveIdentity.nextUpdate"),
        tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", what),
        miscselect=int.from_bytes(_hex(doc, "miscselect", what, 4), "big"),
        miscselect_mask=int.from_bytes(_hex(doc, "miscselectMask", what, 4), "big"),
        attributes=_hex(doc, "attributes", what, 16),
        attributes_mask=_hex(doc, "attributesMask", what, 16),
        mrsigner=_hex(doc, "mrsigner", what, 32), isvprodid=_int(doc, "isvprodid", what, 0xFFFF),
        tcb_levels=_isv_levels(doc, what))
