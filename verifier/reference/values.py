"""Reference values (golden measurements): states, versions and matching. Pure, no I/O.

Invariants:
- Values are compared as lowercase strings. A value matches at instant ``at`` when it is equal
  and ``not_before <= at < not_after`` (``not_after`` itself is already expired).
- Candidate versions are ACTIVE ones, DEPRECATED ones whose ``retire_at`` is None or later
  than ``at`` (at ``retire_at`` itself the version is retired), and STAGED ones only when the
  caller asks for them (dry runs). RETIRED versions never match.
- When several candidates match, ACTIVE beats DEPRECATED beats STAGED, then the higher
  version wins, so a deprecated value only decides while nothing active covers it.
- No match raises ``MeasurementMismatch`` with rule ``reference_values.<set>`` and a reason
  that explains the closest miss, in this order: an equal value past its ``not_after``, an
  equal value not yet valid, an equal value only in a retired version, an equal value only in
  a staged version, no usable version of the set; otherwise "one of N values".
- A snapshot indexes every set by lowercase value when it is built, so ``match`` is a dict
  lookup plus a scan of the (few) entries that hold that exact value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from keybroker.document import Document
from keybroker.errors import Malformed, MeasurementMismatch


class RefState(StrEnum):
    """Life-cycle state of a reference-value set version."""

    STAGED = "staged"
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


@dataclass(frozen=True)
class RefValue:
    """One named reference value with its validity window."""

    name: str
    value: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class RefSetVersion:
    """One immutable version of a named set, with its current state."""

    name: str
    version: int
    state: RefState
    retire_at: datetime | None
    provenance: str
    author: str
    created_at: datetime
    values: tuple[RefValue, ...]

    @property
    def label(self) -> str:
        """``<set>@<version>`` for messages."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class RefMatch:
    """Which set version and value matched a claim."""

    set_name: str
    version: int
    value_name: str
    state: RefState

    @property
    def label(self) -> str:
        """``<set>@<version>/<value name>`` (the form recorded in appraisals)."""
        return f"{self.set_name}@{self.version}/{self.value_name}"


