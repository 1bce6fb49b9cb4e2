"""Integration: the policy lifecycle through real verifier and broker processes on loopback.

`keybroker admin ...` runs as its own process against the services' state databases while they
serve; the services pick up applied versions by polling. Every decision is checked at the
caller (category), in the token (policy version in force) and in the audit log.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from support.admin import free_port
from support.agent_tls import channel_binding, secure_channel
from support.demo_stack import demo_services

from attester_agent.simulator.snp import DEFAULT_TCB, SnpSimulator, SnpTestCa
from keybroker import binding
from keybroker.errors import Category, KeybrokerError
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import AgentKeyPair, Suite
from keybroker_cli.demo_setup import (
    DEMO_INIT_DATA,
    DEMO_MEASUREMENT,
    DemoLayout,
    PolicySpec,
    prepare,
    put_secret,
)
from keybroker_cli.launcher import ServiceProcess, keybroker_command
from keybroker_cli.tls_cmd import TlsAuthority

pytestmark = pytest.mark.integration

ADMIN = "secops"
ADMINS = f'admins = {{ {ADMIN} = ["policy-admin", "refvalue-admin"] }}\n'
POLL = "policy_poll_seconds = 0.2\n"
LIFE_KEY, REF_KEY, EARLY_KEY, IMAGE_KEY, FLOOR_KEY = (
    "life/key", "ref/key", "early/key", "image/key", "floor/key")
OTHER_MEASUREMENT = bytes.fromhex("42" * 48)
APPROVED_IMAGE = "sha256:" + "ab" * 32
ROGUE_IMAGE = "sha256:" + "cd" * 32
ZERO_FLOOR = (("bootloader", 0), ("tee", 0), ("snp", 0), ("microcode", 0))


@dataclass
class Env:
    layout: DemoLayout
    secret: bytes
    verifier: ServiceProcess
    broker: ServiceProcess
    ca: SnpTestCa
    channel: grpc.Channel
    stub: broker_pb2_grpc.KeyBrokerStub
    profile: Path


def who(env: Env) -> tuple[str, str]:
    """The admin API identity (mutual TLS as secops) of every change below."""
    return ("--profile", str(env.profile))



def _specs() -> list[PolicySpec]:
    return [
        PolicySpec("snp-life", "life/*", DEMO_MEASUREMENT),
        PolicySpec("snp-ref", "ref/*", DEMO_MEASUREMENT, references=(
            ("evidence.measurement", "snp-launch"),)),
        PolicySpec("snp-early", "early/*", DEMO_MEASUREMENT),
        PolicySpec("snp-image", "image/*", DEMO_MEASUREMENT,
                   workload={"names": ["demo"], "approved_images": [APPROVED_IMAGE]}),
        PolicySpec("snp-floor", "floor/*", DEMO_MEASUREMENT),
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("policies")
    ports = (free_port(), free_port())
    ca = root / "tls" / "ca.pem"
    layout = DemoLayout(root, broker_settings=(
        f'admin_listen = "127.0.0.1:{ports[1]}"\nadmin_client_ca = "{ca}"\n' + ADMINS + POLL))
    secret = prepare(layout, extra_policies=_specs())
    TlsAuthority.load(layout.tls.root).issue(ADMIN, client=True)
    profile = root / f"{ADMIN}.toml"
    profile.write_text(f'ca = "{ca}"\ncert = "{layout.tls.cert(ADMIN)}"\n'
                       f'key = "{layout.tls.key(ADMIN)}"\nverifier = "127.0.0.1:{ports[0]}"\n'
                       f'broker = "127.0.0.1:{ports[1]}"\n')
    for key in (LIFE_KEY, REF_KEY, EARLY_KEY, IMAGE_KEY, FLOOR_KEY):
        put_secret(layout, key, secret)
    with layout.verifier_config.open("a") as out:
        out.write(ADMINS + POLL + f'admin_listen = "127.0.0.1:{ports[0]}"\n'
                  f'admin_client_ca = "{ca}"\n')

    with demo_services(layout) as (verifier, broker):
        channel = secure_channel(layout, broker.address)
        try:
            yield Env(layout, secret, verifier, broker, SnpTestCa.load(layout.sim), channel,
                      broker_pb2_grpc.KeyBrokerStub(channel), profile)
        finally:
            channel.close()


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``keybroker admin ARGS`` as its own process."""
    return subprocess.run(keybroker_command("admin", *args), capture_output=True, text=True,
                          check=False, timeout=120)


