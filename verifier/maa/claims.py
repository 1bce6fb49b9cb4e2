"""What a verified MAA token says, as typed claims.

Invariants:
- Only claims of a token whose signature, key, algorithm, times and issuer verified
  (``verifier.maa.token``) become claims; unknown claims are kept only in ``raw`` for display.
- SGX claims (``x-ms-sgx-*``) and CVM claims (``x-ms-isolation-tee``, ``secureboot``) are
  typed when present and of the expected type; a present claim of the wrong type is MALFORMED,
  never dropped.
- The binding (``report_data``) is what the attested party handed MAA as its runtime data,
  which MAA checked against the hardware report: for SGX the enclave held data
  (``x-ms-sgx-ehd``, whose SHA-256 is in the enclave's REPORTDATA), for a confidential VM the
  client payload's nonce (``x-ms-runtime.client-payload.nonce``, base64). Absent: empty, which
  never equals a challenge binding.
- ``as_dict`` always carries every key (null where the token has no such claim).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from keybroker.errors import Malformed
from verifier.maa.token import MaaToken


def _hex(claims: dict[str, Any], name: str) -> bytes | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise Malformed(f"MAA claim {name} is not hex", expected="hex string",
                        actual=str(value)[:80]) from None


def _b64url(claims: dict[str, Any], name: str) -> bytes | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"MAA claim {name} is not base64url", actual=type(value).__name__)
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise Malformed(f"MAA claim {name} is not base64url", actual=value[:80]) from None


PLATFORM_MAA = "maa"


def _client_nonce(claims: dict[str, Any]) -> bytes | None:
    runtime = claims.get("x-ms-runtime")
    payload = runtime.get("client-payload") if isinstance(runtime, dict) else None
    nonce = payload.get("nonce") if isinstance(payload, dict) else None
    if nonce is None:
        return None
    if not isinstance(nonce, str):
        raise Malformed("MAA claim x-ms-runtime.client-payload.nonce is not base64",
                        actual=type(nonce).__name__)
    try:
        return base64.b64decode(nonce + "=" * (-len(nonce) % 4), validate=True)
    except ValueError:
        raise Malformed("MAA claim x-ms-runtime.client-payload.nonce is not base64",
                        actual=nonce[:80]) from None


@dataclass(frozen=True)
class MaaClaims:
    """Claims of one verified MAA token."""

    issuer: str
    kid: str
    issued_at: int
    expires_at: int
    attestation_type: str
    sgx_mrenclave: bytes | None
    sgx_mrsigner: bytes | None
    sgx_product_id: int | None
    sgx_svn: int | None
    sgx_debuggable: bool | None
    sgx_report_data: bytes | None
    sgx_runtime_data: bytes | None
    isolation_tee: dict[str, Any] | None
    secure_boot: bool | None = None
    runtime_nonce: bytes | None = None  # x-ms-runtime.client-payload.nonce (confidential VMs)

    @classmethod
    def of(cls, token: MaaToken) -> MaaClaims:
        """Typed claims of ``token``."""
        c = token.claims
        ints = {name: c.get(name) for name in ("x-ms-sgx-product-id", "x-ms-sgx-svn")}
        for name, value in ints.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise Malformed(f"MAA claim {name} is not an integer", actual=str(value)[:40])
        debuggable = c.get("x-ms-sgx-is-debuggable")
        if debuggable is not None and not isinstance(debuggable, bool):
            raise Malformed("MAA claim x-ms-sgx-is-debuggable is not a boolean",
                            actual=str(debuggable)[:40])
        tee = c.get("x-ms-isolation-tee")
        if tee is not None and not isinstance(tee, dict):
            raise Malformed("MAA claim x-ms-isolation-tee is not an object",
                            actual=type(tee).__name__)
        secure_boot = c.get("secureboot")
        if secure_boot is not None and not isinstance(secure_boot, bool):
            raise Malformed("MAA claim secureboot is not a boolean", actual=str(secure_boot)[:40])
        return cls(issuer=token.issuer, kid=token.kid, issued_at=int(c["iat"]),
                   expires_at=int(c["exp"]),
                   attestation_type=str(c.get("x-ms-attestation-type", "")),
                   sgx_mrenclave=_hex(c, "x-ms-sgx-mrenclave"),
                   sgx_mrsigner=_hex(c, "x-ms-sgx-mrsigner"),
                   sgx_product_id=ints["x-ms-sgx-product-id"], sgx_svn=ints["x-ms-sgx-svn"],
                   sgx_debuggable=debuggable,
                   sgx_report_data=_hex(c, "x-ms-sgx-report-data"),
                   sgx_runtime_data=_b64url(c, "x-ms-sgx-ehd"), isolation_tee=tee,
                   secure_boot=secure_boot, runtime_nonce=_client_nonce(c))

    @property
    def report_data(self) -> bytes:
        """The runtime data the attested party bound (module invariants), else empty."""
        return self.sgx_runtime_data or self.runtime_nonce or b""

    @property
    def insecure_root(self) -> bool:
        """MAA keys come from configuration, never a simulator root."""
        return False

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (``platform`` = maa); every key always present."""
        sgx = None if self.sgx_mrenclave is None else {
            "mrenclave": self.sgx_mrenclave.hex(),
            "mrsigner": (self.sgx_mrsigner or b"").hex(),
            "product_id": self.sgx_product_id, "svn": self.sgx_svn,
            "is_debuggable": self.sgx_debuggable,
            "report_data": (self.sgx_report_data or b"").hex(),
            "runtime_data": (self.sgx_runtime_data or b"").hex(),
        }
        return {
            "platform": PLATFORM_MAA, "issuer": self.issuer, "kid": self.kid,
            "issued_at": self.issued_at, "expires_at": self.expires_at,
            "attestation_type": self.attestation_type, "sgx": sgx,
            "isolation_tee": self.isolation_tee, "secure_boot": self.secure_boot,
            "runtime_nonce": self.runtime_nonce.hex() if self.runtime_nonce is not None else None,
        }