def rfc3339(value: datetime) -> str:
    """``2026-01-02T03:04:05Z`` (UTC) for messages."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


_RANK = {RefState.ACTIVE: 0, RefState.DEPRECATED: 1, RefState.STAGED: 2, RefState.RETIRED: 3}


def _retired_at(version: RefSetVersion, at: datetime) -> bool:
    if version.state is RefState.RETIRED:
        return True
    return (version.state is RefState.DEPRECATED and version.retire_at is not None
            and version.retire_at <= at)


def _candidate(version: RefSetVersion, at: datetime, include_staged: bool) -> bool:
    if version.state is RefState.ACTIVE:
        return True
    if version.state is RefState.DEPRECATED:
        return not _retired_at(version, at)
    return version.state is RefState.STAGED and include_staged


def _in_window(value: RefValue, at: datetime) -> bool:
    return value.not_before <= at < value.not_after


class _SetIndex:
    """The versions of one set and its value index (entries best-first)."""

    def __init__(self, name: str, versions: list[RefSetVersion]) -> None:
        self.name = name
        self.versions = sorted(versions, key=lambda v: (_RANK[v.state], -v.version))
        self.by_value: dict[str, list[tuple[RefSetVersion, RefValue]]] = {}
        for version in self.versions:
            for value in version.values:
                self.by_value.setdefault(value.value.lower(), []).append((version, value))


class ReferenceSnapshot:
    """An immutable view of every reference-value set version at one store generation."""

    def __init__(self, versions: Iterable[RefSetVersion]) -> None:
        grouped: dict[str, list[RefSetVersion]] = {}
        seen: set[tuple[str, int]] = set()
        all_versions: list[RefSetVersion] = []
        for version in versions:
            key = (version.name, version.version)
            if key in seen:
                raise Malformed(f"duplicate reference set version {version.label}",
                                rule="refvalues.version", expected="unique set versions",
                                actual=version.label)
            seen.add(key)
            all_versions.append(version)
            grouped.setdefault(version.name, []).append(version)
        self.versions: tuple[RefSetVersion, ...] = tuple(
            sorted(all_versions, key=lambda v: (v.name, v.version)))
        self._sets = {name: _SetIndex(name, vs) for name, vs in grouped.items()}

    def set_names(self) -> tuple[str, ...]:
        """Names of every set known to the snapshot, sorted."""
        return tuple(sorted(self._sets))

    def match(
        self, set_name: str, value: str, at: datetime, *, include_staged: bool = False
    ) -> RefMatch:
        """The best match for ``value`` in ``set_name`` at ``at``; else MeasurementMismatch."""
        index = self._sets.get(set_name)
        entries = index.by_value.get(value.lower(), []) if index is not None else []
        for version, ref in entries:
            if _candidate(version, at, include_staged) and _in_window(ref, at):
                return RefMatch(set_name, version.version, ref.name, version.state)
        raise _explain(set_name, index, entries, value, at, include_staged=include_staged)

    def would_match(self, set_name: str, value: str, at: datetime) -> RefMatch | None:
        """The best match among STAGED versions only (what activating them would accept)."""
        index = self._sets.get(set_name)
        if index is None:
            return None
        for version, ref in index.by_value.get(value.lower(), []):
            if version.state is RefState.STAGED and _in_window(ref, at):
                return RefMatch(set_name, version.version, ref.name, version.state)
        return None


def _explain(
    set_name: str,
    index: _SetIndex | None,
    entries: list[tuple[RefSetVersion, RefValue]],
    value: str,
    at: datetime,
    *,
    include_staged: bool,
) -> MeasurementMismatch:
    rule = f"reference_values.{set_name}"
    when = rfc3339(at)
    usable = [(v, r) for v, r in entries if _candidate(v, at, include_staged)]
    for version, ref in usable:
        if at >= ref.not_after:
            return MeasurementMismatch(
                f"reference value '{ref.name}' in {version.label} expired at "
                f"{rfc3339(ref.not_after)}",
                rule=rule, expected=f"a value of {set_name} valid at {when}", actual=value)
    for version, ref in usable:
        if at < ref.not_before:
            return MeasurementMismatch(
                f"reference value '{ref.name}' in {version.label} is not valid before "
                f"{rfc3339(ref.not_before)}",
                rule=rule, expected=f"a value of {set_name} valid at {when}", actual=value)
    for version, ref in entries:
        if _retired_at(version, at):
            since = f" at {rfc3339(version.retire_at)}" if version.retire_at else ""
            return MeasurementMismatch(
                f"reference value '{ref.name}' is only in {version.label}, retired{since}",
                rule=rule, expected=f"a value of a usable version of {set_name}", actual=value)
    for version, ref in entries:
        if version.state is RefState.STAGED:
            hint = " (would_match)" if _in_window(ref, at) else ""
            return MeasurementMismatch(
                f"reference value '{ref.name}' is staged in {version.label}{hint}",
                rule=rule, expected=f"a value of an active version of {set_name}",
                actual=value)
    candidates = [v for v in (index.versions if index else [])
                  if _candidate(v, at, include_staged)]
    if not candidates:
        states = ", ".join(f"{v.label} {v.state.value}" for v in (index.versions if index
                                                                  else []))
        return MeasurementMismatch(
            f"reference value set '{set_name}' has no usable version",
            rule=rule, expected=f"an active version of {set_name}",
            actual=states or "no version")
    count = len({ref.value.lower() for v in candidates for ref in v.values})
    labels = ",".join(str(v.version) for v in sorted(candidates, key=lambda v: v.version))
    return MeasurementMismatch(
        f"value is not in reference set {set_name}", rule=rule,
        expected=f"one of {count} values in {set_name}@{labels}", actual=value)


def reference_document(doc: Document) -> tuple[str, str, tuple[RefValue, ...]]:
    """(set name, description, values) of a schema-valid ``ReferenceValues`` document, with
    the checks a schema cannot express (unique value names, non-empty validity windows)."""
    data = doc.data
    name, description, items = data.get("name"), data.get("description", ""), data.get("values")
    if data.get("kind") != "ReferenceValues":
        raise doc.fail(["kind"], "not a reference-value document", "ReferenceValues",
                       data.get("kind"))
    if not isinstance(name, str) or not name:
        raise doc.fail(["name"], "missing set name", "a set name", name)
    if not isinstance(description, str):
        raise doc.fail(["description"], "wrong type", "string", description)
    if not isinstance(items, list) or not items:
        raise doc.fail(["values"], "no reference values", "at least one value", items)
    seen: dict[str, int] = {}
    out: list[RefValue] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise doc.fail(["values", i], "wrong type", "mapping", item)
        vname, value = item.get("name"), item.get("value")
        nb, na = item.get("not_before"), item.get("not_after")
        if not isinstance(vname, str) or not vname:
            raise doc.fail(["values", i, "name"], "missing value name", "a name", vname)
        if not isinstance(value, str) or not value:
            raise doc.fail(["values", i, "value"], "missing value", "a string", value)
        for key, when in (("not_before", nb), ("not_after", na)):
            if not isinstance(when, datetime) or when.tzinfo is None:
                raise doc.fail(["values", i, key], "not a date-time with a time zone",
                               "date-time with a time zone", when)
        assert isinstance(nb, datetime) and isinstance(na, datetime)
        if vname in seen:
            raise doc.fail(["values", i, "name"],
                           f"duplicate value name (first at values[{seen[vname]}])",
                           "value names unique within the set", vname)
        if not nb < na:
            raise doc.fail(["values", i, "not_after"], "validity window is empty",
                           f"after not_before {rfc3339(nb)}", rfc3339(na))
        seen[vname] = i
        out.append(RefValue(vname, value, nb.astimezone(UTC), na.astimezone(UTC)))
    return name, description, tuple(out)
