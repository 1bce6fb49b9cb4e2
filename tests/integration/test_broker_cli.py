"""`keybroker broker` CLI: init, secret put/list, audit list/verify, serve and its guards."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.broker import EarSigner, write_config

from broker.config import load_config
from broker.kek import FileBackend
from keybroker.audit_log import AuditEntry, AuditLog, record_hash
from keybroker.errors import Category, Malformed
from keybroker_cli.broker_cmd import register

DRIVER = (
    "import argparse, logging, sys\n"
    "from keybroker_cli.broker_cmd import register\n"
    "p = argparse.ArgumentParser(prog='keybroker')\n"
    "register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
    "sys.exit(a.func(a))\n"
)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="keybroker")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_config(tmp_path, verifier="127.0.0.1:1", signer=EarSigner(), init_kek=False)
    return tmp_path / "broker.toml"


def test_init_creates_kek_and_databases(config: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    """init creates a 0600 KEK and both databases; a second init keeps the KEK."""
    assert cli("broker", "init", "--config", str(config)) == 0
    kek = config.parent / "kek.bin"
    assert kek.stat().st_mode & 0o777 == 0o600
    before = kek.read_bytes()
    assert (config.parent / "broker.db").exists()
    assert (config.parent / "broker-audit.db").exists()
    assert cli("broker", "init", "--config", str(config)) == 0
    assert kek.read_bytes() == before
    assert "kept" in capsys.readouterr().out


def test_init_refuses_loose_kek(config: Path) -> None:
    """A pre-existing KEK readable by others makes init fail (exit 1)."""
    cli("broker", "init", "--config", str(config))
    (config.parent / "kek.bin").chmod(0o644)
    assert cli("broker", "init", "--config", str(config)) == 1


def test_secret_put_list_cas(config: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """put from file and stdin, CAS conflict exits 1, list shows ids/versions never values."""
    cli("broker", "init", "--config", str(config))
    value = config.parent / "v.bin"
    value.write_bytes(b"top-secret-value-1")
    assert cli("broker", "secret", "put", "--config", str(config), "--key-id", "demo/a",
               "--file", str(value)) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"top-secret-value-2")))
    assert cli("broker", "secret", "put", "--config", str(config), "--key-id", "demo/a",
               "--stdin", "--expect-version", "1") == 0
    assert cli("broker", "secret", "put", "--config", str(config), "--key-id", "demo/a",
               "--file", str(value), "--expect-version", "1") == 1
    capsys.readouterr()
    assert cli("broker", "secret", "list", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert [line.split("\t")[:2] for line in out.splitlines()] == [["demo/a", "1"],
                                                                    ["demo/a", "2"]]
    assert "top-secret" not in out


def test_audit_list_and_verify(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """audit list prints records (JSON too); verify passes, then fails after tampering."""
    cli("broker", "init", "--config", str(config))
    cfg = load_config(config)
    log = AuditLog(cfg.audit_database, clock=lambda: 1.0)
    log.append(AuditEntry(request_id="r1", kind="denied", category="FRESHNESS",
                          reason="challenge consumed"))
    capsys.readouterr()
    assert cli("broker", "audit", "list", "--config", str(config), "--json") == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert (record["kind"], record["category"], record["seq"]) == ("denied", "FRESHNESS", 1)
    assert cli("broker", "audit", "list", "--config", str(config)) == 0
    assert "FRESHNESS" in capsys.readouterr().out
    assert cli("broker", "audit", "verify", "--config", str(config)) == 0
    assert "1 records" in capsys.readouterr().out
    conn = sqlite3.connect(str(cfg.audit_database), isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET category = 'UNAVAILABLE'")
    conn.close()
    assert cli("broker", "audit", "verify", "--config", str(config)) == 1
    assert "INVALID" in capsys.readouterr().err


def test_bad_config_is_usage_error(tmp_path: Path) -> None:
    """A config with an unknown key exits 2; load_config says MALFORMED."""
    path = tmp_path / "broker.toml"
    path.write_text('[broker]\nlisten = "127.0.0.1:0"\nlisen = "typo"\n')
    assert cli("broker", "init", "--config", str(path)) == 2
    with pytest.raises(Malformed) as exc:
        load_config(path)
    assert exc.value.category is Category.MALFORMED
    path.write_text('[broker]\nverifier_alg = "HS256"\n')
    with pytest.raises(Malformed):
        load_config(path)
    path.write_text("[broker]\nchallenge_ttl_seconds = true\n")
    with pytest.raises(Malformed):
        load_config(path)


def _serve(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``broker serve`` in plaintext on loopback (lifecycle tests; TLS: test_tls_processes)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, "broker", "serve", "--config",
                             str(config), "--insecure-plaintext", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def _first_line(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0].decode() if box else ""


def test_serve_prints_address_and_stops_on_sigterm(config: Path) -> None:
    """serve prints 'broker listening on HOST:PORT' (real port for :0), serves health (NOT
    SERVING: no verifier runs at the configured address), and exits 0 on SIGTERM."""
    cli("broker", "init", "--config", str(config))
    proc = _serve(config)
    try:
        line = _first_line(proc)
        assert line.startswith("broker listening on 127.0.0.1:"), line
        port = int(line.strip().rsplit(":", 1)[1])
        assert port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="keybroker.v1.KeyBroker"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_insecure_config_refused_without_flag(tmp_path: Path) -> None:
    """accept_insecure_results = true: exit 2 without --insecure-simulator; with it the
    broker starts and logs a loud WARNING (hostile row 58)."""
    write_config(tmp_path, verifier="127.0.0.1:1", signer=EarSigner(), insecure=True)
    config = tmp_path / "broker.toml"
    done = subprocess.run([sys.executable, "-c", DRIVER, "broker", "serve", "--config",
                           str(config), "--insecure-plaintext"], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert b"REFUSING TO START" in done.stderr
    assert done.stdout == b""
    proc = _serve(config, "--insecure-simulator")
    try:
        assert _first_line(proc).startswith("broker listening on 127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert b"WARNING" in err and b"INSECURE" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_loose_kek(config: Path) -> None:
    """serve with a group-readable KEK file fails to start (exit 1), printing nothing."""
    cli("broker", "init", "--config", str(config))
    (config.parent / "kek.bin").chmod(0o640)
    done = subprocess.run([sys.executable, "-c", DRIVER, "broker", "serve", "--config",
                           str(config), "--insecure-plaintext"], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"kek" in done.stderr.lower()


def test_audit_verify_names_tampering_and_export_carries_checkpoints(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit verify` passes on an intact log (naming its keyed checkpoints), names the record
    of an edit re-hashed without the audit key, and `audit export` writes JSON Lines with the
    checkpoints after the records they end on."""
    cli("broker", "init", "--config", str(config))
    loaded = load_config(config)
    backend = FileBackend(loaded.kek_file)
    log = AuditLog(loaded.audit_database, clock=time.time, mac=backend.audit_mac,
                   checkpoint_every=4)
    for i in range(9):
        log.append(AuditEntry(request_id=f"r{i}", kind="denied", reason=f"reason {i}"))
    log.checkpoint()
    capsys.readouterr()
    assert cli("broker", "audit", "verify", "--config", str(config)) == 0
    assert "3 keyed checkpoint(s) verified, covering records 1..9" in capsys.readouterr().out
    out = tmp_path / "audit.jsonl"
    assert cli("broker", "audit", "export", "--config", str(config), "--out", str(out)) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [entry["type"] for entry in lines][:5] == ["record"] * 4 + ["checkpoint"]
    assert lines[4]["to_seq"] == 4 and len(lines) == 9 + 3
    conn = sqlite3.connect(loaded.audit_database, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET reason = 'nothing to see' WHERE seq = 6")
    prev = None
    for rec in log.records():
        if rec.seq >= 6:
            digest = record_hash(rec.seq, rec.time, rec.entry, prev or rec.prev_hash)
            conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                         [prev or rec.prev_hash, digest, rec.seq])
            prev = digest
        else:
            prev = rec.hash
    capsys.readouterr()
    assert cli("broker", "audit", "verify", "--config", str(config)) == 1
    assert "audit record seq 6 differs" in capsys.readouterr().err