def ok(*args: str) -> str:
    done = admin(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def audit(env: Env, request_id: str) -> list[dict[str, object]]:
    done = subprocess.run(
        keybroker_command("broker", "audit", "list", "--config", str(env.layout.broker_config),
                          "--json"), capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [r for r in records if r.get("request_id") == request_id]


def simulator(env: Env, *, measurement: bytes = DEMO_MEASUREMENT, microcode: int | None = None,
              init_data: bytes = DEMO_INIT_DATA, chip: int = 0) -> SnpSimulator:
    tcb = bytearray(DEFAULT_TCB[env.ca.product])
    if microcode is not None:
        tcb[7] = microcode
    chip_id = bytes([chip + 1]) * 64
    return SnpSimulator(env.ca, measurement=measurement, reported_tcb=bytes(tcb),
                        chip_id=chip_id, host_data=hashlib.sha256(init_data).digest())


def release(env: Env, key_id: str, sim: SnpSimulator | None = None,
            init_data: bytes = DEMO_INIT_DATA) -> tuple[str, broker_pb2.ReleaseKeyResponse]:
    """One release attempt; (request id, response) or the typed error (with .request_id)."""
    sim = sim or simulator(env, init_data=init_data)
    challenge = env.stub.GetChallenge(broker_pb2.GetChallengeRequest(
        tee=evidence_pb2.TEE_TYPE_SEV_SNP, key_ids=[key_id]))
    suite = Suite.X25519_HKDFSHA256_AES256GCM
    keypair = AgentKeyPair.generate(suite)
    report_data = binding.report_data(challenge.nonce, suite.value, keypair.public_bytes,
                                      binding.init_data_digest(init_data),
                                      channel_binding(env.layout))
    request_id = str(uuid.uuid4())
    request = broker_pb2.ReleaseKeyRequest(
        challenge_id=challenge.challenge_id,
        evidence=evidence_pb2.Evidence(snp=evidence_pb2.SnpEvidence(
            report=sim.sign(sim.report(report_data)), cert_table=sim.cert_table())),
        public_key=keypair.public_bytes, suite=evidence_pb2.HpkeSuite.ValueType(suite.wire),
        keys=[broker_pb2.KeyRef(key_id=key_id)], init_data=init_data, request_id=request_id)
    try:
        response: broker_pb2.ReleaseKeyResponse = env.stub.ReleaseKey(request, timeout=20)
    except grpc.RpcError as exc:
        err = error_from_rpc(exc, "broker")
        err.add_note(request_id)
        raise err from exc
    return request_id, response


def denied(env: Env, key_id: str, category: Category, **kwargs: object) -> dict[str, object]:
    """The release is refused with ``category``; returns the audit denial record."""
    with pytest.raises(KeybrokerError) as exc:
        release(env, key_id, **kwargs)  # type: ignore[arg-type]
    assert exc.value.category is category, str(exc.value)
    request_id = (exc.value.__notes__ or [""])[-1]
    records = audit(env, request_id)
    assert not any(r["kind"] == "released" for r in records), records
    (record,) = [r for r in records if r["kind"] == "denied"]
    assert record["category"] == category.value
    return record


def submod(response: broker_pb2.ReleaseKeyResponse, policy: str) -> dict[str, object]:
    claims = jwt.decode(response.result_token, options={"verify_signature": False})
    value: dict[str, object] = claims["submods"][policy]
    return value


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for the services to pick up an applied change (they poll every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "change not picked up in time"
        time.sleep(0.1)


def policy_file(env: Env, name: str, text: str) -> Path:
    path = env.layout.root / name
    path.write_text(text)
    return path


def snp_policy(name: str, measurement: bytes, *, extra: str = "", snp_extra: str = "") -> str:
    return (f"kind: AppraisalPolicy\nname: {name}\nplatform: sev-snp\nsnp:\n"
            f"  measurements: ['{measurement.hex()}']\n"
            "  min_tcb: {bootloader: 0, tee: 0, snp: 0, microcode: 0}\n"
            f"  allow_smt: true\n{snp_extra}workload:\n  require_init_data: true\n{extra}")


def releases_with(env: Env, key: str, policy_id: str) -> bool:
    try:
        _, response = release(env, key)
    except KeybrokerError:
        return False
    name = policy_id.split("@", maxsplit=1)[0]
    return submod(response, name)["ear.appraisal-policy-id"] == policy_id


def test_apply_rollback_take_effect_and_are_recorded(env: Env) -> None:
    """apply v2 denies (MEASUREMENT naming snp-life@2), rollback (v3) releases again; every
    token and audit record names the version in force."""
    request_id, response = release(env, LIFE_KEY)
    assert submod(response, "snp-life")["ear.appraisal-policy-id"] == "snp-life@1"
    (intent, _) = audit(env, request_id)
    assert "snp-life@1" in intent["policy_ids"] and "release-rules@1" in intent["policy_ids"]
    v2 = policy_file(env, "life-v2.yaml", snp_policy("snp-life", OTHER_MEASUREMENT))
    cfg = str(env.layout.verifier_config)
    ok("policy", "apply", str(v2), *who(env), "--comment", "rotate")
    eventually(lambda: not releases_with(env, LIFE_KEY, "snp-life@1"))
    record = denied(env, LIFE_KEY, Category.MEASUREMENT)
    assert "snp-life@2" in str(record["reason"]) and "snp.measurements" in str(record["reason"])
    ok("policy", "rollback", "snp-life", "--to", "1", "--service", "verifier", *who(env),
       "--comment", "back out")
    eventually(lambda: releases_with(env, LIFE_KEY, "snp-life@3"))
    history = ok("policy", "history", "snp-life", "--config", cfg, "--json")
    versions = json.loads(history)
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [v["action"] for v in versions] == ["seed", "apply", "rollback"]
    assert versions[2]["digest"] == versions[0]["digest"]


M = '"' + "ab" * 48 + '"'


@pytest.mark.parametrize(("text", "line"), [
    ("kind: AppraisalPolicy\nname: snp-life\nplatform: sev-snp\nsnp:\n  measurements: [" + M + "]\n"
     "  min_tcb: {}\n  allow_debugging: false\n", 7),
    ("kind: AppraisalPolicy\nname: snp-life\nplatform: sev-snp\nsnp:\n  measurements: [\n", 6),
    ("kind: AppraisalPolicy\nname: snp-life\nplatform: sev-snp\nsnp:\n  measurements: [" + M + "]\n"
     "  min_tcb: {}\nconditions:\n  - name: c\n    when: 'evidence.vmpl =='\n", 9),
    ("kind: AppraisalPolicy\nname: snp-life\nplatform: sev-snp\nsnp:\n  measurements: [" + M + "]\n"
     "  min_tcb: {microcode: high}\n", 6),
])
def test_broken_policy_refused_nothing_changes(env: Env, text: str, line: int) -> None:
    """Unknown field, syntax, bad CEL, wrong type: refused with file:line, in force unchanged."""
    cfg = str(env.layout.verifier_config)
    before = ok("policy", "history", "snp-life", "--config", cfg, "--json")
    path = policy_file(env, "broken.yaml", text)
    done = admin("policy", "apply", str(path), *who(env),
                 "--comment", "broken")
    assert done.returncode == 1
    assert f"broken.yaml:{line}:" in done.stderr, done.stderr
    assert ok("policy", "history", "snp-life", "--config", cfg, "--json") == before
    assert release(env, LIFE_KEY)[1].keys


def refset(env: Env, name: str, value_name: str, value: str, not_after: datetime) -> Path:
    return policy_file(env, f"{name}-{value_name}.yaml", (
        f"kind: ReferenceValues\nname: {name}\nvalues:\n  - name: {value_name}\n"
        f"    value: '{value}'\n    not_before: 2020-01-01T00:00:00Z\n"
        f"    not_after: {not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"))


def test_reference_value_lifecycle(env: Env) -> None:
    """An expired value is a MEASUREMENT deny naming it and its expiry; a staged one is
    not used; activation releases; a deprecated set releases with status warning."""
    expired = datetime.now(UTC) - timedelta(days=1)
    ok("refvalues", "import", str(refset(env, "snp-launch", "fw-old", DEMO_MEASUREMENT.hex(),
                                          expired)),
       *who(env), "--comment", "old firmware")
    denied(env, REF_KEY, Category.MEASUREMENT)  # staged only: never used live
    ok("refvalues", "activate", "snp-launch", "1", *who(env),
       "--comment", "go")
    expiry = expired.strftime("%Y-%m-%dT%H:%M:%S")

    def expired_named() -> bool:
        record = denied(env, REF_KEY, Category.MEASUREMENT)
        return "fw-old" in str(record["reason"]) and expiry in str(record["reason"])

    eventually(expired_named)
    later = datetime.now(UTC) + timedelta(days=30)
    ok("refvalues", "import", str(refset(env, "snp-launch", "fw-new", DEMO_MEASUREMENT.hex(),
                                          later)),
       *who(env), "--comment", "new firmware")
    ok("refvalues", "activate", "snp-launch", "2", *who(env),
       "--comment", "go")

    def released_by_new() -> bool:
        try:
            _, response = release(env, REF_KEY)
        except KeybrokerError:
            return False
        matched = submod(response, "snp-ref")["keybroker.reference-values"]
        return "snp-launch@2/fw-new" in str(matched)

    eventually(released_by_new)


def test_dry_run_lists_exactly_the_flipping_evidence(env: Env) -> None:
    """Recorded appraisals at microcode 115..150; a floor of 130 flips exactly those below."""
    expected: set[str] = set()
    for chip, microcode in enumerate((115, 120, 130, 140, 150)):
        request_id, _ = release(env, FLOOR_KEY, simulator(env, microcode=microcode, chip=chip))
        if microcode < 130:
            expected.add(request_id)
    candidate = policy_file(env, "floor-v2.yaml", snp_policy("snp-floor", DEMO_MEASUREMENT)
                            .replace("microcode: 0}", "microcode: 130}"))
    time.sleep(0.5)  # the verifier writes its records in the background
    done = admin("policy", "dry-run", str(candidate), "--config", str(env.layout.verifier_config),
                 "--since", "1d", "--json")
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)
    changes = changes["changes"] if isinstance(changes, dict) else changes
    assert {c["request_id"] for c in changes} == expected
    assert all(c["rule"].startswith("snp.min_tcb.microcode") for c in changes)


def test_tcb_early_warning_in_token_and_report(env: Env) -> None:
    """A platform affirming today but below the next floor carries tcb-debt in its token and
    is listed by `admin tcb report`."""
    cfg = str(env.layout.verifier_config)
    warn = "tcb_early_warning:\n  snp_min_tcb: {microcode: 250}\n"
    path = policy_file(env, "early.yaml", snp_policy("snp-early", DEMO_MEASUREMENT, extra=warn))
    ok("policy", "apply", str(path), *who(env), "--comment", "warn")

    def in_debt() -> bool:
        _, response = release(env, EARLY_KEY)
        debt = submod(response, "snp-early")["keybroker.tcb-debt"]
        return isinstance(debt, list) and any("microcode" in str(d) for d in debt)

    eventually(in_debt)
    time.sleep(0.5)
    report = ok("tcb", "report", "--config", cfg, "--since", "1d", "--json")
    assert "microcode" in report and "snp-early" in report


def test_workload_identity_approved_image(env: Env) -> None:
    """Init-data naming an approved image releases (its claims in the token); another image,
    or another workload name, is a MEASUREMENT deny."""
    good = (b'[workload]\nname = "demo"\nimages = ["' + APPROVED_IMAGE.encode() + b'"]\n')
    _, response = release(env, IMAGE_KEY, init_data=good)
    workload = submod(response, "snp-image")["keybroker.workload"]
    assert isinstance(workload, dict)
    assert workload["name"] == "demo" and workload["images"] == [APPROVED_IMAGE]
    assert workload["init_data_register"] == "HOST_DATA"
    rogue = (b'[workload]\nname = "demo"\nimages = ["' + ROGUE_IMAGE.encode() + b'"]\n')
    record = denied(env, IMAGE_KEY, Category.MEASUREMENT, init_data=rogue)
    assert "workload.approved_images" in str(record["reason"])
    other = b'[workload]\nname = "other"\nimages = ["' + APPROVED_IMAGE.encode() + b'"]\n'
    record = denied(env, IMAGE_KEY, Category.MEASUREMENT, init_data=other)
    assert "workload.names" in str(record["reason"])


def test_release_rule_condition(env: Env) -> None:
    """A release rule whose CEL `when` is false denies (PLATFORM_POLICY, release-rules@2 in the
    audit); rolling back the rules releases again."""
    rules = (env.layout.broker / "release-rules.yaml").read_text()
    when = "    when: 'submod[\"keybroker.workload\"][\"name\"] == \"payments\"'\n"
    stricter = rules.replace("    policy: snp-life\n", "    policy: snp-life\n" + when)
    assert stricter != rules
    path = policy_file(env, "rules-v2.yaml", stricter)
    ok("policy", "apply", str(path), *who(env), "--comment", "cel")

    def refused() -> bool:
        try:
            release(env, LIFE_KEY)
        except KeybrokerError as err:
            return err.category is Category.PLATFORM_POLICY
        return False

    eventually(refused)
    record = denied(env, LIFE_KEY, Category.PLATFORM_POLICY)
    assert "release-rules@2" in record["policy_ids"]
    assert "when" in str(record["reason"])
    ok("policy", "rollback", "release-rules", "--to", "1", "--service", "broker", *who(env),
       "--comment", "undo")
    eventually(lambda: not refused())
