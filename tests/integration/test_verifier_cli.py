"""`keybroker verifier` subcommands: init, policy check, serve (real process, SIGTERM)."""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.paths import ROOT

from attester_agent.simulator.snp import SnpTestCa
from keybroker_cli.verifier_cmd import register
from verifier.result import ResultSigner

# Runs only the verifier's command group, so the test does not depend on the other groups.
RUNNER = (
    "import argparse, logging, sys\n"
    "from keybroker_cli.verifier_cmd import register\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
    "p = argparse.ArgumentParser(prog='keybroker')\n"
    "register(p.add_subparsers(required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="keybroker")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    result: int = args.func(args)
    return result


@pytest.mark.parametrize(("extra", "alg", "crv"), [((), "ES256", "P-256"),
                                                  (("--alg", "ES384"), "ES384", "P-384")])
def test_init_writes_key_0600_and_jwks(tmp_path: Path, extra: tuple[str, ...], alg: str,
                                       crv: str) -> None:
    """init writes result-key.pem (0600) and a public-only JWKS with the matching kid."""
    assert run("verifier", "init", "--dir", str(tmp_path / "v"), *extra) == 0
    key = tmp_path / "v" / "result-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signer = ResultSigner.load(key)
    assert signer.alg == alg
    jwks = json.loads((tmp_path / "v" / "verifier-jwks.json").read_text())
    assert jwks["keys"][0]["kid"] == signer.kid
    assert jwks["keys"][0]["crv"] == crv
    assert "d" not in jwks["keys"][0]


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    """A second init in the same directory fails and keeps the existing key."""
    assert run("verifier", "init", "--dir", str(tmp_path)) == 0
    before = (tmp_path / "result-key.pem").read_bytes()
    assert run("verifier", "init", "--dir", str(tmp_path)) == 2
    assert (tmp_path / "result-key.pem").read_bytes() == before


def test_policy_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """policy check prints name@version for a valid file and exits 1 for an invalid one."""
    assert run("verifier", "policy", "check", str(ROOT / "config/policies/snp-demo.yaml")) == 0
    assert capsys.readouterr().out.startswith("snp-demo sha256:")
    bad = tmp_path / "bad.yaml"
    good = (ROOT / "config/policies/snp-demo.yaml").read_text()
    assert "allow_debug: false" in good
    bad.write_text(good.replace("allow_debug: false", "allow_debug: 1"))
    assert run("verifier", "policy", "check", str(bad)) == 1
    err = capsys.readouterr().err
    line = good.splitlines().index(next(x for x in good.splitlines() if "allow_debug:" in x)) + 1
    assert "MALFORMED" in err and f"bad.yaml:{line}:" in err and "boolean" in err


def _config(tmp_path: Path, extra: str = "") -> Path:
    run("verifier", "init", "--dir", str(tmp_path))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "demo.yaml").write_text(
        (ROOT / "config/policies/snp-demo.yaml").read_text())
    path = tmp_path / "verifier.toml"
    path.write_text('[verifier]\nlisten = "127.0.0.1:0"\npolicies = ["policies/demo.yaml"]\n'
                    f'result_key = "result-key.pem"\n{extra}')
    return path


def _serve(config: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, "verifier", "serve", "--config", str(config),
         "--insecure-plaintext", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _first_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    return ""


@pytest.mark.integration
def test_serve_prints_ready_line_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    """serve prints one 'verifier listening on HOST:PORT' line, is SERVING, exits 0 on SIGTERM."""
    proc = _serve(_config(tmp_path))
    try:
        line = _first_line(proc)
        assert line.startswith("verifier listening on 127.0.0.1:"), line
        address = line.strip().rsplit(" ", 1)[1]
        assert int(address.rsplit(":", 1)[1]) > 0
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service="keybroker.v1.Verifier"),
                               timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out == ""  # nothing but the one ready line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.integration
def test_serve_refuses_simulator_roots_without_flag(tmp_path: Path) -> None:
    """Row 58: serve with simulator_roots but without --insecure-simulator exits 2."""
    (tmp_path / "ark.pem").write_text("not even read")
    proc = _serve(_config(tmp_path, 'simulator_roots = ["ark.pem"]\n'))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == ""
    assert "refusing to start" in err and "--insecure-simulator" in err


@pytest.mark.integration
def test_serve_insecure_simulator_warns_loudly(tmp_path: Path) -> None:
    """With --insecure-simulator and a simulator root, serve starts and logs a loud WARNING."""
    SnpTestCa.generate("Milan").save(tmp_path / "sim")
    proc = _serve(_config(tmp_path, 'simulator_roots = ["sim/ark.pem"]\n'),
                  "--insecure-simulator")
    try:
        assert _first_line(proc).startswith("verifier listening on 127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "WARNING" in err and "INSECURE" in err and "--insecure-simulator" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
