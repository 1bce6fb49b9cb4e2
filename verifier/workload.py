"""Workload identity: the init-data document, once bound by a launch register, and the images a
runtime log replayed, as ``WorkloadClaims``; and the platform-neutral workload policy checks.

Init-data document (TOML, UTF-8, at most 64 KiB; unknown keys are refused)::

    [workload]
    name = "demo"                                   # required
    images = ["sha256:<64 lowercase hex>"]          # optional
    [agent]                                         # optional
    policy = "default"                              # required in [agent]
    policy_digest = "sha256:<64 lowercase hex>"     # optional

Invariants:
- The binding is checked before the document is read (``check_init_data``): a document the
  register does not commit to is ``MeasurementMismatch`` (rule ``workload.require_init_data``)
  and is never parsed, so no claim ever comes from an unbound document. A required but absent
  document is the same error.
- A bound document that does not follow the format is ``Malformed`` (rule
  ``workload.init_data``) naming the key; nothing is coerced or defaulted.
- ``WorkloadClaims.as_dict`` always has every key (null / [] when absent) and ``from_dict`` is
  its exact, strict inverse (``Malformed``, rule ``claims.schema``).
- ``check_workload`` never passes vacuously: a names allow-list needs a name, an image
  allow-list needs at least one declared or measured image, and every declared and every
  measured image must be approved (``MeasurementMismatch`` naming the rule and the value).
- ``check_binding`` re-checks recorded or hand-written workload claims against the evidence:
  claims that say they were bound must name the platform's register and its value.
- The ``workload:`` section of a policy compiles to ``WorkloadPolicy`` (``compile_workload``);
  on a platform without an init-data register every rule that could never pass is refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from keybroker.document_reader import DocumentReader
from keybroker.errors import Malformed, MeasurementMismatch
from verifier.init_data import InitDataRegister, check_init_data

MAX_INIT_DATA_BYTES: Final = 64 * 1024
RULE_REQUIRE: Final = "workload.require_init_data"
RULE_FORMAT: Final = "workload.init_data"
IMAGE_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REGISTER_RE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
_HEX_RE: Final = re.compile(r"(?:[0-9a-f]{2}){1,64}")
_IMAGE_WHAT = "sha256:<64 lowercase hex digits>"
_NAME_WHAT = "1-64 of [A-Za-z0-9._-], starting with a letter or digit"
_KEYS = ("init_data_register", "init_data_digest", "name", "images", "agent_policy",
         "agent_policy_digest", "measured_register", "measured_images")


@dataclass(frozen=True)
class WorkloadClaims:
    """What the workload is: declared by bound init-data, measured by a replayed runtime log."""

    init_data_register: str | None  # "HOST_DATA" | "MRCONFIGID" when init-data was bound
    init_data_digest: str | None  # hex of the register value that bound it
    name: str | None
    images: tuple[str, ...]  # declared in init-data
    agent_policy: str | None
    agent_policy_digest: str | None
    measured_register: str | None  # "RTMR3" when a runtime log replayed
    measured_images: tuple[str, ...]  # replayed runtime-log images, in log order

    def as_dict(self) -> dict[str, object]:
        """JSON-able; always every key."""
        return {
            "init_data_register": self.init_data_register,
            "init_data_digest": self.init_data_digest,
            "name": self.name,
            "images": list(self.images),
            "agent_policy": self.agent_policy,
            "agent_policy_digest": self.agent_policy_digest,
            "measured_register": self.measured_register,
            "measured_images": list(self.measured_images),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> WorkloadClaims:
        """The strict inverse of ``as_dict``."""
        if not isinstance(d, Mapping):
            raise _schema("", "wrong type", "a map", d)
        for key in d:
            if key not in _KEYS:
                raise _schema(str(key), "unknown claim", "one of " + ", ".join(_KEYS),
                              repr(key)[:80])
        for key in _KEYS:
            if key not in d:
                raise _schema(key, "missing claim", "present", "absent")
        register = _opt(d, "init_data_register", REGISTER_RE, "a register name such as HOST_DATA")
        digest = _opt(d, "init_data_digest", _HEX_RE, "lowercase hex")
        if (register is None) != (digest is None):
            raise _schema("init_data_digest", "wrong value",
                          "set exactly when init_data_register is set", d["init_data_digest"])
        return cls(
            init_data_register=register,
            init_data_digest=digest,
            name=_opt(d, "name", NAME_RE, _NAME_WHAT),
            images=_images(d, "images"),
            agent_policy=_opt(d, "agent_policy", NAME_RE, _NAME_WHAT),
            agent_policy_digest=_opt(d, "agent_policy_digest", IMAGE_RE, _IMAGE_WHAT),
            measured_register=_opt(d, "measured_register", REGISTER_RE,
                                   "a register name such as RTMR3"),
            measured_images=_images(d, "measured_images"),
        )


NO_WORKLOAD: Final = WorkloadClaims(None, None, None, (), None, None, None, ())


@dataclass(frozen=True)
class WorkloadPolicy:
    """Compiled ``workload:`` section (platform-neutral; ``None`` = that allow-list is not
    checked, an empty set allows nothing)."""

    require_init_data: bool = False
    names: frozenset[str] | None = None
    approved_images: frozenset[str] | None = None


def compile_workload(top: DocumentReader, platform: str, *,
                     binds_init_data: bool) -> WorkloadPolicy:
    """Compile a policy's ``workload:`` section (absent: nothing required, nothing checked);
    ``binds_init_data``: the platform has a register that binds init-data."""
    if not top.has("workload"):
        return WorkloadPolicy()
    workload = top.table_at("workload")
    workload.check_keys(frozenset(), frozenset({"require_init_data", "names",
                                                "approved_images"}))
    require = workload.boolean("require_init_data", False)
    if not binds_init_data:
        # No launch register for init-data: these rules could never pass.
        for key in ("require_init_data", "names", "approved_images"):
            if workload.has(key) and (key != "require_init_data" or require):
                raise workload.fail(key, f"not supported for platform {platform}",
                                    f"absent ({platform} evidence has no init-data register)",
                                    workload.table[key])
    names = (frozenset(workload.strings("names", [], NAME_RE, _NAME_WHAT))
             if workload.has("names") else None)
    images = (frozenset(workload.strings("approved_images", [], IMAGE_RE, _IMAGE_WHAT))
              if workload.has("approved_images") else None)
    return WorkloadPolicy(require_init_data=require, names=names, approved_images=images)


def _describe(value: object) -> str:
    if isinstance(value, str):
        return "str " + repr(value[:80])
    return "null" if value is None else f"{type(value).__name__}"


def _schema(key: str, what: str, expected: str, actual: object) -> Malformed:
    found = actual if isinstance(actual, str) and what != "wrong value" else _describe(actual)
    path = f"workload.{key}" if key else "workload"
    return Malformed(f"claims: {what} at '{path}'", rule="claims.schema", expected=expected,
                     actual=str(found))


def _opt(d: Mapping[str, object], key: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = d[key]
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _schema(key, "wrong value", f"null or {what}", value)
    return value


def _images(d: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = d[key]
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and IMAGE_RE.fullmatch(v) for v in value):
        raise _schema(key, "wrong value", f"list of {_IMAGE_WHAT}", value)
    return tuple(str(v) for v in value)


# --- the init-data document -------------------------------------------------------------------

def _bad(key: str, what: str, expected: str, actual: object) -> Malformed:
    return Malformed(f"init-data: {what} at '{key}'", rule=RULE_FORMAT, expected=expected,
                     actual=_describe(actual) if what != "unknown key" else str(actual))


def _table(doc: Mapping[str, object], key: str, allowed: tuple[str, ...],
           required: tuple[str, ...]) -> Mapping[str, object]:
    value = doc[key]
    if not isinstance(value, dict):
        raise _bad(key, "wrong type", "a table", value)
    for sub in value:
        if sub not in allowed:
            raise _bad(f"{key}.{sub}", "unknown key", "one of " + ", ".join(allowed), sub)
    for sub in required:
        if sub not in value:
            raise _bad(f"{key}.{sub}", "missing key", "present", None)
    return value


def _text(table: Mapping[str, object], key: str, path: str, pattern: re.Pattern[str],
          what: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(path, "wrong value", what, value)
    return value


@dataclass(frozen=True)
class InitDataDocument:
    """A parsed init-data document."""

    name: str
    images: tuple[str, ...]
    agent_policy: str | None
    agent_policy_digest: str | None


def parse_init_data(init_data: bytes) -> InitDataDocument:
    """Parse an init-data document (module docstring); ``Malformed`` on any deviation."""
    if len(init_data) > MAX_INIT_DATA_BYTES:
        raise Malformed("init-data document too large", rule=RULE_FORMAT,
                        expected=f"<= {MAX_INIT_DATA_BYTES} bytes",
                        actual=f"{len(init_data)} bytes")
    try:
        doc = tomllib.loads(init_data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Malformed("init-data is not a valid TOML document", rule=RULE_FORMAT,
                        expected="UTF-8 TOML with a [workload] table",
                        actual=str(exc)[:200]) from None
    for key in doc:
        if key not in ("workload", "agent"):
            raise _bad(key, "unknown key", "one of workload, agent", key)
    if "workload" not in doc:
        raise _bad("workload", "missing key", "a [workload] table", None)
    workload = _table(doc, "workload", ("name", "images"), ("name",))
    images: tuple[str, ...] = ()
    if "images" in workload:
        listed = workload["images"]
        if not isinstance(listed, list):
            raise _bad("workload.images", "wrong type", f"list of {_IMAGE_WHAT}", listed)
        for i, image in enumerate(listed):
            if not isinstance(image, str) or not IMAGE_RE.fullmatch(image):
                raise _bad(f"workload.images.{i}", "wrong value", _IMAGE_WHAT, image)
        images = tuple(listed)
    agent_policy = agent_digest = None
    if "agent" in doc:
        agent = _table(doc, "agent", ("policy", "policy_digest"), ("policy",))
        agent_policy = _text(agent, "policy", "agent.policy", NAME_RE, _NAME_WHAT)
        if "policy_digest" in agent:
            agent_digest = _text(agent, "policy_digest", "agent.policy_digest", IMAGE_RE,
                                 _IMAGE_WHAT)
    return InitDataDocument(
        name=_text(workload, "name", "workload.name", NAME_RE, _NAME_WHAT),
        images=images, agent_policy=agent_policy, agent_policy_digest=agent_digest)


def workload_claims(register: InitDataRegister, register_value: bytes, init_data: bytes, *,
                    required: bool, measured_register: str | None,
                    measured_images: tuple[str, ...]) -> WorkloadClaims:
    """Bind, then read, the presented init-data; add the replayed runtime images."""
    check_init_data(register, register_value, init_data, required=required, rule=RULE_REQUIRE)
    if not init_data:
        return WorkloadClaims(None, None, None, (), None, None, measured_register,
                              tuple(measured_images))
    doc = parse_init_data(init_data)
    return WorkloadClaims(
        init_data_register=register.name, init_data_digest=register_value.hex(), name=doc.name,
        images=doc.images, agent_policy=doc.agent_policy,
        agent_policy_digest=doc.agent_policy_digest, measured_register=measured_register,
        measured_images=tuple(measured_images))


def check_binding(workload: WorkloadClaims, register: InitDataRegister | None,
                  register_value: bytes) -> None:
    """Workload claims that say they were bound must name ``register`` and its value
    (``register`` None: the platform cannot bind init-data)."""
    if workload.init_data_register is None:
        return
    if register is None:
        raise MeasurementMismatch("this evidence cannot bind init-data", rule=RULE_REQUIRE,
                                  expected="no init-data",
                                  actual=f"bound by {workload.init_data_register}")
    claimed = f"{workload.init_data_register} = {workload.init_data_digest}"
    if workload.init_data_register != register.name or (
            workload.init_data_digest != register_value.hex()):
        raise MeasurementMismatch(
            f"{register.name} does not commit to the workload's init-data", rule=RULE_REQUIRE,
            expected=claimed, actual=f"{register.name} = {register_value.hex()}")


def check_workload(workload: WorkloadClaims, policy: WorkloadPolicy) -> None:
    """Apply the platform-neutral workload policy (module invariants)."""
    if policy.require_init_data and workload.init_data_register is None:
        raise MeasurementMismatch("policy requires init-data but none was presented",
                                  rule=RULE_REQUIRE, expected="bound init-data",
                                  actual="no init-data")
    if policy.names is not None and workload.name not in policy.names:
        raise MeasurementMismatch(
            "workload name is not in the policy's allow-list", rule="workload.names",
            expected=", ".join(sorted(policy.names)) or "no name (empty allow-list)",
            actual=workload.name or "none")
    if policy.approved_images is not None:
        approved = policy.approved_images
        seen = (*workload.images, *workload.measured_images)
        if not seen:
            raise MeasurementMismatch(
                "policy approves images but the workload declares and measured none",
                rule="workload.approved_images",
                expected=f"at least one of {len(approved)} approved images", actual="no images")
        for kind, images in (("declared", workload.images),
                             ("measured", workload.measured_images)):
            for image in images:
                if image not in approved:
                    raise MeasurementMismatch(
                        f"a {kind} image is not approved", rule="workload.approved_images",
                        expected=f"one of {len(approved)} approved images", actual=image)
