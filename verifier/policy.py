"""Appraisal policies: TOML documents that say which SEV-SNP guests, TDX trust domains or SGX
enclaves are acceptable.

Invariants:
- A policy is loaded once and compiled into a frozen ``AppraisalPolicy`` (sets of accepted byte
  values, a TCB floor mapping) so that appraisal does no parsing.
- Loading is strict: an unknown key, a missing required key, a wrong type (``true`` is not an
  integer), bad hex or an out-of-range value raises ``Malformed`` naming the file and the key,
  with the expected and the found value. Nothing is silently defaulted to a permissive value:
  optional switches default to the strict setting.
- ``platform`` selects exactly one section: "sev-snp" -> ``[snp]``, "tdx" -> ``[tdx]``,
  "sgx" -> ``[sgx]`` (see ``verifier.dcap.policy``); another platform's section is refused.
  Asking a policy for another platform's rules (``policy.tdx`` of an SNP policy) is
  ``Malformed`` naming both platforms, so a policy can never be applied to the wrong evidence.
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
from typing import TypeVar

from keybroker.errors import Malformed
from verifier.dcap.policy import SgxPolicy, TdxPolicy, compile_sgx, compile_tdx
from verifier.policy_reader import PolicyReader
from verifier.snp.tcb import COMPONENTS

PLATFORM_SNP = "sev-snp"
PLATFORM_TDX = "tdx"
PLATFORM_SGX = "sgx"
PLATFORMS = (PLATFORM_SNP, PLATFORM_TDX, PLATFORM_SGX)
SECTIONS = {PLATFORM_SNP: "snp", PLATFORM_TDX: "tdx", PLATFORM_SGX: "sgx"}
MEASUREMENT_SIZE = 48
HOST_DATA_SIZE = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

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


PlatformRules = SnpPolicy | TdxPolicy | SgxPolicy
_R = TypeVar("_R", SnpPolicy, TdxPolicy, SgxPolicy)


@dataclass(frozen=True)
class AppraisalPolicy:
    """One loaded appraisal policy; ``rules`` is the compiled section of its platform."""

    name: str
    version: int
    platform: str
    digest: str
    rules: PlatformRules
    source: str = ""

    @property
    def policy_id(self) -> str:
        """``<name>@<version>``, as in ``ear.appraisal-policy-id``."""
        return f"{self.name}@{self.version}"

    def _rules(self, kind: type[_R], platform: str) -> _R:
        if not isinstance(self.rules, kind):
            raise Malformed(
                f"appraisal policy {self.policy_id} is for platform {self.platform}, "
                f"not {platform}", rule="policy.platform", expected=platform,
                actual=self.platform)
        return self.rules

    @property
    def snp(self) -> SnpPolicy:
        """The ``[snp]`` rules; ``Malformed`` for a policy of another platform."""
        return self._rules(SnpPolicy, PLATFORM_SNP)

    @property
    def tdx(self) -> TdxPolicy:
        """The ``[tdx]`` rules; ``Malformed`` for a policy of another platform."""
        return self._rules(TdxPolicy, PLATFORM_TDX)

    @property
    def sgx(self) -> SgxPolicy:
        """The ``[sgx]`` rules; ``Malformed`` for a policy of another platform."""
        return self._rules(SgxPolicy, PLATFORM_SGX)


def _compile_snp(snp: PolicyReader) -> SnpPolicy:
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


def _compile_rules(platform: str, section: PolicyReader) -> PlatformRules:
    if platform == PLATFORM_TDX:
        return compile_tdx(section)
    if platform == PLATFORM_SGX:
        return compile_sgx(section)
    return _compile_snp(section)


def parse_policy(raw: bytes, source: str) -> AppraisalPolicy:
    """Compile policy document bytes; ``source`` names the document in errors."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Malformed(f"{source}: not a valid TOML document", rule="policy.schema",
                        expected="UTF-8 TOML", actual=str(exc)[:200]) from None
    top = PolicyReader(source, "", doc)
    top.check_keys(frozenset({"policy"}), frozenset(SECTIONS.values()))
    head = top.table_at("policy")
    head.check_keys(_POLICY_KEYS)
    name = head.string("name")
    if not _NAME_RE.fullmatch(name):
        raise head.fail("name", "invalid policy name", "1-64 of [A-Za-z0-9._-]", name)
    version = head.integer("version", head.table.get("version"), 0, 2**31 - 1)
    platform = head.string("platform")
    if platform not in PLATFORMS:
        raise head.fail("platform", "unsupported platform", " | ".join(PLATFORMS), platform)
    section = SECTIONS[platform]
    top.check_keys(frozenset({"policy", section}))
    return AppraisalPolicy(
        name=name,
        version=version,
        platform=platform,
        digest=hashlib.sha256(raw).hexdigest(),
        rules=_compile_rules(platform, top.table_at(section)),
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
