"""Reference-value store: import, life-cycle transitions, history, snapshots, manifests."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.store_backends import RawError, StoreBackend

from keybroker.errors import Malformed, MeasurementMismatch, SignatureInvalid
from verifier.reference.manifest import Provider
from verifier.reference.store import ReferenceStore
from verifier.reference.values import RefState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GOOD = "5d8e" + "00" * 46
NEXT = "77" * 48

DOC = f"""\
kind: ReferenceValues
name: snp-launch
description: OVMF launch digests
values:
  - name: ovmf-2026.09
    value: "{GOOD}"
    not_before: 2026-01-01T00:00:00Z
    not_after: 2027-01-01T00:00:00Z
""".encode()
DOC_NEXT = DOC.replace(GOOD.encode(), NEXT.encode()).replace(b"ovmf-2026.09", b"ovmf-2027.01")


def _store(db: StoreBackend) -> ReferenceStore:
    return ReferenceStore(db.target("state"))


def _import(store: ReferenceStore, raw: bytes = DOC, now: datetime = T0) -> int:
    return store.import_admin(raw, "snp.yaml", author="secops", comment="new firmware",
                              now=now).version


def _move(store: ReferenceStore, version: int, to: RefState, *,
          retire_at: datetime | None = None, now: datetime = T0) -> None:
    store.transition("snp-launch", version, to, author="secops", comment=f"to {to}", now=now,
                     retire_at=retire_at)


def test_import_creates_staged_version(db_backend: StoreBackend) -> None:
    """Import stores a STAGED version with values, provenance admin:<author> and an event."""
    store = _store(db_backend)
    imported = store.import_admin(DOC, "snp.yaml", author="secops", comment="fw", now=T0)
    assert (imported.name, imported.version, imported.state) == ("snp-launch", 1,
                                                                 RefState.STAGED)
    assert imported.provenance == "admin:secops" and imported.created_at == T0
    [listed] = _store(db_backend).versions()
    assert listed == imported
    assert listed.values[0].name == "ovmf-2026.09" and listed.values[0].value == GOOD
    assert listed.values[0].not_after == datetime(2027, 1, 1, tzinfo=UTC)
    [event] = store.history("snp-launch")
    assert (event.from_state, event.to_state, event.author, event.comment, event.at) == (
        None, RefState.STAGED, "secops", "fw", T0)
    assert store.document("snp-launch", 1) == DOC


def test_versions_number_per_set(db_backend: StoreBackend) -> None:
    """Each import of a set gets the next version; versions(name) filters by set."""
    store = _store(db_backend)
    assert _import(store) == 1
    assert _import(store, DOC_NEXT) == 2
    assert _import(store, DOC.replace(b"name: snp-launch", b"name: tdx-mrtd")) == 1
    assert [(v.name, v.version) for v in store.versions()] == [
        ("snp-launch", 1), ("snp-launch", 2), ("tdx-mrtd", 1)]
    assert [v.version for v in store.versions("snp-launch")] == [1, 2]
    assert store.versions("nothing") == []


def test_window_must_not_be_empty(db_backend: StoreBackend) -> None:
    """not_after <= not_before is MALFORMED with the file and line of not_after."""
    store = _store(db_backend)
    raw = DOC.replace(b"not_after: 2027-01-01T00:00:00Z", b"not_after: 2026-01-01T00:00:00Z")
    with pytest.raises(Malformed) as err:
        _import(store, raw)
    assert err.value.reason.startswith("snp.yaml:8: ")
    assert "not_after" in err.value.reason
    assert store.versions() == []


def test_value_names_unique(db_backend: StoreBackend) -> None:
    """A value name repeated within one document is MALFORMED at the repeat's line."""
    store = _store(db_backend)
    raw = DOC + DOC[DOC.index(b"  - name"):].replace(GOOD.encode(), NEXT.encode())
    with pytest.raises(Malformed) as err:
        _import(store, raw)
    assert err.value.reason.startswith("snp.yaml:9: duplicate value name")


