"""Collateral items: one fetched and verified endorsement (a VCEK, an AMD certificate chain, a
CRL, an Intel TCB Info or QE identity with its issuer chain), keyed by what it endorses.

Invariants:
- A ``Need`` names one item by its key and the URL it is fetched from; keys are file-name
  safe (letters, digits, ``-`` and ``_``) and say what they endorse: ``snp-vcek-<product>-
  <hwid>-<tcb>``, ``snp-<vcek|vlek>-chain-<product>``, ``snp-<vcek|vlek>-crl-<product>``,
  ``<tdx|sgx>-tcb-<fmspc>``, ``<tdx|sgx>-qe-identity``, ``sgx-pck-crl-<platform|processor>``,
  ``intel-root-ca-crl``.
- A ``CollateralItem`` is built only by a source's ``verify`` after its signature chained to
  the pinned roots; ``issued`` and ``next_update`` come from the verified bytes (certificates:
  notBefore and notAfter). ``digest`` is the SHA-256 of the body and the issuer chain, so a
  changed byte is a different item.
- ``files`` names the files an item is written as; the collateral loader recognises them by
  content, so a folder of items is what ``keybroker verify --collateral`` and the verifier
  read. An issuer chain is written beside its body as ``<key>-issuer-chain.pem``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from keybroker.errors import Malformed

ItemKind = Literal["certificate", "cert_chain", "crl", "tcb_info", "qe_identity"]
ITEM_KINDS: tuple[ItemKind, ...] = ("certificate", "cert_chain", "crl", "tcb_info",
                                    "qe_identity")
_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")
_SUFFIX: dict[ItemKind, str] = {"certificate": ".der", "cert_chain": ".pem", "crl": ".der",
                                "tcb_info": ".json", "qe_identity": ".json"}
CHAIN_SUFFIX = "-issuer-chain.pem"


def check_key(key: str) -> str:
    """``key`` if it is a well-formed item key; ``Malformed`` otherwise."""
    if not _KEY.fullmatch(key):
        raise Malformed("collateral item key is not file-name safe", rule="collateral.key",
                        expected="1-200 of A-Z a-z 0-9 - _", actual=key[:80])
    return key


@dataclass(frozen=True)
class Need:
    """One item a piece of evidence (or a fleet entry) needs, and where it is fetched."""

    key: str
    kind: ItemKind
    what: str  # for operators: "VCEK of Milan chip 980cf7b6… at TCB 0400000000001bde"
    url: str
    chain_headers: tuple[str, ...] = ()  # response headers that carry the issuer chain
    immutable: bool = False  # a VCEK never changes: it is not refreshed, only expires


@dataclass(frozen=True)
class CollateralItem:
    """A verified collateral item and the dates read from its verified bytes."""

    key: str
    kind: ItemKind
    body: bytes
    issuer_chain: bytes  # PEM; b"" when the body carries or needs none
    issued: datetime
    next_update: datetime
    source: str  # the URL it came from, or "bundle <name>"
    fetched_at: datetime

    @property
    def digest(self) -> str:
        """SHA-256 (hex) over the body and the issuer chain."""
        return hashlib.sha256(self.body + b"\x00" + self.issuer_chain).hexdigest()

    def fresh_at(self, at: datetime) -> bool:
        """Whether ``at`` lies inside ``issued .. next_update``."""
        return self.issued <= at < self.next_update

    def files(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) for writing this item into a collateral folder."""
        out = [(self.key + _SUFFIX[self.kind], self.body)]
        if self.issuer_chain:
            out.append((self.key + CHAIN_SUFFIX, self.issuer_chain))
        return out


def item_blobs(items: Sequence[CollateralItem]) -> list[tuple[str, bytes]]:
    """(name, content) of every file of ``items``, for ``CollateralStore.load``."""
    return [(f"collateral store: {name}", data) for item in items for name, data in item.files()]


def read_files(folder: Path, need: Need) -> tuple[bytes, bytes] | None:
    """The body and issuer chain of ``need`` as written into ``folder``; None if absent."""
    body = folder / (need.key + _SUFFIX[need.kind])
    if not body.is_file():
        return None
    chain = folder / (need.key + CHAIN_SUFFIX)
    return body.read_bytes(), chain.read_bytes() if chain.is_file() else b""


def write_files(folder: Path, item: CollateralItem) -> list[Path]:
    """Write ``item`` into ``folder`` (each file replaced whole); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in item.files():
        path = folder / name
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
        written.append(path)
    return written


class Source(Protocol):
    """A vendor service (AMD KDS, Intel PCS) as the fetcher sees it: it verifies what was
    fetched against the pinned roots and returns the item, or raises a typed error."""

    def need(self, key: str) -> Need: ...

    def verify(self, need: Need, body: bytes, issuer_chain: bytes, *, source: str,
               at: datetime, fetched_at: datetime) -> CollateralItem: ...
