"""Integration on Intel TDX and SGX (simulators under a test DCAP root): real verifier and
broker processes on loopback, a release through the attester agent after it measured the
workload's container image into RTMR3, and the denials the issue names.

Each denial is checked three ways: the typed category reaches the caller, no key left the
broker, and the broker's audit log holds a denial record with that category for that request.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from support.agent_tls import secure_channel, tls_kwargs
from support.demo_stack import demo_services
from support.release_attempts import (
    Env,
    agent,
    assert_denied,
    build_attempt,
    open_released,
    records_for,
    send,
)

from attester_agent.client import get_secrets
from attester_agent.collectors.simulator_dcap import SgxSimulatorCollector, TdxSimulatorCollector
from keybroker.errors import Category
from keybroker.v1 import broker_pb2_grpc, evidence_pb2
from keybroker_cli.demo_setup import (
    DEMO_IMAGE,
    DEMO_INIT_DATA,
    DEMO_KEY_ID,
    DEMO_MRENCLAVE,
    DEMO_MRTD,
    DemoLayout,
    PolicySpec,
    agent_tls_args,
    prepare,
    put_secret,
)
from keybroker_cli.launcher import keybroker_command

pytestmark = pytest.mark.integration

GRACE_KEY = "grace/api-token"
SGX_KEY = "sgx/signing-key"
OTHER_IMAGE = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    layout = DemoLayout(tmp_path_factory.mktemp("tdx-release"))
    grace = PolicySpec("tdx-grace", "grace/*", DEMO_MRTD, tee="tdx", images=(DEMO_IMAGE,),
                       grace_until="2099-01-01T00:00:00Z", accept_warning=True,
                       advisories=("INTEL-SA-00828", "INTEL-SA-00615"))
    sgx = PolicySpec("sgx-demo", "sgx/*", DEMO_MRENCLAVE, tee="sgx")
    secret = prepare(layout, tee="tdx", extra_policies=[grace, sgx])
    put_secret(layout, GRACE_KEY, b"grace-secret")
    put_secret(layout, SGX_KEY, b"sgx-secret")
    # A second simulated TD (same test CA) that never measures the image.
    shutil.copytree(layout.sim, layout.root / "sim-unmeasured")
    done = agent("measure", "--image", DEMO_IMAGE, "--insecure-simulator",
                 "--simulator-dir", str(layout.sim))
    assert done.returncode == 0, done.stderr
    with demo_services(layout) as (verifier, broker):
        channel = secure_channel(layout, broker.address)
        try:
            yield Env(layout, secret, verifier, broker, channel,
                      broker_pb2_grpc.KeyBrokerStub(channel))
        finally:
            channel.close()


def tdx(env: Env, sim_dir: Path | None = None, **kwargs: object) -> TdxSimulatorCollector:
    args: dict[str, object] = {"mr_td": DEMO_MRTD, "init_data": DEMO_INIT_DATA}
    args.update(kwargs)
    return TdxSimulatorCollector(sim_dir or env.layout.sim, insecure=True, **args)  # type: ignore[arg-type]


def test_release_through_agent_process_with_measured_image(env: Env) -> None:
    """The agent CLI on the TDX simulator receives the secret after `measure` put the image
    its policy requires into RTMR3 (the runtime log replays in the verifier)."""
    out = env.layout.root / "agent-secret"
    done = agent("get-secret", "--broker", env.broker.address, *agent_tls_args(env.layout),
                 "--key-id", DEMO_KEY_ID,
                 "--out", str(out), "--init-data", str(env.layout.init_data),
                 "--insecure-simulator", "--simulator-dir", str(env.layout.sim),
                 "--sim-tee", "tdx", "--sim-mrtd", DEMO_MRTD.hex())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == env.secret
    assert out.stat().st_mode & 0o777 == 0o600


def test_release_in_process_leaves_intent_and_outcome(env: Env) -> None:
    """An in-process TDX release opens to the secret; the audit has intent then released."""
    attempt = build_attempt(env, tdx(env))
    response = send(env, attempt.request)
    assert open_released(attempt, response) == env.secret
    kinds = [r.get("kind") for r in records_for(env, attempt.request.request_id)]
    assert kinds == ["intent", "released"]


def test_workload_claims_from_init_data_and_rtmr3(env: Env) -> None:
    """The token's workload claims carry the MRCONFIGID-bound init-data content and the images
    replayed into RTMR3 from the runtime log (platform-neutral names)."""
    attempt = build_attempt(env, tdx(env))
    response = send(env, attempt.request)
    claims = jwt.decode(response.result_token, options={"verify_signature": False})
    (submod,) = claims["submods"].values()
    workload = submod["keybroker.workload"]
    assert workload["init_data_register"] == "MRCONFIGID"
    assert workload["init_data_digest"] == hashlib.sha384(DEMO_INIT_DATA).hexdigest()
    assert workload["name"] == "demo"
    assert workload["measured_register"] == "RTMR3"
    assert workload["measured_images"] == [DEMO_IMAGE]


def test_image_not_measured_denied(env: Env) -> None:
    """A TD whose RTMR3 never received the required image is refused (MEASUREMENT, row 46)."""
    collector = tdx(env, env.layout.root / "sim-unmeasured")
    err = assert_denied(env, build_attempt(env, collector), Category.MEASUREMENT)
    assert "image" in err.reason


def test_debug_td_denied(env: Env) -> None:
    """A debuggable TD (TDATTRIBUTES.DEBUG) is refused as PLATFORM_POLICY."""
    assert_denied(env, build_attempt(env, tdx(env, debug=True)), Category.PLATFORM_POLICY)


def test_out_of_date_without_grace_denied(env: Env) -> None:
    """An OutOfDate platform is refused as TCB_POLICY by a policy without a grace date."""
    assert_denied(env, build_attempt(env, tdx(env, tcb="OutOfDate")), Category.TCB_POLICY)


def test_out_of_date_within_grace_released(env: Env) -> None:
    """The same OutOfDate platform gets a key whose policy grants grace (and whose rule accepts
    the resulting warning)."""
    attempt = build_attempt(env, tdx(env, tcb="OutOfDate"), key_id=GRACE_KEY)
    assert open_released(attempt, send(env, attempt.request)) == b"grace-secret"


def test_unknown_mrtd_denied(env: Env) -> None:
    """A TD with an MRTD the policy does not list is refused as MEASUREMENT."""
    collector = tdx(env, mr_td=bytes.fromhex("11" * 48))
    assert_denied(env, build_attempt(env, collector), Category.MEASUREMENT)


def test_tampered_ccel_denied(env: Env) -> None:
    """A CCEL edited in transit (one event digest byte) no longer replays: EVENT_LOG."""
    def tamper(evidence: evidence_pb2.Evidence) -> None:
        data = bytearray(evidence.tdx.ccel_data)
        marker = data.find(b"\x0c\x00", 200)  # a SHA-384 digest entry after the Spec ID event
        data[marker + 2] ^= 0x01
        evidence.tdx.ccel_data = bytes(data)
    assert_denied(env, build_attempt(env, tdx(env), mutate=tamper), Category.EVENT_LOG)


def test_tampered_runtime_log_denied(env: Env) -> None:
    """A runtime log claiming another image than the one extended into RTMR3: EVENT_LOG."""
    def swap(evidence: evidence_pb2.Evidence) -> None:
        evidence.tdx.runtime_log = evidence.tdx.runtime_log.replace(
            DEMO_IMAGE.encode(), OTHER_IMAGE.encode())
    assert_denied(env, build_attempt(env, tdx(env), mutate=swap), Category.EVENT_LOG)


def test_sgx_release_and_debug_enclave_denied(env: Env) -> None:
    """An SGX enclave with the accepted MRENCLAVE gets its key; a debug enclave does not."""
    collector = SgxSimulatorCollector(env.layout.sim, insecure=True, mr_enclave=DEMO_MRENCLAVE)
    got = get_secrets(env.broker.address, [SGX_KEY], collector,
                      **tls_kwargs(env.layout))  # type: ignore[arg-type]
    assert got == {SGX_KEY: b"sgx-secret"}
    debug = SgxSimulatorCollector(env.layout.sim, insecure=True, mr_enclave=DEMO_MRENCLAVE,
                                  debug=True)
    assert_denied(env, build_attempt(env, debug, key_id=SGX_KEY, init_data=b""),
                  Category.PLATFORM_POLICY)


def test_audit_chain_intact(env: Env) -> None:
    """After all the above, the broker's hash-chained audit log verifies."""
    done = subprocess.run(
        keybroker_command("broker", "audit", "verify", "--config", str(env.layout.broker_config)),
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_demo_command(tee: str, tmp_path: Path) -> None:
    """`keybroker demo --tee tdx|sgx` exits 0 with one release and one MEASUREMENT denial."""
    done = subprocess.run(
        keybroker_command("demo", "--tee", tee, "--workdir", str(tmp_path / "demo"),
                          "--releases", "3"),
        capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RELEASED demo/db-password" in done.stdout
    assert "    MEASUREMENT: policy" in done.stdout
    assert "demo: OK" in done.stdout
