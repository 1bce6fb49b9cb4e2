"""The report_data binding (architecture section 3).

Invariants: every field is length-prefixed (u16 big-endian) after a NUL-terminated domain
label, so no two distinct (nonce, suite, key, init-data digest) tuples hash the same input.
The result is always 64 bytes (SHA-512). When the agent talks to the broker over mutual TLS,
the SHA-256 of its client certificate follows as a fifth length-prefixed field (the channel
binding, hostile-evidence row 30); without a client certificate the input is exactly the
four-field form of architecture section 3. The two forms cannot collide: the fifth field
makes the input longer than the length prefix of the fourth allows.
"""

from __future__ import annotations

import hashlib

from keybroker.errors import Malformed

DOMAIN = b"keybroker/v1/binding\x00"
REPORT_DATA_SIZE = 64


def _field(value: bytes, name: str) -> bytes:
    if len(value) > 0xFFFF:
        raise Malformed(f"binding field {name} too long", expected="<= 65535 bytes",
                        actual=f"{len(value)} bytes")
    return len(value).to_bytes(2, "big") + value


def init_data_digest(init_data: bytes) -> bytes:
    """SHA-384 of the init-data document, or empty when there is none."""
    return hashlib.sha384(init_data).digest() if init_data else b""


def report_data(nonce: bytes, suite_id: str, public_key: bytes, init_digest: bytes,
                channel: bytes = b"") -> bytes:
    """The 64 bytes the evidence must carry for this challenge, agent key, init-data and (over
    mutual TLS) the agent's client certificate digest."""
    h = hashlib.sha512(DOMAIN)
    h.update(_field(nonce, "nonce"))
    h.update(_field(suite_id.encode("ascii"), "suite_id"))
    h.update(_field(public_key, "public_key"))
    h.update(_field(init_digest, "init_data_digest"))
    if channel:
        h.update(_field(channel, "channel"))
    return h.digest()