def test_schema_errors_have_lines(db_backend: StoreBackend) -> None:
    """A schema violation (zone-less instant, unknown field) is MALFORMED with file:line."""
    store = _store(db_backend)
    with pytest.raises(Malformed) as err:
        _import(store, DOC.replace(b"00:00:00Z\n  ", b"00:00:00\n  "))
    assert err.value.reason.startswith("snp.yaml:7:")
    with pytest.raises(Malformed) as err:
        _import(store, DOC + b"extra: 1\n")
    assert err.value.reason.startswith("snp.yaml:9:")


def test_unchanged_refused_until_retired(db_backend: StoreBackend) -> None:
    """The same document again is refused while its version is live, allowed once retired."""
    store = _store(db_backend)
    _import(store)
    with pytest.raises(Malformed) as err:
        _import(store)
    assert err.value.rule == "refvalues.unchanged"
    _move(store, 1, RefState.RETIRED)
    assert _import(store) == 2


def test_author_and_comment_required(db_backend: StoreBackend) -> None:
    """Imports and transitions need a non-empty author and comment."""
    store = _store(db_backend)
    with pytest.raises(Malformed):
        store.import_admin(DOC, "snp.yaml", author="", comment="c", now=T0)
    with pytest.raises(Malformed):
        store.import_admin(DOC, "snp.yaml", author="secops", comment=" ", now=T0)
    _import(store)
    with pytest.raises(Malformed):
        store.transition("snp-launch", 1, RefState.ACTIVE, author="secops", comment="", now=T0)


@pytest.mark.parametrize("path", [
    [RefState.ACTIVE],
    [RefState.RETIRED],
    [RefState.ACTIVE, RefState.RETIRED],
    [RefState.ACTIVE, RefState.DEPRECATED, RefState.RETIRED],
])
def test_allowed_transitions(db_backend: StoreBackend, path: list[RefState]) -> None:
    """staged->active/retired, active->deprecated/retired, deprecated->retired are allowed."""
    store = _store(db_backend)
    _import(store)
    for to in path:
        retire_at = T0 + timedelta(days=30) if to is RefState.DEPRECATED else None
        _move(store, 1, to, retire_at=retire_at)
    assert store.versions()[0].state is path[-1]
    assert [e.to_state for e in store.history("snp-launch", 1)] == [RefState.STAGED, *path]


@pytest.mark.parametrize(("path", "refused"), [
    ([], RefState.DEPRECATED),
    ([], RefState.STAGED),
    ([RefState.ACTIVE], RefState.ACTIVE),
    ([RefState.ACTIVE], RefState.STAGED),
    ([RefState.ACTIVE, RefState.DEPRECATED], RefState.ACTIVE),
    ([RefState.RETIRED], RefState.ACTIVE),
    ([RefState.RETIRED], RefState.RETIRED),
])
def test_refused_transitions(db_backend: StoreBackend, path: list[RefState],
                             refused: RefState) -> None:
    """Every other transition is MALFORMED refvalues.state and leaves no event."""
    store = _store(db_backend)
    _import(store)
    for to in path:
        retire_at = T0 + timedelta(days=30) if to is RefState.DEPRECATED else None
        _move(store, 1, to, retire_at=retire_at)
    events = len(store.history("snp-launch"))
    retire_at = T0 + timedelta(days=30) if refused is RefState.DEPRECATED else None
    with pytest.raises(Malformed) as err:
        _move(store, 1, refused, retire_at=retire_at)
    assert err.value.rule == "refvalues.state"
    assert len(store.history("snp-launch")) == events


def test_deprecation_needs_future_retire_at(db_backend: StoreBackend) -> None:
    """Deprecate needs retire_at after now; other transitions refuse a retire_at."""
    store = _store(db_backend)
    _import(store)
    with pytest.raises(Malformed):
        _move(store, 1, RefState.ACTIVE, retire_at=T0 + timedelta(days=1))
    _move(store, 1, RefState.ACTIVE)
    for retire_at in (None, T0, T0 - timedelta(days=1)):
        with pytest.raises(Malformed) as err:
            _move(store, 1, RefState.DEPRECATED, retire_at=retire_at)
        assert err.value.rule == "refvalues.state"


