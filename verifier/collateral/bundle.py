"""Collateral bundles: the verified items of one collateral store, signed, for carrying to
verifiers that cannot reach the vendors (air-gapped).

Invariants:
- A bundle is a JWS (compact serialisation, ``typ`` ``keybroker-collateral-bundle+jws``)
  signed with ES256, ES384 or EdDSA. Its payload lists each item's key, kind, body and issuer
  chain (base64), its source and fetch time, and the creation time.
- ``read_bundle`` verifies the signature with the trusted keys only (the header never names a
  key to trust) before it parses anything in the payload; a bundle no trusted key signed is
  ``SignatureInvalid``, a payload that is not the format ``Malformed``. The items it returns
  are NOT yet verified against the pinned roots: importing re-verifies each one through its
  source (``keybroker collateral import``), so a signer can carry collateral but never make it
  trusted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keybroker.errors import Malformed, SignatureInvalid
from verifier.collateral.item import ITEM_KINDS, ItemKind, check_key

BUNDLE_TYPE = "keybroker-collateral-bundle+jws"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class BundledItem:
    """An item as carried in a bundle (unverified until its source checks it)."""

    key: str
    kind: ItemKind
    body: bytes
    issuer_chain: bytes
    source: str
    fetched_at: datetime


def _algorithm(key: SigningKey | VerifyKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key.curve, ec.SECP384R1):
        return "ES384"
    raise Malformed("bundle keys are P-256, P-384 or Ed25519", rule="bundle.key",
                    expected="P-256 | P-384 | Ed25519", actual=key.curve.name)


def write_bundle(items: Sequence[BundledItem], key: SigningKey, *, created: datetime) -> bytes:
    """A signed bundle of ``items``."""
    payload = {"format": 1, "created": created.astimezone(UTC).isoformat(),
               "items": [{"key": i.key, "kind": i.kind,
                          "body": base64.b64encode(i.body).decode("ascii"),
                          "issuer_chain": base64.b64encode(i.issuer_chain).decode("ascii"),
                          "source": i.source, "fetched_at": i.fetched_at.isoformat()}
                         for i in items]}
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    token = jwt.api_jws.encode(data, key, algorithm=_algorithm(key),
                               headers={"typ": BUNDLE_TYPE})
    return token.encode("ascii")


def read_bundle(data: bytes, trusted: Sequence[VerifyKey]) -> tuple[datetime, list[BundledItem]]:
    """The creation time and items of a bundle one of ``trusted`` signed."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise Malformed("bundle too large", rule="bundle.size",
                        expected=f"<= {MAX_BUNDLE_BYTES} bytes", actual=str(len(data)))
    if not trusted:
        raise Malformed("no trusted bundle key given", rule="bundle.key",
                        expected="--trust-key PEM", actual="none")
    token = data.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Malformed("not a collateral bundle", rule="bundle.format",
                        expected="a compact JWS", actual=str(exc)) from None
    if header.get("typ") != BUNDLE_TYPE:
        raise Malformed("not a collateral bundle", rule="bundle.format",
                        expected=BUNDLE_TYPE, actual=str(header.get("typ")))
    payload: bytes | None = None
    for key in trusted:
        try:
            payload = jwt.api_jws.decode(token, key, algorithms=[_algorithm(key)])
        except jwt.PyJWTError:
            continue
        break
    if payload is None:
        raise SignatureInvalid("no trusted key signed this bundle", rule="bundle.signature",
                               expected=f"one of {len(trusted)} trusted key(s)",
                               actual=f"alg {header.get('alg')}")
    return _parse(payload)


def _kind(value: object) -> ItemKind:
    for kind in ITEM_KINDS:
        if value == kind:
            return kind
    raise ValueError(f"unknown item kind {value!r}")


def _parse(payload: bytes) -> tuple[datetime, list[BundledItem]]:
    try:
        doc = json.loads(payload)
        created = datetime.fromisoformat(doc["created"])
        items = []
        for entry in doc["items"]:
            items.append(BundledItem(
                key=check_key(str(entry["key"])), kind=_kind(entry["kind"]),
                body=base64.b64decode(entry["body"], validate=True),
                issuer_chain=base64.b64decode(entry["issuer_chain"], validate=True),
                source=str(entry["source"]),
                fetched_at=datetime.fromisoformat(entry["fetched_at"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise Malformed("the bundle payload is not a collateral list", rule="bundle.format",
                        expected="format 1 items", actual=str(exc)[:200]) from None
    if doc.get("format") != 1:
        raise Malformed("unknown bundle format", rule="bundle.format", expected="1",
                        actual=str(doc.get("format")))
    return created, items
