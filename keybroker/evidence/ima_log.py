"""The IMA measurement list in its ASCII form (``ascii_runtime_measurements``,
evidence-formats.md section 5.10): one entry per line, templates ``ima-ng`` and ``ima-sig``,
and the template data each entry's hash covers.

Invariants:
- ``parse_ima_log`` raises only ``Malformed``: at most ``MAX_LOG`` bytes and ``MAX_ENTRIES``
  lines, every line ``<pcr> <template-hash> <template> <algo>:<digest> <path>[ <sig>]`` with a
  PCR in 0..23, a 20-byte template hash, a known algorithm whose digest has its size, and
  ``ima-sig`` signatures in hex. Other templates are refused (the legacy ``ima`` template
  carries SHA-1 file digests only).
- The template data is rebuilt exactly as the kernel hashes it:
  ``u32le len(d-ng) || d-ng || u32le len(n-ng) || n-ng [|| u32le len(sig) || sig]`` with
  ``d-ng = "<algo>:" || 0x00 || digest`` and ``n-ng = path || 0x00``. Whether an entry's
  template hash matches it is the verifier's check, not the parser's.
- An ``ima-sig`` line's last field is its signature when it is hex; the ASCII form cannot tell
  a path ending in " <hex>" from a signature, and a wrong split fails the template-hash check
  (the verifier's), never passes it.
- ``format_ima_entry`` is the exact inverse of one parsed line.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from keybroker.errors import Malformed
from keybroker.evidence.tcg_log import HASH_NAMES, KNOWN_DIGEST_SIZES

MAX_LOG = 32 << 20
MAX_ENTRIES = 500_000
ALGORITHMS = {name: KNOWN_DIGEST_SIZES[alg] for alg, name in HASH_NAMES.items()}
TEMPLATES = ("ima-ng", "ima-sig")


@dataclass(frozen=True)
class ImaEntry:
    """One measurement: the PCR it extends, its template hash and what it measured."""

    pcr: int
    template_hash: bytes
    template: str
    algorithm: str
    digest: bytes
    path: str
    signature: bytes = b""

    @property
    def template_data(self) -> bytes:
        """The bytes the kernel hashed into ``template_hash``."""
        d_ng = self.algorithm.encode() + b":\x00" + self.digest
        n_ng = self.path.encode("utf-8", "surrogateescape") + b"\x00"
        data = struct.pack("<I", len(d_ng)) + d_ng + struct.pack("<I", len(n_ng)) + n_ng
        if self.template == "ima-sig":
            data += struct.pack("<I", len(self.signature)) + self.signature
        return data

    @property
    def violation(self) -> bool:
        """A measurement violation (the kernel logs an all-zero template hash)."""
        return not any(self.template_hash)

    def matches_data(self) -> bool:
        """Whether the template hash is SHA-1 of the rebuilt template data."""
        return hashlib.sha1(self.template_data).digest() == self.template_hash  # noqa: S324


def _fail(number: int, reason: str, expected: str, actual: str) -> Malformed:
    return Malformed(f"IMA log line {number}: {reason}", expected=expected, actual=actual[:80])


def _hex(text: str, number: int, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _fail(number, f"{what} is not hex", "hex digits", text) from None


def _entry(line: str, number: int) -> ImaEntry:
    fields = line.split(" ", 4)
    if len(fields) != 5:
        raise _fail(number, "too few fields", "<pcr> <hash> <template> <algo>:<digest> <path>",
                    line)
    pcr_text, hash_text, template, filedata, rest = fields
    if not pcr_text.isdigit() or not 0 <= int(pcr_text) <= 23:
        raise _fail(number, "PCR out of range", "0..23", pcr_text)
    template_hash = _hex(hash_text, number, "template hash")
    if len(template_hash) != 20:
        raise _fail(number, "template hash is not 20 bytes", "40 hex digits", hash_text)
    if template not in TEMPLATES:
        raise _fail(number, "unsupported template", " | ".join(TEMPLATES), template)
    algorithm, sep, digest_text = filedata.partition(":")
    if not sep or algorithm not in ALGORITHMS:
        raise _fail(number, "unsupported file digest", "sha1|sha256|sha384|sha512:<hex>",
                    filedata)
    digest = _hex(digest_text, number, "file digest")
    if len(digest) != ALGORITHMS[algorithm]:
        raise _fail(number, f"{algorithm} digest has the wrong size",
                    f"{ALGORITHMS[algorithm]} bytes", f"{len(digest)} bytes")
    signature = b""
    path = rest
    if template == "ima-sig":
        head, _, last = rest.rpartition(" ")
        if head and last and all(c in "0123456789abcdefABCDEF" for c in last) \
                and len(last) % 2 == 0:
            path, signature = head, bytes.fromhex(last)
    if not path:
        raise _fail(number, "empty path", "a file path or name", line)
    return ImaEntry(int(pcr_text), template_hash, template, algorithm, digest, path, signature)


def parse_ima_log(raw: bytes) -> tuple[ImaEntry, ...]:
    """Every entry of an ASCII IMA measurement list, in order (module invariants)."""
    if len(raw) > MAX_LOG:
        raise Malformed("IMA log too large", expected=f"<= {MAX_LOG} bytes",
                        actual=f"{len(raw)} bytes")
    try:
        text = raw.decode("utf-8", "surrogateescape")
    except UnicodeDecodeError as exc:  # pragma: no cover - surrogateescape decodes anything
        raise Malformed("IMA log is not text", actual=str(exc)) from None
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_ENTRIES:
        raise Malformed("IMA log has too many entries", expected=f"<= {MAX_ENTRIES}",
                        actual=str(len(lines)))
    return tuple(_entry(line.rstrip("\r"), n) for n, line in enumerate(lines, 1))


def format_ima_entry(entry: ImaEntry) -> str:
    """One ASCII line for ``entry`` (without the newline)."""
    line = (f"{entry.pcr} {entry.template_hash.hex()} {entry.template} "
            f"{entry.algorithm}:{entry.digest.hex()} {entry.path}")
    return f"{line} {entry.signature.hex()}" if entry.signature else line
