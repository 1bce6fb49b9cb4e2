"""Reference-value matching: states, windows, preference and the explanation of each miss."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keybroker.errors import Category, Malformed, MeasurementMismatch
from verifier.reference.values import (
    ReferenceSnapshot,
    RefMatch,
    RefSetVersion,
    RefState,
    RefValue,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NB = datetime(2026, 1, 1, tzinfo=UTC)
NA = datetime(2027, 1, 1, tzinfo=UTC)
GOOD = "5d8e" + "00" * 46
OTHER = "aa" * 48


def _value(name: str = "ovmf-2026.09", value: str = GOOD, nb: datetime = NB,
           na: datetime = NA) -> RefValue:
    return RefValue(name, value, nb, na)


def _version(version: int = 1, state: RefState = RefState.ACTIVE, *values: RefValue,
             name: str = "snp-launch", retire_at: datetime | None = None) -> RefSetVersion:
    return RefSetVersion(name=name, version=version, state=state, retire_at=retire_at,
                         provenance="admin:secops", author="secops", created_at=NB,
                         values=values or (_value(),))


def _miss(snapshot: ReferenceSnapshot, value: str = GOOD, at: datetime = T0,
          **kw: bool) -> MeasurementMismatch:
    with pytest.raises(MeasurementMismatch) as err:
        snapshot.match("snp-launch", value, at, **kw)
    assert err.value.category is Category.MEASUREMENT
    assert err.value.rule == "reference_values.snp-launch"
    return err.value


def test_active_value_matches() -> None:
    """An equal value in an active version inside its window matches."""
    snap = ReferenceSnapshot([_version()])
    assert snap.match("snp-launch", GOOD, T0) == RefMatch("snp-launch", 1, "ovmf-2026.09",
                                                          RefState.ACTIVE)
    assert snap.match("snp-launch", GOOD, T0).label == "snp-launch@1/ovmf-2026.09"


def test_comparison_is_case_insensitive() -> None:
    """Values compare as lowercase strings on both sides."""
    snap = ReferenceSnapshot([_version(1, RefState.ACTIVE, _value(value="SHA256:ABCD"))])
    assert snap.match("snp-launch", "sha256:abcd", T0).value_name == "ovmf-2026.09"
    assert snap.match("snp-launch", "Sha256:AbCd", T0).version == 1


def test_not_before_inclusive() -> None:
    """At exactly not_before the value is valid; a microsecond before it is not yet valid."""
    snap = ReferenceSnapshot([_version()])
    assert snap.match("snp-launch", GOOD, NB).version == 1
    err = _miss(snap, at=NB - timedelta(microseconds=1))
    assert "is not valid before 2026-01-01T00:00:00Z" in err.reason
    assert "'ovmf-2026.09' in snp-launch@1" in err.reason
    assert err.actual == GOOD


def test_not_after_exclusive() -> None:
    """At exactly not_after the value has expired; a microsecond earlier it matches."""
    snap = ReferenceSnapshot([_version()])
    assert snap.match("snp-launch", GOOD, NA - timedelta(microseconds=1)).version == 1
    err = _miss(snap, at=NA)
    assert err.reason == ("reference value 'ovmf-2026.09' in snp-launch@1 expired at "
                          "2027-01-01T00:00:00Z")


def test_expired_explained_before_not_yet_valid() -> None:
    """When one copy expired and another is not yet valid, the expiry is reported."""
    snap = ReferenceSnapshot([
        _version(1, RefState.ACTIVE, _value(na=T0)),
        _version(2, RefState.ACTIVE, _value(nb=T0 + timedelta(days=1))),
    ])
    assert "expired at" in _miss(snap).reason


def test_deprecated_matches_until_retire_at() -> None:
    """A deprecated version matches before retire_at and is retired at retire_at exactly."""
    retire = T0 + timedelta(days=30)
    snap = ReferenceSnapshot([_version(1, RefState.DEPRECATED, retire_at=retire)])
    match = snap.match("snp-launch", GOOD, retire - timedelta(microseconds=1))
    assert match.state is RefState.DEPRECATED
    err = _miss(snap, at=retire)
    assert "retired at 2026-03-31T00:00:00Z" in err.reason
    assert "only in snp-launch@1" in err.reason


def test_deprecated_without_retire_at_matches() -> None:
    """A deprecated version with no retirement time keeps matching."""
    snap = ReferenceSnapshot([_version(1, RefState.DEPRECATED)])
    assert snap.match("snp-launch", GOOD, T0).state is RefState.DEPRECATED


def test_retired_never_matches() -> None:
    """A value only in a retired version is explained as retired."""
    snap = ReferenceSnapshot([_version(1, RefState.RETIRED, retire_at=T0 - timedelta(days=1)),
                              _version(2, RefState.ACTIVE, _value("other", OTHER))])
    err = _miss(snap)
    assert "is only in snp-launch@1, retired at 2026-02-28T00:00:00Z" in err.reason
    assert snap.match("snp-launch", OTHER, T0).version == 2


def test_prefer_active_over_deprecated_and_staged() -> None:
    """ACTIVE beats DEPRECATED beats STAGED, whatever the version numbers."""
    snap = ReferenceSnapshot([
        _version(3, RefState.STAGED, _value("staged")),
        _version(2, RefState.DEPRECATED, _value("old")),
        _version(1, RefState.ACTIVE, _value("current")),
    ])
    best = snap.match("snp-launch", GOOD, T0, include_staged=True)
    assert (best.version, best.value_name, best.state) == (1, "current", RefState.ACTIVE)
    without_active = ReferenceSnapshot([
        _version(3, RefState.STAGED, _value("staged")),
        _version(2, RefState.DEPRECATED, _value("old")),
    ])
    assert without_active.match("snp-launch", GOOD, T0, include_staged=True).state \
        is RefState.DEPRECATED


def test_higher_version_wins_within_state() -> None:
    """Among active versions holding the value, the highest version is reported."""
    snap = ReferenceSnapshot([_version(1, RefState.ACTIVE, _value("a")),
                              _version(4, RefState.ACTIVE, _value("b"))])
    assert snap.match("snp-launch", GOOD, T0).version == 4


def test_staged_only_with_include_staged() -> None:
    """A staged value matches only for dry runs; otherwise the miss names it (would_match)."""
    snap = ReferenceSnapshot([_version(1, RefState.ACTIVE, _value("a", OTHER)),
                              _version(2, RefState.STAGED, _value("next"))])
    err = _miss(snap)
    assert err.reason == "reference value 'next' is staged in snp-launch@2 (would_match)"
    staged = snap.match("snp-launch", GOOD, T0, include_staged=True)
    assert (staged.version, staged.state) == (2, RefState.STAGED)


def test_would_match_only_considers_staged() -> None:
    """would_match returns the staged match, or None (even when an active version matches)."""
    snap = ReferenceSnapshot([_version(1, RefState.ACTIVE, _value("a", OTHER)),
                              _version(2, RefState.STAGED, _value("next"))])
    assert snap.would_match("snp-launch", GOOD, T0) == RefMatch("snp-launch", 2, "next",
                                                                RefState.STAGED)
    assert snap.would_match("snp-launch", OTHER, T0) is None
    assert snap.would_match("snp-launch", GOOD, NA) is None
    assert snap.would_match("unknown-set", GOOD, T0) is None


def test_no_usable_version() -> None:
    """A set with only staged/retired versions (or unknown) has no usable version."""
    snap = ReferenceSnapshot([_version(1, RefState.STAGED, _value("a", OTHER)),
                              _version(2, RefState.RETIRED, _value("b", OTHER))])
    err = _miss(snap)
    assert err.reason == "reference value set 'snp-launch' has no usable version"
    assert err.actual == "snp-launch@1 staged, snp-launch@2 retired"
    unknown = ReferenceSnapshot([])
    err = _miss(unknown)
    assert "has no usable version" in err.reason and err.actual == "no version"


def test_plain_mismatch_counts_values() -> None:
    """An unknown value reports how many values the usable versions hold."""
    snap = ReferenceSnapshot([
        _version(1, RefState.ACTIVE, _value("a", "11" * 48), _value("b", "22" * 48)),
        _version(2, RefState.DEPRECATED, _value("c", "33" * 48)),
        _version(3, RefState.RETIRED, _value("d", "44" * 48)),
    ])
    err = _miss(snap, value=OTHER)
    assert err.expected == "one of 3 values in snp-launch@1,2"
    assert err.actual == OTHER
    assert err.reason == "value is not in reference set snp-launch"


def test_sets_are_separate() -> None:
    """A value of one set never matches another set."""
    snap = ReferenceSnapshot([_version(1, RefState.ACTIVE, name="tdx-mrtd")])
    assert snap.match("tdx-mrtd", GOOD, T0).set_name == "tdx-mrtd"
    assert "no usable version" in _miss(snap).reason
    assert snap.set_names() == ("tdx-mrtd",)


def test_duplicate_set_version_refused() -> None:
    """Two entries for the same set version are refused when the snapshot is built."""
    with pytest.raises(Malformed):
        ReferenceSnapshot([_version(1), _version(1)])
