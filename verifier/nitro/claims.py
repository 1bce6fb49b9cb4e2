"""What a verified Nitro Enclaves attestation document proves, as typed claims.

Invariants:
- Only documents whose ES384 signature, chain and timestamp verified become claims
  (``verifier.nitro.verify``).
- ``pcrs`` holds every PCR the document carries (48 bytes each); ``debug`` is true when PCR0,
  PCR1 and PCR2 are all present and all zero (an enclave started in debug mode).
- The binding (architecture section 3): ``report_data`` is ``user_data`` (empty when absent,
  which never equals a binding); ``check_request`` requires ``nonce`` to be the challenge
  nonce (FRESHNESS) and ``public_key`` the agent's HPKE public key (BINDING).
- ``as_dict`` always carries every key (null for absent optional fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keybroker.errors import BindingMismatch, FreshnessError

PLATFORM_NITRO = "nitro"
DEBUG_PCRS = (0, 1, 2)


@dataclass(frozen=True)
class NitroClaims:
    """Claims of one verified attestation document."""

    module_id: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    leaf_subject: str
    leaf_not_after: int  # seconds since the epoch
    insecure: bool

    @property
    def report_data(self) -> bytes:
        """The binding: the document's user_data."""
        return self.user_data or b""

    @property
    def insecure_root(self) -> bool:
        """Whether the chain ended at a simulator root."""
        return self.insecure

    @property
    def debug(self) -> bool:
        """PCR0, PCR1 and PCR2 all zero: a debug-mode enclave."""
        return all(self.pcrs.get(i) == bytes(48) for i in DEBUG_PCRS)

    def check_request(self, *, nonce: bytes, public_key: bytes) -> None:
        """The document's nonce and public key are the request's (module invariants)."""
        if self.nonce != nonce:
            raise FreshnessError("the document's nonce is not the challenge nonce",
                                 rule="nitro.nonce", expected=nonce.hex(),
                                 actual=self.nonce.hex() if self.nonce else "absent")
        if self.public_key != public_key:
            raise BindingMismatch("the document's public_key is not the agent's key",
                                  rule="nitro.public_key", expected=public_key.hex(),
                                  actual=self.public_key.hex() if self.public_key else "absent")

    def as_dict(self) -> dict[str, object]:
        """JSON-able claims (``platform`` = nitro)."""
        return {
            "platform": PLATFORM_NITRO, "module_id": self.module_id,
            "timestamp_ms": self.timestamp_ms,
            "pcrs": {str(i): value.hex() for i, value in sorted(self.pcrs.items())},
            "debug": self.debug,
            "public_key": None if self.public_key is None else self.public_key.hex(),
            "user_data": None if self.user_data is None else self.user_data.hex(),
            "nonce": None if self.nonce is None else self.nonce.hex(),
            "leaf_subject": self.leaf_subject, "leaf_not_after": self.leaf_not_after,
            "insecure_root": self.insecure,
        }
