"""Keyed audit checkpoints (issue 10): an attacker who can rewrite the audit database but does
not hold the audit key cannot hide an edit, a deletion or a re-hashed chain; ``verify`` names
the first bad record."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
from support.store_backends import RawConnection, StoreBackend

from broker.kek import FileBackend, FileKek
from keybroker.audit_log import AuditEntry, AuditLog, record_hash
from keybroker.errors import Malformed, Unavailable

EVERY = 10


def _backend(tmp_path: Path) -> FileBackend:
    FileKek.create(tmp_path / "kek.bin")
    backend = FileBackend(tmp_path / "kek.bin")
    assert backend.ensure_audit_key()
    return backend


def _log(db: StoreBackend, backend: FileBackend, n: int = 25) -> AuditLog:
    clock = itertools.count(1_750_000_000).__next__
    log = AuditLog(db.target("audit"), clock=lambda: float(clock()), mac=backend.audit_mac,
                   checkpoint_every=EVERY)
    for i in range(n):
        log.append(AuditEntry(request_id=f"r{i}", kind="denied", category="MEASUREMENT",
                              reason=f"reason {i}"))
    return log


def _raw(db: StoreBackend) -> RawConnection:
    conn = db.raw("audit")
    for table in ("audit", "audit_checkpoints"):
        for op in ("update", "delete"):
            conn.drop_trigger(f"{table}_no_{op}", table)  # the attacker owns the store
    return conn


def _verify_error(log: AuditLog, backend: FileBackend) -> Malformed:
    with pytest.raises(Malformed) as exc:
        log.verify_chain(mac=backend.audit_mac)
    return exc.value


def test_checkpoints_every_n_records_and_on_demand(tmp_path: Path,
                                                   db_backend: StoreBackend) -> None:
    """25 records with N=10: checkpoints 1..10 and 11..20; checkpoint() covers 21..25; the
    chain and every checkpoint verify."""
    backend = _backend(tmp_path)
    log = _log(db_backend, backend)
    assert [(c.from_seq, c.to_seq) for c in log.checkpoints()] == [(1, 10), (11, 20)]
    assert log.checkpoint() is not None and log.checkpoint() is None
    assert [(c.from_seq, c.to_seq) for c in log.checkpoints()][-1] == (21, 25)
    assert log.verify_chain(mac=backend.audit_mac) == 25


def test_edited_row_is_named(tmp_path: Path, db_backend: StoreBackend) -> None:
    """One edited record (hash not recomputed) is named by its seq."""
    backend = _backend(tmp_path)
    log = _log(db_backend, backend)
    _raw(db_backend).execute("UPDATE audit SET reason = 'nothing happened' WHERE seq = 7")
    err = _verify_error(log, backend)
    assert err.rule == "audit.chain" and "seq 7" in err.actual


def test_deleted_row_is_named(tmp_path: Path, db_backend: StoreBackend) -> None:
    """One deleted record is named by the gap it leaves."""
    backend = _backend(tmp_path)
    log = _log(db_backend, backend)
    _raw(db_backend).execute("DELETE FROM audit WHERE seq = 13")
    err = _verify_error(log, backend)
    assert err.rule == "audit.chain" and err.expected == "seq 13"


def test_rehashed_chain_without_the_key_is_named(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Record 4 edited and every hash from it on recomputed (a consistent chain): the chain
    alone passes, the checkpoint names record 4."""
    backend = _backend(tmp_path)
    log = _log(db_backend, backend)
    conn = _raw(db_backend)
    conn.execute("UPDATE audit SET reason = 'released nothing' WHERE seq = 4")
    prev = None
    for rec in log.records():
        if rec.seq < 4:
            prev = rec.hash
            continue
        digest = record_hash(rec.seq, rec.time, rec.entry, prev or rec.prev_hash)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                     [prev or rec.prev_hash, digest, rec.seq])
        prev = digest
    assert log.verify_chain() == 25  # the chain by itself is fooled
    err = _verify_error(log, backend)
    assert err.rule == "audit.checkpoint" and "seq 4 differs" in err.reason


def test_forged_checkpoint_is_named(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Rewriting a checkpoint's vouched hashes without the key breaks its MAC."""
    backend = _backend(tmp_path)
    log = _log(db_backend, backend)
    conn = _raw(db_backend)
    hashes = json.loads(conn.execute("SELECT hashes FROM audit_checkpoints WHERE to_seq = 20"
                                     )[0][0])
    hashes[2] = hashlib.sha256(b"forged").hexdigest()
    conn.execute("UPDATE audit_checkpoints SET hashes = ? WHERE to_seq = 20",
                 [json.dumps(hashes)])
    err = _verify_error(log, backend)
    assert err.rule == "audit.checkpoint" and "checkpoint 11..20 is not authentic" in err.reason


def test_another_key_does_not_verify(tmp_path: Path, db_backend: StoreBackend) -> None:
    """Checkpoints verify only under the key that wrote them."""
    log = _log(db_backend, _backend(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    err = _verify_error(log, _backend(other))
    assert "checkpoint 1..10 is not authentic" in err.reason


def test_missing_key_never_blocks_the_record(tmp_path: Path, db_backend: StoreBackend) -> None:
    """A checkpoint that cannot be written (key gone) is skipped and retried: the records are
    written, and the next checkpoint covers them once the key is back."""
    backend = _backend(tmp_path)
    log = _log(db_backend, backend, n=5)
    key = backend.audit_file.read_bytes()
    backend.audit_file.unlink()
    for i in range(10):
        log.append(AuditEntry(request_id=f"late{i}", kind="denied"))
    assert log.checkpoints() == [] and len(log.records()) == 15
    with pytest.raises(Unavailable):
        log.checkpoint()
    backend.audit_file.write_bytes(key)
    backend.audit_file.chmod(0o600)
    assert log.checkpoint() is not None
    assert log.verify_chain(mac=backend.audit_mac) == 15
