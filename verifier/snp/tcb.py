"""SEV-SNP TCB_VERSION decoding and comparison (evidence-formats.md section 1.5).

Invariants: the byte layout is chosen by product (Milan/Genoa vs Turin); TCBs are compared
component by component, never as a u64; reserved bytes of a TCB_VERSION are preserved so a
certificate's spl_4..spl_7 can be compared exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from keybroker.errors import Malformed

PRODUCTS = ("Milan", "Genoa", "Turin")
COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")


@dataclass(frozen=True)
class TcbVersion:
    """One decoded TCB_VERSION. ``fmc`` is None on Milan/Genoa (no such component)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    raw: bytes

    @classmethod
    def decode(cls, raw: bytes, product: str) -> TcbVersion:
        """Decode 8 raw bytes with the layout of ``product``."""
        if len(raw) != 8:
            raise Malformed("TCB_VERSION must be 8 bytes", expected="8", actual=str(len(raw)))
        if product == "Turin":
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0],
                       raw=bytes(raw))
        if product in ("Milan", "Genoa"):
            return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7], fmc=None,
                       raw=bytes(raw))
        raise Malformed("unknown SEV-SNP product", expected=" | ".join(PRODUCTS), actual=product)

    def components(self) -> dict[str, int]:
        """Component name -> SPL; ``fmc`` only where the product has it."""
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp,
               "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def below(self, floor: Mapping[str, int]) -> list[str]:
        """Names of components strictly below ``floor`` (missing components count as 0)."""
        mine = self.components()
        return [name for name, minimum in floor.items() if mine.get(name, 0) < minimum]

    def le(self, other: TcbVersion) -> bool:
        """Component-wise self <= other."""
        theirs = other.components()
        return all(value <= theirs.get(name, 0) for name, value in self.components().items())

    def as_dict(self) -> dict[str, object]:
        """JSON form for claims: components plus the raw hex."""
        out: dict[str, object] = dict(self.components())
        out["raw"] = self.raw.hex()
        return out

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.components().items())


def product_from_cpuid(family: int, model: int) -> str | None:
    """Product line from CPUID family/model (v3+ reports); None when unknown."""
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"
    if family == 0x1A and model <= 0x11:
        return "Turin"
    return None
