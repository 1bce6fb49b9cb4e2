"""The init-data binding: a launch-time register holds the digest of the init-data document
the agent presents (SNP HOST_DATA = SHA-256, TDX MRCONFIGID = SHA-384, TPM PCR 8 = SHA-256
extended once from zero: SHA-256(0^32 || SHA-256(init-data)), Nitro PCR 16 = SHA-384 extended
once from zero, by the enclave's init through the NSM, then locked).

Invariants:
- Presented init-data is always checked against the register, required or not: an unbound
  document is never passed on as if it were attested.
- A policy that requires init-data refuses a request without it.
- Every failure is ``MeasurementMismatch`` naming the register, the expected digest and the
  register's actual value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from keybroker.errors import MeasurementMismatch


@dataclass(frozen=True)
class InitDataRegister:
    """Where a platform puts the init-data digest, and which hash it uses."""

    name: str  # e.g. "HOST_DATA"
    hash_name: str  # hashlib name, e.g. "sha256"
    extended: bool = False  # a PCR: the digest was extended once into a register reset to 0

    def digest(self, init_data: bytes) -> bytes:
        """The value the register holds for ``init_data``."""
        digest = hashlib.new(self.hash_name, init_data).digest()
        if self.extended:
            return hashlib.new(self.hash_name, bytes(len(digest)) + digest).digest()
        return digest


HOST_DATA = InitDataRegister("HOST_DATA", "sha256")
MRCONFIGID = InitDataRegister("MRCONFIGID", "sha384")
PCR8 = InitDataRegister("PCR8", "sha256", extended=True)
NITRO_PCR16 = InitDataRegister("PCR16", "sha384", extended=True)


def check_init_data(register: InitDataRegister, value: bytes, init_data: bytes, *,
                    required: bool, rule: str) -> None:
    """Check ``init_data`` against the register's ``value`` (see the module invariants)."""
    label = f"SHA-{register.hash_name[3:]}" + (" extended from zero" if register.extended else "")
    if required and not init_data:
        raise MeasurementMismatch("policy requires init-data but none was presented",
                                  rule=rule,
                                  expected=f"init-data with {label} == {register.name}",
                                  actual="no init-data")
    if init_data:
        digest = register.digest(init_data)
        if digest != value:
            raise MeasurementMismatch(
                f"{register.name} does not commit to the presented init-data", rule=rule,
                expected=f"{register.name} = {digest.hex()}",
                actual=f"{register.name} = {value.hex()}")
