"""Shared pieces of the admin CLI tests: running ``keybroker admin`` as a real process,
service configs, simulator claims and policy documents."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker_cli.launcher import ServiceProcess, free_port, keybroker_command
from keybroker_cli.tls_cmd import init_tls
from support.paths import ROOT
from verifier.collateral.cache import CollateralStore
from verifier.result import ResultSigner
from verifier.snp.claims import SnpClaims
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

MEASUREMENT = hashlib.sha384(b"simulated guest firmware").digest()
OTHER_MEASUREMENT = hashlib.sha384(b"updated guest firmware").digest()
REPORT_DATA = hashlib.sha512(b"report data").digest()
VERIFIED_AT = datetime(2026, 3, 1, tzinfo=UTC)
MILAN_FLOOR = "{bootloader: 3, tee: 0, snp: 8, microcode: 115}"


def admin(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``keybroker admin ARGS`` in a fresh interpreter; never raises on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "keybroker_cli.main", "admin", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)


def snp_policy(name: str = "sim", *, floor: str = MILAN_FLOOR, extra: str = "",
               measurements: str | None = None) -> str:
    """An SEV-SNP appraisal policy document for the simulator's claims."""
    if measurements is None:
        measurements = f"[{MEASUREMENT.hex()}]"
    lines = ["kind: AppraisalPolicy", f"name: {name}", "platform: sev-snp", "snp:"]
    if measurements:
        lines.append(f"  measurements: {measurements}")
    lines += [f"  min_tcb: {floor}", "  allow_smt: true"]
    return "\n".join(lines) + "\n" + extra


def write_verifier_config(directory: Path, *, admins: str = "", providers: str = "",
                          policy: str | None = None, extra: str = "") -> Path:
    """A verifier config in ``directory`` (seed policy ``seed.yaml``); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "seed.yaml").write_text(policy if policy is not None else snp_policy("seed"))
    body = ['[verifier]', 'policies = ["seed.yaml"]', 'result_key = "result-key.pem"',
            'state_db = "state.db"']
    if admins:
        body.append(f"admins = {admins}")
    body.append(extra)
    body.append(providers)
    path = directory / "verifier.toml"
    path.write_text("\n".join(body) + "\n")
    return path


def write_broker_config(directory: Path, *, admins: str = "") -> Path:
    """A broker config in ``directory`` (database ``broker.db``); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    body = ["[broker]", 'database = "broker.db"']
    if admins:
        body.append(f"admins = {admins}")
    path = directory / "broker.toml"
    path.write_text("\n".join(body) + "\n")
    return path


@dataclass
class SnpLab:
    """A simulator CA and a verifier trusting it: real, verified SEV-SNP claims on demand."""

    ca: SnpTestCa
    verifier: SnpVerifier

    @classmethod
    def create(cls, directory: Path) -> SnpLab:
        ca = SnpTestCa.generate("Milan")
        ca.save(directory)
        crl = ca.write_collateral(directory / "collateral", now=VERIFIED_AT)
        trust = AmdTrustStore.pinned().with_simulator_roots([directory / "ark.pem"])
        return cls(ca, SnpVerifier(trust, CollateralStore.load([crl])))

    def claims(self, *, microcode: int = 0x73, chip: int = 0, policy: int = 0x30000,
               measurement: bytes = MEASUREMENT) -> SnpClaims:
        """Verified claims of a Milan guest with the given microcode SPL on chip number
        ``chip``."""
        tcb = bytes.fromhex("03000000000008") + bytes([microcode])
        chip_id = hashlib.sha512(b"chip %d" % chip).digest()
        sim = SnpSimulator(self.ca, measurement=measurement, reported_tcb=tcb,
                           chip_id=chip_id, policy=policy)
        raw, table = sim.attest(REPORT_DATA)
        return self.verifier.verify(raw, table, at=VERIFIED_AT)


@contextmanager
def verifier_admin(directory: Path, principals: Sequence[str], *, admins: str,
                   providers: str = "", policy: str | None = None) -> Iterator[AdminLab]:
    """A real verifier process (config in ``directory``) with its admin API over mutual TLS,
    a client certificate and profile per principal; stopped on exit."""
    tls = init_tls(directory / "tls", clients=("broker-client", *principals)).dir
    ResultSigner.generate().write_private_key(directory / "result-key.pem")
    port = free_port()
    extra = (f'tls_cert = "{tls.cert("verifier")}"\ntls_key = "{tls.key("verifier")}"\n'
             f'tls_client_ca = "{tls.ca}"\nadmin_listen = "127.0.0.1:{port}"\n'
             f'admin_client_ca = "{tls.ca}"\nlisten = "127.0.0.1:0"\nworkers = 1\n')
    config = write_verifier_config(directory, admins=admins, providers=providers,
                                   policy=policy, extra=extra)
    profiles = {}
    for who in principals:
        profiles[who] = directory / f"{who}.profile.toml"
        profiles[who].write_text(f'ca = "{tls.ca}"\ncert = "{tls.cert(who)}"\n'
                                 f'key = "{tls.key(who)}"\nverifier = "127.0.0.1:{port}"\n')
    service = ServiceProcess.start("verifier", keybroker_command(
        "verifier", "serve", "--config", str(config)), log_path=directory / "verifier.log")
    try:
        yield AdminLab(config, profiles)
    finally:
        service.stop()


@dataclass(frozen=True)
class AdminLab:
    """A verifier config and the admin profile of each principal."""

    config: Path
    profiles: dict[str, Path]


def store_policy(config: Path, document: Path, *, comment: str) -> None:
    """Put a policy version in force the way the admin API does (direct store write: set-up
    for tests of the read-only commands)."""
    from keybroker.policy_store import PolicyStore  # noqa: PLC0415
    from verifier.policy.compile import load_policy  # noqa: PLC0415

    policy = load_policy(document)
    store = PolicyStore(config.parent / "state.db")
    try:
        store.apply("AppraisalPolicy", policy.name, document.read_bytes(), author="secops",
                    comment=comment, now=datetime.now(UTC))
    finally:
        store.close()


def store_references(config: Path, document: Path, *, comment: str) -> None:
    """Stage a reference-value set the way the admin API does (test set-up)."""
    from verifier.reference.store import ReferenceStore  # noqa: PLC0415

    store = ReferenceStore(config.parent / "state.db")
    try:
        store.import_admin(document.read_bytes(), str(document), author="secops",
                           comment=comment, now=datetime.now(UTC))
    finally:
        store.close()
