"""Appraisal policies: TOML documents that say which SEV-SNP guests are acceptable.

Invariants:
- A policy is loaded once and compiled into a frozen ``AppraisalPolicy`` (sets of accepted byte
  values, a TCB floor mapping) so that appraisal does no parsing.
- Loading is strict: an unknown key, a missing required key, a wrong type (``true`` is not an
  integer), bad hex or an out-of-range value raises ``Malformed`` naming the file and the key,
  with the expected and the found value. Nothing is silently defaulted to a permissive value:
  optional switches default to the strict setting.
- ``digest`` is the SHA-256 of the exact file bytes, so a token names the reviewed document.
- An empty ``measurements`` list matches nothing (fail closed); an empty ``host_data`` list means
  HOST_DATA is not checked against an allow-list.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from keybroker.errors import Malformed
from verifier.snp.tcb import COMPONENTS

PLATFORMS = ("sev-snp",)
MEASUREMENT_SIZE = 48
HOST_DATA_SIZE = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_TOP_KEYS = frozenset({"policy", "snp"})
_POLICY_KEYS = frozenset({"name", "version", "platform"})
_SNP_REQUIRED = frozenset({"measurements", "min_tcb"})
_SNP_OPTIONAL = frozenset({
    "allow_debug", "allowed_vmpls", "allow_migration_agent", "allow_smt",
    "allow_provisional_firmware", "host_data", "require_init_data",
})


@dataclass(frozen=True)
class SnpPolicy:
    """Compiled ``[snp]`` section."""

    measurements: frozenset[bytes]
    min_tcb: Mapping[str, int]
    allow_debug: bool = False
    allowed_vmpls: frozenset[int] = frozenset({0})
    allow_migration_agent: bool = False
    allow_smt: bool = False
    allow_provisional_firmware: bool = False
    host_data: frozenset[bytes] = frozenset()
    require_init_data: bool = False


@dataclass(frozen=True)
class AppraisalPolicy:
    """One loaded appraisal policy."""

    name: str
    version: int
    platform: str
    digest: str
    snp: SnpPolicy
    source: str = ""

    @property
    def policy_id(self) -> str:
        """``<name>@<version>``, as in ``ear.appraisal-policy-id``."""
        return f"{self.name}@{self.version}"


class _Reader:
    """Typed access to one TOML table; every failure names the file and the dotted key."""

    def __init__(self, source: str, prefix: str, table: Mapping[str, object]) -> None:
        self.source = source
        self.prefix = prefix
        self.table = table

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, what: str, expected: str, actual: object) -> Malformed:
        """``actual`` is the offending value (described with its type) or, for unknown and
        missing keys, a ready-made description."""
        found = actual if what in ("unknown key", "missing key") else _describe(actual)
        return Malformed(f"{self.source}: {what} at key '{self._key(key)}'", rule="policy.schema",
                         expected=expected, actual=str(found))

    def check_keys(self, required: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
        for key in self.table:
            if key not in required | optional:
                raise self.fail(key, "unknown key", "one of " + ", ".join(
                    sorted(required | optional)), key)
        for key in sorted(required):
            if key not in self.table:
                raise self.fail(key, "missing key", "present", "absent")

    def table_at(self, key: str) -> _Reader:
        value = self.table.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "wrong type", "table", value)
        return _Reader(self.source, self._key(key), value)

    def string(self, key: str) -> str:
        value = self.table.get(key)
        if not isinstance(value, str):
            raise self.fail(key, "wrong type", "string", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "wrong type", "boolean", value)
        return value

    def integer(self, key: str, value: object, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "wrong type", "integer", value)
        if not low <= value <= high:
            raise self.fail(key, "value out of range", f"{low}..{high}", value)
        return value

    def array(self, key: str, default: list[object] | None = None) -> list[object]:
        value = self.table.get(key, default)
        if not isinstance(value, list):
            raise self.fail(key, "wrong type", "array", value)
        return value

    def hex_values(self, key: str, size: int) -> frozenset[bytes]:
        out: set[bytes] = set()
        for item in self.array(key, []):
            if not isinstance(item, str):
                raise self.fail(key, "wrong element type", f"string of {size * 2} hex digits",
                                item)
            try:
                raw = bytes.fromhex(item)
            except ValueError:
                raise self.fail(key, "not hex", f"{size * 2} hex digits", item) from None
            if len(raw) != size:
                raise self.fail(key, "wrong length", f"{size * 2} hex digits",
                                f"{len(item)} characters")
            out.add(raw)
        return frozenset(out)


def _describe(value: object) -> str:
    if isinstance(value, str):
        return "str " + (repr(value) if len(value) <= 100 else repr(value[:100] + "..."))
    if isinstance(value, dict):
        return "table"
    if value is None:
        return "absent"
    return f"{type(value).__name__} {value!r}"[:120]


def _compile_snp(snp: _Reader) -> SnpPolicy:
    snp.check_keys(_SNP_REQUIRED, _SNP_OPTIONAL)
    floor = snp.table_at("min_tcb")
    floor.check_keys(frozenset(), frozenset(COMPONENTS))
    min_tcb = {name: floor.integer(name, value, 0, 255) for name, value in floor.table.items()}
    vmpls = frozenset(snp.integer("allowed_vmpls", v, 0, 3)
                      for v in snp.array("allowed_vmpls", [0]))
    return SnpPolicy(
        measurements=snp.hex_values("measurements", MEASUREMENT_SIZE),
        min_tcb=MappingProxyType(min_tcb),
        allow_debug=snp.boolean("allow_debug", False),
        allowed_vmpls=vmpls,
        allow_migration_agent=snp.boolean("allow_migration_agent", False),
        allow_smt=snp.boolean("allow_smt", False),
        allow_provisional_firmware=snp.boolean("allow_provisional_firmware", False),
        host_data=snp.hex_values("host_data", HOST_DATA_SIZE),
        require_init_data=snp.boolean("require_init_data", False),
    )


def parse_policy(raw: bytes, source: str) -> AppraisalPolicy:
    """Compile policy document bytes; ``source`` names the document in errors."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Malformed(f"{source}: not a valid TOML document", rule="policy.schema",
                        expected="UTF-8 TOML", actual=str(exc)[:200]) from None
    top = _Reader(source, "", doc)
    top.check_keys(_TOP_KEYS)
    head = top.table_at("policy")
    head.check_keys(_POLICY_KEYS)
    name = head.string("name")
    if not _NAME_RE.match(name):
        raise head.fail("name", "invalid policy name", "1-64 of [A-Za-z0-9._-]", name)
    version = head.integer("version", head.table.get("version"), 0, 2**31 - 1)
    platform = head.string("platform")
    if platform not in PLATFORMS:
        raise head.fail("platform", "unsupported platform", " | ".join(PLATFORMS), platform)
    return AppraisalPolicy(
        name=name,
        version=version,
        platform=platform,
        digest=hashlib.sha256(raw).hexdigest(),
        snp=_compile_snp(top.table_at("snp")),
        source=source,
    )


def load_policy(path: Path) -> AppraisalPolicy:
    """Read and compile the policy file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Malformed(f"{path}: cannot read policy file", rule="policy.file",
                        expected="a readable file", actual=exc.strerror or str(exc)) from None
    return parse_policy(raw, str(path))
