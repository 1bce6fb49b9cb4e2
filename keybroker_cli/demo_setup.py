"""Set-up of a demo (and test/bench) deployment on loopback: simulator test CAs, verifier keys,
policies and collateral, the broker database, KEK, release rules and the demo secret.

Invariants:
- Simulator roots and simulator collateral exist only inside the layout's directory; the
  verifier config names them under ``simulator_roots`` / ``simulator_intel_roots``, which the
  verifier refuses unless started with ``--insecure-simulator``.
- Policies are YAML appraisal policy documents (schema ``appraisal-policy``). Every SNP / TDX
  policy written here requires init-data (``workload.require_init_data``: its digest in
  HOST_DATA / MRCONFIGID), every policy a launch measurement (SNP MEASUREMENT, TDX MRTD, SGX
  MRENCLAVE); TDX policies may also require measured container images. Nothing here is a
  production setup.
- ``DEMO_INIT_DATA`` is an init-data document (TOML ``[workload]`` name and images) whose
  image is ``DEMO_IMAGE``.
- Admin actions go through the real CLI in child processes (``run_cli``), as an operator would.
- Transport is TLS everywhere with a throwaway CA in ``<root>/tls`` (``keybroker tls init``
  layout): agents present the ``demo-agent`` client certificate to the broker (mutual TLS),
  the broker presents ``broker-client`` to the verifier, which accepts only that name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import grpc

from attester_agent.collectors.base import Collector
from attester_agent.collectors.simulator import SimulatorCollector
from attester_agent.collectors.simulator_dcap import SgxSimulatorCollector, TdxSimulatorCollector
from attester_agent.simulator.dcap import DcapTestCa
from attester_agent.simulator.nitro import NitroTestCa
from attester_agent.simulator.snp import SnpTestCa
from keybroker.strict_yaml import dump_yaml
from keybroker.tls import certificate_digest, client_credentials, load_certificates
from keybroker_cli import demo_nitro, demo_tpm
from keybroker_cli.launcher import keybroker_command
from keybroker_cli.tls_cmd import DEFAULT_CLIENTS, TlsDir, init_tls

Tee = Literal["snp", "tdx", "sgx", "tpm", "nitro"]
TEES: tuple[Tee, ...] = ("snp", "tdx", "sgx", "tpm", "nitro")
DEMO_KEY_ID = "demo/db-password"
DEMO_AGENT = "demo-agent"  # client certificate name of the demo's agents
DEMO_MEASUREMENT = hashlib.sha384(b"keybroker demo guest image v1").digest()
WRONG_MEASUREMENT = hashlib.sha384(b"keybroker demo guest image v1 (tampered)").digest()
DEMO_MRTD = hashlib.sha384(b"keybroker demo TD firmware v1").digest()
WRONG_MRTD = hashlib.sha384(b"keybroker demo TD firmware v1 (tampered)").digest()
DEMO_MRENCLAVE = hashlib.sha256(b"keybroker demo enclave v1").digest()
WRONG_MRENCLAVE = hashlib.sha256(b"keybroker demo enclave v1 (tampered)").digest()
DEMO_IMAGE = "sha256:" + hashlib.sha256(b"keybroker demo container image v1").hexdigest()
DEMO_INIT_DATA = (b'[workload]\nname = "demo"\nimages = ["' + DEMO_IMAGE.encode() + b'"]\n'
                  b'\n[agent]\npolicy = "default"\n')


@dataclass(frozen=True)
class DemoLayout:
    """Where the demo keeps its files; ``broker_settings`` are extra ``[broker]`` lines (for
    example a PKCS#11 KEK) written into every broker config of this layout."""

    root: Path
    broker_settings: str = ""

    @property
    def sim(self) -> Path:
        return self.root / "sim"

    @property
    def verifier(self) -> Path:
        return self.root / "verifier"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def verifier_config(self) -> Path:
        return self.verifier / "verifier.toml"

    @property
    def broker_config(self) -> Path:
        return self.broker / "broker.toml"

    @property
    def init_data(self) -> Path:
        return self.root / "init-data.toml"

    @property
    def collateral(self) -> Path:
        return self.verifier / "collateral"

    @property
    def dcap_root(self) -> Path:
        return self.sim / "dcap" / "root.pem"

    @property
    def tls(self) -> TlsDir:
        """The throwaway CA and certificates (``keybroker tls init`` layout)."""
        return TlsDir(self.root / "tls")


@dataclass(frozen=True)
class PolicySpec:
    """An appraisal policy for the simulator and the release rule that requires it.

    ``measurement`` is the launch measurement of the platform (SNP MEASUREMENT, TDX MRTD,
    SGX MRENCLAVE). ``grace_until`` is an RFC 3339 instant with a time zone. ``workload`` is
    merged into the policy's ``workload:`` section (SNP and TDX policies always require
    init-data); ``conditions`` are ``conditions:`` entries (name, when, category, message);
    ``references`` are ``(claim, set)`` reference-value bindings."""

    name: str
    keys: str
    measurement: bytes
    min_tcb: tuple[tuple[str, int], ...] = (
        ("bootloader", 0), ("tee", 0), ("snp", 0), ("microcode", 0))
    tee: Tee = "snp"
    images: tuple[str, ...] = ()
    grace_until: str | None = None
    advisories: tuple[str, ...] = ()
    accept_warning: bool = False
    workload: Mapping[str, object] | None = None
    conditions: tuple[Mapping[str, object], ...] = ()
    references: tuple[tuple[str, str], ...] = ()


def run_cli(*args: str) -> str:
    """Run a keybroker CLI command in a child process; raise with its output on failure."""
    done = subprocess.run(keybroker_command(*args), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"keybroker {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return done.stdout


def default_policy(tee: Tee) -> PolicySpec:
    """The demo policy of ``tee`` (TDX: the demo image must have been measured)."""
    demo = DEMO_TEES[tee]
    return PolicySpec(demo.policy_name, "demo/*", demo.measurement, tee=tee, images=demo.images)


def prepare(layout: DemoLayout, *, challenge_ttl: int = 60,
            extra_policies: Sequence[PolicySpec] = (), tee: Tee = "snp") -> bytes:
    """Generate the simulator CAs (and DCAP collateral), verifier keys and policies, broker
    database, KEK and the demo secret; returns the secret. ``extra_policies`` add policies
    (and their rules); the first policy is the demo policy of ``tee``."""
    for path in (layout.sim, layout.verifier, layout.broker, layout.verifier / "policies"):
        path.mkdir(parents=True, exist_ok=True)
    init_tls(layout.tls.root, clients=(*DEFAULT_CLIENTS, DEMO_AGENT))
    snp = SnpTestCa.generate()
    snp.save(layout.sim)
    snp.write_collateral(layout.collateral, now=datetime.now(UTC))
    dcap = DcapTestCa.generate()
    dcap.save(layout.dcap_root.parent)
    dcap.write_collateral(layout.collateral, now=datetime.now(UTC))
    NitroTestCa.generate().save(layout.sim / "nitro")
    layout.init_data.write_bytes(DEMO_INIT_DATA)
    run_cli("verifier", "init", "--dir", str(layout.verifier))
    specs = [default_policy(tee), *extra_policies]
    tpm_roots = (demo_tpm.ek_roots(layout.sim, (demo_tpm.DEMO_KERNEL, demo_tpm.WRONG_KERNEL))
                 if any(spec.tee == "tpm" for spec in specs) else [])
    for spec in specs:
        write_policy(layout, spec)
    policies = ", ".join(f'"policies/{p.name}.yaml"' for p in specs)
    layout.verifier_config.write_text(
        "[verifier]\n"
        'listen = "127.0.0.1:0"\n'
        f"policies = [{policies}]\n"
        'collateral = ["collateral"]\n'
        'result_key = "result-key.pem"\n'
        "result_ttl_seconds = 60\n"
        'audience = "keybroker-broker"\n'
        f'simulator_roots = ["{layout.sim / "ark.pem"}"]\n'
        f'simulator_intel_roots = ["{layout.dcap_root}"]\n'
        f"simulator_tpm_roots = [{', '.join(f'{str(p)!r}' for p in tpm_roots)}]\n"
        f'simulator_nitro_roots = ["{layout.sim / "nitro" / "root.pem"}"]\n'
        f'tls_cert = "{layout.tls.cert("verifier")}"\n'
        f'tls_key = "{layout.tls.key("verifier")}"\n'
        f'tls_client_ca = "{layout.tls.ca}"\n'
        'allowed_clients = ["broker-client"]\n'
    )
    (layout.broker / "release-rules.yaml").write_text(
        "kind: ReleaseRules\nname: release-rules\nrules:\n" + "".join(
            f'  - name: {spec.name}-keys\n    keys: "{spec.keys}"\n    policy: {spec.name}\n'
            f"    accept_warning: {'true' if spec.accept_warning else 'false'}\n"
            for spec in specs))
    write_broker_config(layout, "127.0.0.1:1", challenge_ttl=challenge_ttl)
    run_cli("broker", "init", "--config", str(layout.broker_config))
    secret = b"demo-db-password-" + secrets.token_hex(16).encode()
    put_secret(layout, DEMO_KEY_ID, secret)
    return secret


def _snp_section(spec: PolicySpec) -> dict[str, object]:
    return {
        "measurements": [spec.measurement.hex()],
        "min_tcb": dict(spec.min_tcb),
        "allow_debug": False,
        "allowed_vmpls": [0],
        "allow_migration_agent": False,
        "allow_smt": True,
    }


def _tcb_fields(spec: PolicySpec) -> dict[str, object]:
    out: dict[str, object] = {"accepted_tcb_statuses": ["UpToDate"]}
    if spec.advisories:  # an empty list is refused: absent means none allowed
        out["allowed_advisories"] = list(spec.advisories)
    if spec.grace_until is not None:
        out["out_of_date_grace_until"] = datetime.fromisoformat(
            spec.grace_until.replace("Z", "+00:00"))
    return out


def _tdx_section(spec: PolicySpec) -> dict[str, object]:
    section: dict[str, object] = {"mrtd": [spec.measurement.hex()], **_tcb_fields(spec)}
    if spec.images:
        section["required_images"] = list(spec.images)
    return section


def _sgx_section(spec: PolicySpec) -> dict[str, object]:
    return {"mrenclave": [spec.measurement.hex()], **_tcb_fields(spec)}


def _snp_collector(sim: Path, measurement: bytes, init_data: bytes) -> Collector:
    return SimulatorCollector(sim, insecure=True, measurement=measurement, init_data=init_data)


def _tdx_collector(sim: Path, measurement: bytes, init_data: bytes) -> Collector:
    return TdxSimulatorCollector(sim, insecure=True, mr_td=measurement, init_data=init_data)


def _sgx_collector(sim: Path, measurement: bytes, init_data: bytes) -> Collector:
    del init_data  # an enclave has no init-data register
    return SgxSimulatorCollector(sim, insecure=True, mr_enclave=measurement)


@dataclass(frozen=True)
class DemoTee:
    """How the demo runs one simulated TEE: its policy, the launch measurement that policy
    accepts (and a tampered one it refuses), and the agent's simulator."""

    platform: str  # the policy's ``platform``
    display_name: str
    policy_name: str
    measurement: bytes
    wrong_measurement: bytes
    binds_init_data: bool
    images: tuple[str, ...]  # images the policy requires measured into the runtime register
    section: Callable[[PolicySpec], dict[str, object]]
    agent_args: Callable[[Path, bytes], tuple[str, ...]]  # (simulator dir, measurement)
    collector: Callable[[Path, bytes, bytes], Collector]  # (simulator dir, measurement, init)


# The demo's table of TEEs (``keybroker demo --tee``).
def _flags(*flags: str) -> Callable[[Path, bytes], tuple[str, ...]]:
    """Agent flags followed by the measurement's hex."""
    return lambda sim, measurement: (*flags, measurement.hex())


def _tpm_section(spec: PolicySpec) -> dict[str, object]:
    return demo_tpm.tpm_section(spec.measurement)


DEMO_TEES: Mapping[Tee, DemoTee] = {
    "snp": DemoTee("sev-snp", "SEV-SNP", "snp-demo", DEMO_MEASUREMENT, WRONG_MEASUREMENT,
                   True, (), _snp_section, _flags("--sim-measurement"), _snp_collector),
    "tdx": DemoTee("tdx", "TDX", "tdx-demo", DEMO_MRTD, WRONG_MRTD, True, (DEMO_IMAGE,),
                   _tdx_section, _flags("--sim-tee", "tdx", "--sim-mrtd"), _tdx_collector),
    "sgx": DemoTee("sgx", "SGX", "sgx-demo", DEMO_MRENCLAVE, WRONG_MRENCLAVE, False, (),
                   _sgx_section, _flags("--sim-tee", "sgx", "--sim-mrenclave"), _sgx_collector),
    # The measurement is the booted kernel's digest (PCR 4); the machines are real swtpms.
    "tpm": DemoTee("tpm", "TPM 2.0 (swtpm)", "tpm-demo", demo_tpm.DEMO_KERNEL,
                   demo_tpm.WRONG_KERNEL, False, (), _tpm_section, demo_tpm.agent_args,
                   demo_tpm.tpm_collector),
    # The measurement is the enclave image's PCR0 (PCR1/2 follow from it); init-data in PCR16.
    "nitro": DemoTee("nitro", "AWS Nitro Enclaves", "nitro-demo", demo_nitro.DEMO_IMAGE_PCR0,
                     demo_nitro.WRONG_IMAGE_PCR0, True, (),
                     lambda spec: demo_nitro.nitro_section(spec.measurement),
                     _flags("--sim-tee", "nitro", "--sim-measurement"),
                     demo_nitro.nitro_collector),
}


def policy_document(spec: PolicySpec) -> bytes:
    """The YAML appraisal policy document for ``spec``."""
    demo = DEMO_TEES[spec.tee]
    doc: dict[str, object] = {"kind": "AppraisalPolicy", "name": spec.name,
                              "platform": demo.platform, spec.tee: demo.section(spec)}
    workload: dict[str, object] = {"require_init_data": True} if demo.binds_init_data else {}
    workload.update(spec.workload or {})
    if workload:
        doc["workload"] = workload
    if spec.references:
        doc["reference_values"] = [{"claim": claim, "set": name}
                                   for claim, name in spec.references]
    if spec.conditions:
        doc["conditions"] = [dict(c) for c in spec.conditions]
    return dump_yaml(doc)


def write_policy(layout: DemoLayout, spec: PolicySpec) -> None:
    """Write the verifier policy file ``policies/<name>.yaml`` for ``spec``."""
    (layout.verifier / "policies" / f"{spec.name}.yaml").write_bytes(policy_document(spec))


def put_secret(layout: DemoLayout, key_id: str, secret: bytes) -> None:
    """Store ``secret`` under ``key_id`` through the broker admin CLI (file mode 0600)."""
    secret_file = layout.broker / "incoming-secret.bin"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    try:
        run_cli("broker", "secret", "put", "--config", str(layout.broker_config),
                "--key-id", key_id, "--file", str(secret_file))
    finally:
        secret_file.unlink()


def write_broker_config(layout: DemoLayout, verifier_address: str | Sequence[str], *,
                        challenge_ttl: int = 60, listen: str = "127.0.0.1:0",
                        database: str = "broker.db", replica_id: str = "",
                        config: Path | None = None) -> None:
    """(Re)write the broker config (``config``, default the layout's) pointing at the
    verifier's address or replicas' addresses (TLS to agents, which must present a
    certificate of the demo CA; mutual TLS to the verifier)."""
    tls = layout.tls
    verifiers = ([verifier_address] if isinstance(verifier_address, str)
                 else list(verifier_address))
    (config or layout.broker_config).write_text(
        "[broker]\n"
        f'listen = "{listen}"\n'
        f'database = "{database}"\n'
        + (f'replica_id = "{replica_id}"\n' if replica_id else "")
        + 'kek_file = "kek.bin"\n'
        f"verifier = {json.dumps(verifiers)}\n"
        f'verifier_jwks = "{layout.verifier / "verifier-jwks.json"}"\n'
        'verifier_alg = "ES256"\n'
        "verifier_timeout_seconds = 5.0\n"
        f"challenge_ttl_seconds = {challenge_ttl}\n"
        'audience = "keybroker-broker"\n'
        'release_rules = "release-rules.yaml"\n'
        "accept_insecure_results = true\n"
        f'tls_cert = "{tls.cert("broker")}"\n'
        f'tls_key = "{tls.key("broker")}"\n'
        f'agent_client_ca = "{tls.ca}"\n'
        f'verifier_ca = "{tls.ca}"\n'
        f'verifier_client_cert = "{tls.cert("broker-client")}"\n'
        f'verifier_client_key = "{tls.key("broker-client")}"\n'
        + layout.broker_settings
    )


def agent_tls_args(layout: DemoLayout) -> list[str]:
    """``attester-agent get-secret`` flags for the demo CA and the demo agent's certificate."""
    tls = layout.tls
    return ["--ca", str(tls.ca), "--cert", str(tls.cert(DEMO_AGENT)),
            "--key", str(tls.key(DEMO_AGENT))]


def agent_channel(layout: DemoLayout) -> tuple[grpc.ChannelCredentials, bytes]:
    """In-process agent credentials (mutual TLS as ``demo-agent``) and the channel binding."""
    tls = layout.tls
    cert, key = tls.cert(DEMO_AGENT), tls.key(DEMO_AGENT)
    return (client_credentials(tls.ca, cert, key),
            certificate_digest(load_certificates(cert, "client certificate")[0]))
