"""Administrator roles: who may do what through the admin API (config key ``admins``).

Invariants:
- ``admins`` is a TOML table identity -> list of role strings. An identity is a client
  certificate name (CN or subjectAltName) or a JWT ``sub``. The roles are ``secret-admin``
  (secrets: put, generate, list versions, enable/disable, schedule destruction; never read),
  ``policy-admin`` (validate, apply, roll back, dry-run appraisal policies and release rules),
  ``refvalue-admin`` (import reference values and move sets through their lifecycle),
  ``auditor`` (list, verify and export the audit log) and ``operator`` (read-only status and
  the TCB report). Anything else (unknown role, duplicate role, non-string, bad identity) is
  ``Malformed`` naming the config file and key, so a typo never grants or silently drops a role.
- An identity absent from the table holds no role (``keybroker.admin_auth`` refuses it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from keybroker.errors import Malformed

SECRET_ADMIN = "secret-admin"
AUDITOR = "auditor"
OPERATOR = "operator"
POLICY_ADMIN = "policy-admin"
REFVALUE_ADMIN = "refvalue-admin"
ROLES = (SECRET_ADMIN, POLICY_ADMIN, REFVALUE_ADMIN, AUDITOR, OPERATOR)
_IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:/-]{0,127}$")

Admins = Mapping[str, frozenset[str]]
NO_ADMINS: Admins = MappingProxyType({})


def parse_admins(value: object, path: Path, key: str) -> Admins:
    """Validate the ``admins`` table read from the config file ``path`` (``key`` for errors)."""

    def fail(what: str, expected: str, actual: str) -> Malformed:
        return Malformed(f"{path}: {what} at key '{key}'", rule="config.schema",
                         expected=expected, actual=actual[:120])

    if not isinstance(value, dict):
        raise fail("wrong type", "table identity -> list of roles",
                   f"{type(value).__name__} {value!r}")
    out: dict[str, frozenset[str]] = {}
    for identity, roles in value.items():
        if not isinstance(identity, str) or not _IDENTITY_RE.fullmatch(identity):
            raise fail("invalid identity", "1-128 of [A-Za-z0-9._@+-]", repr(identity))
        if not isinstance(roles, list):
            raise fail(f"wrong type for '{identity}'", "list of role strings",
                       f"{type(roles).__name__} {roles!r}")
        seen: set[str] = set()
        for role in roles:
            if not isinstance(role, str) or role not in ROLES:
                raise fail(f"unknown role for '{identity}'", "one of: " + ", ".join(ROLES),
                           repr(role))
            if role in seen:
                raise fail(f"duplicate role for '{identity}'", "each role once", role)
            seen.add(role)
        out[identity] = frozenset(seen)
    return MappingProxyType(out)