def test_unknown_version(db_backend: StoreBackend) -> None:
    """A transition of a version that does not exist is MALFORMED refvalues.version."""
    store = _store(db_backend)
    with pytest.raises(Malformed) as err:
        _move(store, 3, RefState.ACTIVE)
    assert err.value.rule == "refvalues.version"


def test_snapshot_follows_life_cycle(db_backend: StoreBackend) -> None:
    """Staged does not match, active does, deprecated until retire_at, retired never."""
    store = _store(db_backend)
    _import(store)
    with pytest.raises(MeasurementMismatch) as err:
        store.snapshot().match("snp-launch", GOOD, T0)
    assert "(would_match)" in err.value.reason
    assert store.snapshot().would_match("snp-launch", GOOD, T0) is not None
    _move(store, 1, RefState.ACTIVE)
    assert store.snapshot().match("snp-launch", GOOD, T0).state is RefState.ACTIVE
    retire = T0 + timedelta(days=30)
    _move(store, 1, RefState.DEPRECATED, retire_at=retire)
    snap = store.snapshot()
    assert snap.versions[0].retire_at == retire
    assert snap.match("snp-launch", GOOD, retire - timedelta(seconds=1)).state \
        is RefState.DEPRECATED
    with pytest.raises(MeasurementMismatch):
        snap.match("snp-launch", GOOD, retire)
    later = T0 + timedelta(days=2)
    _move(store, 1, RefState.RETIRED, now=later)
    [retired] = store.versions()
    assert retired.state is RefState.RETIRED and retired.retire_at == later
    with pytest.raises(MeasurementMismatch) as err:
        store.snapshot().match("snp-launch", GOOD, T0 + timedelta(days=3))
    assert "retired at" in err.value.reason


def test_generation_changes_on_other_connection(db_backend: StoreBackend) -> None:
    """Imports and transitions through another store object change generation()."""
    reader, writer = _store(db_backend), _store(db_backend)
    g0 = reader.generation()
    _import(writer)
    g1 = reader.generation()
    _move(writer, 1, RefState.ACTIVE)
    g2 = reader.generation()
    assert g0 < g1 < g2
    with pytest.raises(Malformed):
        _move(writer, 1, RefState.STAGED)
    assert reader.generation() == g2


def test_rows_are_immutable(db_backend: StoreBackend) -> None:
    """UPDATE and DELETE on versions, values and events are refused by the database."""
    store = _store(db_backend)
    _import(store)
    conn = db_backend.raw("state")
    for table in ("refset_versions", "refset_values", "refset_events"):
        with pytest.raises(RawError, match="immutable"):
            conn.execute(f"DELETE FROM {table}")
        with pytest.raises(RawError, match="immutable"):
            conn.execute(f"UPDATE {table} SET version = 9")


def _manifest(key: ec.EllipticCurvePrivateKey) -> bytes:
    payload = json.dumps({
        "kind": "ReferenceValues", "name": "snp-launch",
        "values": [{"name": "ovmf-2027.01", "value": NEXT,
                    "not_before": "2026-01-01T00:00:00Z",
                    "not_after": "2027-01-01T00:00:00Z"}],
    }).encode()
    return jwt.api_jws.PyJWS().encode(payload, key, algorithm="ES256").encode()


def test_import_manifest(db_backend: StoreBackend) -> None:
    """A signed manifest imports as STAGED with jws provenance; a bad one stores nothing."""
    store = _store(db_backend)
    key = ec.generate_private_key(ec.SECP256R1())
    provider = Provider(name="build-pipeline", public_key=key.public_key(), sets=("snp-*",))
    token = _manifest(key)
    imported = store.import_manifest(token, "snp.jws", [provider], author="secops",
                                     comment="pipeline release", now=T0)
    assert imported.state is RefState.STAGED
    assert imported.provenance == f"jws:build-pipeline:{hashlib.sha256(token).hexdigest()}"
    assert imported.values[0].not_before == datetime(2026, 1, 1, tzinfo=UTC)
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureInvalid):
        store.import_manifest(_manifest(stranger), "evil.jws", [provider], author="secops",
                              comment="c", now=T0)
    assert len(store.versions()) == 1
