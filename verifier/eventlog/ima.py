"""IMA replay: the measurement list extended into its PCR (10) and compared with the quoted
value, per bank (evidence-formats.md section 5.10).

Invariants:
- Every entry's template hash must be SHA-1 of its rebuilt template data (violations, with an
  all-zero hash, excepted): an entry that does not is EVENT_LOG, so no measured path or digest
  is believed on its own word.
- The SHA-1 bank extends the template hash; other banks extend H_bank(template data) (kernels
  since 5.x, "type 2"). A violation extends all-0xFF of the bank's size.
- Replay stops at the first prefix whose value equals the quoted PCR: later entries were logged
  after the quote and are not covered (they are returned as ``pending``, never as measured).
  No prefix matching is EVENT_LOG. Only the covered entries become claims.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from keybroker.errors import EventLogMismatch
from keybroker.evidence.ima_log import ImaEntry
from keybroker.evidence.tcg_log import HASH_NAMES, KNOWN_DIGEST_SIZES

IMA_PCR = 10
_BANKS = {alg: (name, KNOWN_DIGEST_SIZES[alg]) for alg, name in HASH_NAMES.items()}


@dataclass(frozen=True)
class ImaReplay:
    """The entries the quoted PCR covers, and those logged after it."""

    covered: tuple[ImaEntry, ...]
    pending: tuple[ImaEntry, ...]

    def files(self) -> dict[str, tuple[str, str]]:
        """Path -> (algorithm, hex digest) of the last covered measurement of each path."""
        return {e.path: (e.algorithm, e.digest.hex()) for e in self.covered if not e.violation}


def _extend_value(entry: ImaEntry, bank: int) -> bytes:
    name, size = _BANKS[bank]
    if entry.violation:
        return b"\xff" * size
    if name == "sha1":
        return entry.template_hash
    return hashlib.new(name, entry.template_data).digest()


def replay_ima(entries: Sequence[ImaEntry], quoted: bytes, bank: int) -> ImaReplay:
    """Replay ``entries`` into PCR 10 of ``bank`` until it equals ``quoted`` (invariants)."""
    if bank not in _BANKS:
        raise EventLogMismatch("no IMA replay for this bank", rule="ima.bank",
                               expected="sha1, sha256, sha384 or sha512", actual=f"{bank:#06x}")
    name, size = _BANKS[bank]
    for number, entry in enumerate(entries, 1):
        if entry.pcr != IMA_PCR:
            raise EventLogMismatch(f"IMA entry {number} extends PCR {entry.pcr}",
                                   rule="ima.pcr", expected=f"PCR {IMA_PCR}",
                                   actual=f"PCR {entry.pcr}")
        if not entry.violation and not entry.matches_data():
            raise EventLogMismatch(f"IMA entry {number} ({entry.path[:80]}): template hash "
                                   "does not match its data", rule="ima.template-hash",
                                   expected=hashlib.sha1(entry.template_data)  # noqa: S324
                                   .hexdigest(), actual=entry.template_hash.hex())
    value = bytes(size)
    if value == quoted:
        return ImaReplay((), tuple(entries))
    for count, entry in enumerate(entries, 1):
        value = hashlib.new(name, value + _extend_value(entry, bank)).digest()
        if value == quoted:
            return ImaReplay(tuple(entries[:count]), tuple(entries[count:]))
    raise EventLogMismatch("the IMA log does not replay to the quoted PCR 10",
                           rule="ima.replay", expected=quoted.hex(),
                           actual=f"{value.hex()} after all {len(entries)} entries")
