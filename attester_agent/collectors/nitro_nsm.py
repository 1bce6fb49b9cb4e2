"""AWS Nitro Enclaves evidence through the Nitro Security Module, ``/dev/nsm``
(evidence-formats.md section 6.4): one ``NSM_IOCTL_RAW`` carrying a CBOR Attestation request,
answered with the COSE_Sign1 attestation document.

Invariants:
- Requests and responses are built and read only by the pure functions below; the ioctl code
  only moves bounded buffers: a request of at most ``MAX_REQUEST`` bytes, a response buffer of
  ``RESPONSE_SIZE`` bytes (a response that fills it may be truncated and is MALFORMED).
- The binding (architecture section 3): nonce = the challenge nonce, public_key = the agent's
  HPKE public key, user_data = the 64 report_data bytes. ``collect`` alone (no request context)
  asks for user_data only, which a verifier refuses: the client uses ``collect_for``.
- An NSM error answer (``{"Error": code}``) is UNAVAILABLE naming the code; an answer of any
  other shape is MALFORMED; a failing ioctl or device is UNAVAILABLE naming the errno.
- ``transport`` replaces the device (the simulator's NSM); the request and response handling
  is the same either way.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import cbor2

from attester_agent.collectors.base import check_report_data
from keybroker.errors import Malformed, Unavailable
from keybroker.v1 import evidence_pb2

DEFAULT_DEVICE: Final = Path("/dev/nsm")
NSM_IOCTL_RAW: Final = 0xC0200A00
MAX_REQUEST: Final = 0x1000
RESPONSE_SIZE: Final = 0x3000
LIMITS: Final = {"user_data": 512, "nonce": 512, "public_key": 1024}
_RAW = struct.Struct("<QQQQ")  # struct nsm_raw: request {addr, len}, response {addr, len}


def attestation_request(*, user_data: bytes, nonce: bytes | None,
                        public_key: bytes | None) -> bytes:
    """The CBOR Attestation request (each field bounded as the NSM bounds it)."""
    fields = {"user_data": user_data, "nonce": nonce, "public_key": public_key}
    for name, value in fields.items():
        if value is not None and len(value) > LIMITS[name]:
            raise Malformed(f"{name} too long for the NSM", expected=f"<= {LIMITS[name]} bytes",
                            actual=f"{len(value)} bytes")
    request = bytes(cbor2.dumps({"Attestation": fields}))
    if len(request) > MAX_REQUEST:
        raise Malformed("NSM request too large", expected=f"<= {MAX_REQUEST} bytes",
                        actual=f"{len(request)} bytes")
    return request


def attestation_document(response: bytes) -> bytes:
    """The document of an NSM Attestation answer (module invariants)."""
    try:
        answer: Any = cbor2.loads(response)
    except Exception:  # cbor2 raises many types for bad bytes
        raise Malformed("the NSM answer is not CBOR", actual=f"{len(response)} bytes") from None
    if isinstance(answer, dict) and set(answer) == {"Error"}:
        raise Unavailable("the NSM refused the attestation request", rule="nsm.error",
                          expected="an attestation document", actual=str(answer["Error"])[:80])
    inner = answer.get("Attestation") if isinstance(answer, dict) else None
    document = inner.get("document") if isinstance(inner, dict) else None
    if not isinstance(document, bytes) or not document:
        raise Malformed("the NSM answer is not an attestation document",
                        expected='{"Attestation": {"document": bytes}}',
                        actual=repr(answer)[:80])
    return document


class NsmDevice:
    """The ``/dev/nsm`` character device."""

    def __init__(self, path: Path = DEFAULT_DEVICE) -> None:
        self.path = path

    def available(self) -> bool:
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return False
        return stat.S_ISCHR(mode) and os.access(self.path, os.R_OK | os.W_OK)

    def call(self, request: bytes) -> bytes:
        """One NSM_IOCTL_RAW round trip."""
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(RESPONSE_SIZE)
        arg = ctypes.create_string_buffer(_RAW.pack(ctypes.addressof(req), len(request),
                                                    ctypes.addressof(resp), RESPONSE_SIZE))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise Unavailable("cannot open the NSM device", expected=str(self.path),
                              actual=exc.strerror or str(exc)) from None
        try:
            fcntl.ioctl(fd, NSM_IOCTL_RAW, arg, True)
        except OSError as exc:
            raise Unavailable("NSM_IOCTL_RAW failed", expected="an NSM answer",
                              actual=f"errno {exc.errno} ({exc.strerror})") from None
        finally:
            os.close(fd)
        length = _RAW.unpack(arg.raw)[3]
        if not 0 < length < RESPONSE_SIZE:
            raise Malformed("the NSM answer does not fit the response buffer",
                            expected=f"1..{RESPONSE_SIZE - 1} bytes", actual=f"{length} bytes")
        return resp.raw[:length]


class NitroNsmCollector:
    """Attestation documents from the NSM (module invariants)."""

    tee: Final = evidence_pb2.TEE_TYPE_NITRO

    def __init__(self, device: Path = DEFAULT_DEVICE, *,
                 transport: Callable[[bytes], bytes] | None = None,
                 name: str = "nitro-nsm") -> None:
        self._device = NsmDevice(device)
        self._transport = transport or self._device.call
        self._simulated = transport is not None
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def available(self) -> bool:
        return self._simulated or self._device.available()

    def _evidence(self, report_data: bytes, nonce: bytes | None,
                  public_key: bytes | None) -> evidence_pb2.Evidence:
        check_report_data(report_data)
        request = attestation_request(user_data=report_data, nonce=nonce,
                                      public_key=public_key)
        document = attestation_document(self._transport(request))
        return evidence_pb2.Evidence(nitro=evidence_pb2.NitroEvidence(document=document))

    def collect_for(self, report_data: bytes, *, nonce: bytes,
                    public_key: bytes) -> evidence_pb2.Evidence:
        """A document binding the challenge nonce, the agent's key and ``report_data``."""
        return self._evidence(report_data, nonce, public_key)

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        """A document carrying only ``report_data`` (module invariants)."""
        return self._evidence(report_data, None, None)
