"""Policy store: immutable versions, rollback, refusals, generation, concurrent processes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.paths import ROOT
from support.store_backends import RawError, StoreBackend

from keybroker.database import PostgresTarget
from keybroker.errors import Category, Malformed
from keybroker.policy_store import PolicyStore
from keybroker.postgres_database import write_lock_key

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KIND = "AppraisalPolicy"
DOC_A = b"kind: AppraisalPolicy\nname: snp-demo\nplatform: sev-snp\n# a\n"
DOC_B = b"kind: AppraisalPolicy\nname: snp-demo\nplatform: sev-snp\n# b\n"


def _store(db: StoreBackend) -> PolicyStore:
    return PolicyStore(db.target("state"))


def test_apply_assigns_versions_and_in_force_is_latest(db_backend: StoreBackend) -> None:
    """Versions count from 1 per name; in_force returns the highest of each name."""
    store = _store(db_backend)
    v1 = store.apply(KIND, "snp-demo", DOC_A, author="secops", comment="first", now=T0)
    v2 = store.apply(KIND, "snp-demo", DOC_B, author="secops", comment="second",
                     now=T0 + timedelta(minutes=1))
    other = store.apply(KIND, "tdx-demo", DOC_A, author="secops", comment="tdx", now=T0)
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert v1.action == "apply" and v1.rollback_of is None
    in_force = store.in_force(KIND)
    assert sorted(in_force) == ["snp-demo", "tdx-demo"]
    assert in_force["snp-demo"] == v2
    assert store.in_force("ReleaseRules") == {}
    assert store.get(KIND, "snp-demo", 1) == v1
    assert [v.version for v in store.history(KIND, "snp-demo")] == [1, 2]


def test_version_round_trips_exactly(db_backend: StoreBackend) -> None:
    """Stored bytes, digest, author, comment and time come back as given (UTC)."""
    store = _store(db_backend)
    when = datetime(2026, 3, 1, 13, 30, 15, 250000, tzinfo=timezone(timedelta(hours=1)))
    stored = store.apply(KIND, "p", DOC_A, author="secops", comment="why", now=when)
    again = PolicyStore(db_backend.target("state")).get(KIND, "p", 1)
    assert again == stored
    assert again.document == DOC_A
    assert again.created_at == when and again.created_at.tzinfo is UTC
    assert again.digest == hashlib.sha256(DOC_A).hexdigest()


def test_unchanged_document_refused(db_backend: StoreBackend) -> None:
    """Applying the document already in force is MALFORMED policy.unchanged; nothing appended."""
    store = _store(db_backend)
    store.apply(KIND, "p", DOC_A, author="secops", comment="first", now=T0)
    with pytest.raises(Malformed) as err:
        store.apply(KIND, "p", DOC_A, author="secops", comment="again", now=T0)
    assert err.value.category is Category.MALFORMED
    assert err.value.rule == "policy.unchanged"
    assert len(store.history(KIND, "p")) == 1


def test_author_and_comment_required(db_backend: StoreBackend) -> None:
    """An empty or blank author or comment is refused."""
    store = _store(db_backend)
    with pytest.raises(Malformed) as err:
        store.apply(KIND, "p", DOC_A, author=" ", comment="c", now=T0)
    assert err.value.rule == "policy.author"
    with pytest.raises(Malformed) as err:
        store.apply(KIND, "p", DOC_A, author="secops", comment="", now=T0)
    assert err.value.rule == "policy.comment"
    assert store.history(KIND, "p") == []


def test_rollback_appends_old_document(db_backend: StoreBackend) -> None:
    """Rollback creates a new version carrying the old document and naming it."""
    store = _store(db_backend)
    store.apply(KIND, "p", DOC_A, author="secops", comment="a", now=T0)
    store.apply(KIND, "p", DOC_B, author="secops", comment="b", now=T0)
    back = store.rollback(KIND, "p", 1, author="secops", comment="b broke prod", now=T0)
    assert back.version == 3
    assert back.action == "rollback" and back.rollback_of == 1
    assert back.document == DOC_A
    assert store.in_force(KIND)["p"] == back
    assert [v.version for v in store.history(KIND, "p")] == [1, 2, 3]


def test_rollback_to_in_force_document_refused(db_backend: StoreBackend) -> None:
    """Rolling back to a version whose document is already in force is refused."""
    store = _store(db_backend)
    store.apply(KIND, "p", DOC_A, author="secops", comment="a", now=T0)
    with pytest.raises(Malformed) as err:
        store.rollback(KIND, "p", 1, author="secops", comment="noop", now=T0)
    assert err.value.rule == "policy.unchanged"


def test_get_missing_version(db_backend: StoreBackend) -> None:
    """An absent version (and a rollback to it) is MALFORMED policy.version."""
    store = _store(db_backend)
    with pytest.raises(Malformed) as err:
        store.get(KIND, "p", 1)
    assert err.value.rule == "policy.version"
    with pytest.raises(Malformed):
        store.rollback(KIND, "p", 7, author="secops", comment="c", now=T0)


def test_seed_only_when_name_absent(db_backend: StoreBackend) -> None:
    """Seed stores version 1 once; a second seed (or after apply) changes nothing."""
    store = _store(db_backend)
    seeded = store.seed(KIND, "p", DOC_A, source="config/snp.yaml", now=T0)
    assert seeded is not None and seeded.version == 1 and seeded.action == "seed"
    assert "config/snp.yaml" in seeded.comment and seeded.author
    assert store.seed(KIND, "p", DOC_B, source="config/snp.yaml", now=T0) is None
    assert store.in_force(KIND)["p"].document == DOC_A


def test_versions_are_immutable_rows(db_backend: StoreBackend) -> None:
    """UPDATE and DELETE on the version table are refused by the database itself."""
    store = _store(db_backend)
    store.apply(KIND, "p", DOC_A, author="secops", comment="a", now=T0)
    conn = db_backend.raw("state")
    with pytest.raises(RawError, match="immutable"):
        conn.execute("UPDATE policy_versions SET document = ?", [b"\x00"])
    with pytest.raises(RawError, match="immutable"):
        conn.execute("DELETE FROM policy_versions")


def test_generation_sees_other_connections(db_backend: StoreBackend) -> None:
    """A write through another store object (another connection) changes generation()."""
    reader = _store(db_backend)
    writer = _store(db_backend)
    before = reader.generation()
    assert reader.generation() == before  # stable without writes
    writer.apply(KIND, "p", DOC_A, author="secops", comment="a", now=T0)
    after = reader.generation()
    assert after > before
    writer.apply(KIND, "p", DOC_B, author="secops", comment="b", now=T0)
    assert reader.generation() > after


def test_refused_apply_leaves_generation(db_backend: StoreBackend) -> None:
    """A refused apply does not change the generation."""
    store = _store(db_backend)
    store.apply(KIND, "p", DOC_A, author="secops", comment="a", now=T0)
    gen = store.generation()
    with pytest.raises(Malformed):
        store.apply(KIND, "p", DOC_A, author="secops", comment="a", now=T0)
    assert store.generation() == gen


_CHILD = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from keybroker.database import database_target
    from keybroker.policy_store import PolicyStore
    where, schema, tag, ready = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    store = PolicyStore(database_target(where, Path("/"), schema), busy_timeout_seconds=20.0)
    ready.touch()
    for i in range(15):
        doc = f"kind: AppraisalPolicy\\n# {tag} {i}\\n".encode()
        store.apply("AppraisalPolicy", "shared", doc, author=tag, comment=f"change {i}",
                    now=datetime.now(UTC))
        time.sleep(0.002)
""")


def test_two_processes_apply_concurrently(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Two OS processes (replicas) applying at once get distinct, gap-free version numbers."""
    db = db_backend.target("state")
    PolicyStore(db)  # create the schema first
    root = ROOT
    # Hold the write lock so both children block inside their first apply, then let go:
    # both have read nothing yet and race for version 1.
    holder = db_backend.raw("state")
    if isinstance(db, PostgresTarget):
        holder.execute("SELECT pg_advisory_lock(?)", [write_lock_key(db.schema)])
        where, schema = db.url, db.schema
    else:
        holder.execute("BEGIN IMMEDIATE")
        where, schema = str(db), ""
    tags = ("build-pipeline", "secops")
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, where, schema, tag,
                               str(tmp_path / f"{tag}.ready")], cwd=root) for tag in tags]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{tag}.ready").exists() for tag in tags):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    time.sleep(0.3)
    if isinstance(db, PostgresTarget):
        holder.execute("SELECT pg_advisory_unlock(?)", [write_lock_key(db.schema)])
    else:
        holder.execute("COMMIT")
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    history = PolicyStore(db).history(KIND, "shared")
    assert [v.version for v in history] == list(range(1, 31))
    assert len({v.document for v in history}) == 30
    assert {v.author for v in history} == set(tags)
