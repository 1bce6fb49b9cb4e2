"""Integration on TPM 2.0 with real swtpm machines: verifier and broker processes on loopback,
AK enrolment by credential activation (through the broker, to the verifier), a release
through the attester agent, and the denials issue 12 names: unenrolled AK, wrong extraData,
a quote missing a required PCR, a tampered event log, EV_NO_ACTION smuggling, an event type
changed on an event whose data is used, and reset counters going backwards.

Each denial is checked three ways: the typed category reaches the caller, no key left the
broker, and the broker's audit log holds a denial record with that category for that request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
import pytest
from support.agent_tls import secure_channel
from support.demo_stack import prepared_services
from support.release_attempts import (
    Env,
    agent,
    assert_denied,
    build_attempt,
    open_released,
    send,
)

from attester_agent.collectors.tpm import TpmCollector
from attester_agent.enrolment import enrol_tpm
from attester_agent.simulator.tpm import SimulatedBoot, Swtpm, SwtpmLayout, manufacture
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.tcg_log import EV_NO_ACTION, build_event_log, parse_event_log
from keybroker.v1 import broker_pb2_grpc, evidence_pb2
from keybroker_cli import demo_tpm as demo_tpm_module
from keybroker_cli.demo_prepare import ADMIN_ROLES
from keybroker_cli.demo_setup import (
    DEMO_INIT_DATA,
    DEMO_KEY_ID,
    DemoLayout,
    PolicySpec,
    agent_channel,
    agent_tls_args,
    put_secret,
)
from keybroker_cli.demo_tpm import DEMO_KERNEL, WRONG_KERNEL, machine, tpm_machines
from keybroker_cli.launcher import keybroker_command
from keybroker_cli.main import main

pytestmark = pytest.mark.integration

SB_KEY = "sb/key"
IMA_KEY = "ima/key"
WORKLOAD = b"keybroker workload binary v1"
EV_EFI_VARIABLE_AUTHORITY = 0x8000_00E0


def _secure_boot_policy() -> str:
    """PCR 4 of the demo kernel's boot, a replayed log and secure boot (PCR 7 not pinned)."""
    pcr4 = SimulatedBoot(kernel_digest=DEMO_KERNEL).pcrs()[4].hex()
    return ("kind: AppraisalPolicy\nname: tpm-sb\nplatform: tpm\ntpm:\n"
            f"  pcrs:\n    - {{bank: sha256, pcr: 4, values: ['{pcr4}']}}\n"
            "  require_event_log: true\n  secure_boot: true\n")


@dataclasses.dataclass
class Tpms:
    env: Env
    enrolled: list[str]


def sibling(env: Env, name: str) -> SwtpmLayout:
    """A new machine whose EK certificate comes from the demo machine's CA (trusted)."""
    layout = SwtpmLayout(env.layout.root / "machines" / name)
    layout.root.mkdir(parents=True)
    shutil.copytree(machine(env.layout.sim, DEMO_KERNEL).ca, layout.ca)
    return layout


def _ima_policy() -> str:
    """PCR 4 of the demo kernel's boot and an IMA runtime policy allowing one binary."""
    pcr4 = SimulatedBoot(kernel_digest=DEMO_KERNEL).pcrs()[4].hex()
    digest = "sha256:" + hashlib.sha256(WORKLOAD).hexdigest()
    return ("kind: AppraisalPolicy\nname: tpm-ima\nplatform: tpm\ntpm:\n"
            f"  pcrs:\n    - {{bank: sha256, pcr: 4, values: ['{pcr4}']}}\n"
            f"  ima:\n    allow:\n      - {{path: /usr/bin/workload, digests: ['{digest}']}}\n")


def _before_start(layout: DemoLayout) -> None:
    """The secure-boot policy and its secret; the admin may also revoke TPM enrolments."""
    config = layout.verifier_config.read_text()
    roles = json.dumps(list(ADMIN_ROLES))
    assert roles in config
    layout.verifier_config.write_text(
        config.replace(roles, json.dumps([*ADMIN_ROLES, "policy-admin"])))
    (layout.verifier / "policies" / "tpm-sb.yaml").write_text(_secure_boot_policy())
    (layout.verifier / "policies" / "tpm-ima.yaml").write_text(_ima_policy())
    put_secret(layout, SB_KEY, b"secure-boot-secret")
    put_secret(layout, IMA_KEY, b"ima-secret")


@dataclasses.dataclass
class Machine:
    """A running swtpm machine of the demo CA, booted with the demo kernel and enrolled."""

    tpm: Swtpm
    layout: SwtpmLayout
    collector: TpmCollector
    enrolment: evidence_pb2.TpmEnrolment


@contextmanager
def enrolled_machine(env: Env, name: str, *, secure_boot: bool = True,
                     ima: bool = False) -> Iterator[Machine]:
    """A new machine (``sibling``), booted, its collector (with the IMA log when ``ima``) and
    its AK enrolled through the broker; stopped on exit."""
    layout = sibling(env, name)
    tpm = Swtpm(layout).start()
    try:
        tpm.boot(SimulatedBoot(kernel_digest=DEMO_KERNEL, secure_boot=secure_boot))
        collector = TpmCollector(tpm.tcti, event_log=layout.event_log,
                                 ima_log=layout.ima_log if ima else None)
        credentials, _ = agent_channel(env.layout)
        enrolment = enrol_tpm(env.broker.address, collector, timeout=30,
                              credentials=credentials)
        yield Machine(tpm, layout, collector, enrolment)
    finally:
        tpm.stop()


@pytest.fixture(scope="module")
def tpms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tpms]:
    """A prepared deployment (admin APIs on) for TPM, with both demo machines enrolled."""
    with prepared_services(tmp_path_factory.mktemp("tpm-release"), tee="tpm",
                           extra_policies=[
                               PolicySpec("tpm-sb", "sb/*", DEMO_KERNEL, tee="tpm"),
                               PolicySpec("tpm-ima", "ima/*", DEMO_KERNEL, tee="tpm")],
                           before_start=_before_start) as served:
        layout = served.layout
        channel = secure_channel(layout, served.broker.address)
        credentials, _ = agent_channel(layout)
        try:
            with tpm_machines(layout.sim, (DEMO_KERNEL, WRONG_KERNEL), served.broker.address,
                              credentials) as lines:
                yield Tpms(Env(layout, served.secret, served.verifier, served.broker, channel,
                               broker_pb2_grpc.KeyBrokerStub(channel)), lines)
        finally:
            channel.close()


def demo_tpm(tpms: Tpms, **kwargs: object) -> TpmCollector:
    layout = machine(tpms.env.layout.sim, DEMO_KERNEL)
    tcti = (layout.root / "tcti").read_text().strip()
    args: dict[str, object] = {"event_log": layout.event_log}
    args.update(kwargs)
    return TpmCollector(tcti, **args)  # type: ignore[arg-type]


class OtherNonce:
    """A collector quoting over report_data that is not the challenge's binding."""

    def __init__(self, inner: TpmCollector) -> None:
        self.inner = inner
        self.name = inner.name
        self.tee = inner.tee

    def available(self) -> bool:
        return True

    def collect(self, report_data: bytes) -> evidence_pb2.Evidence:
        return self.inner.collect(bytes(b ^ 0x01 for b in report_data))


def test_tpm_enrolment_and_release_through_the_agent_processes(tpms: Tpms) -> None:
    """A machine with an unenrolled AK is refused (CHAIN_UNTRUSTED); `attester-agent
    enrol-tpm` enrols it by credential activation; `get-secret` then receives the secret."""
    env = tpms.env
    layout = sibling(env, "agent")
    tpm = Swtpm(layout).start()
    try:
        tpm.boot(SimulatedBoot(kernel_digest=DEMO_KERNEL))
        sim = ["--insecure-simulator", "--simulator-dir", str(layout.root), "--sim-tee", "tpm",
               "--tpm-tcti", tpm.tcti, "--tpm-event-log", str(layout.event_log)]
        out = env.layout.root / "agent-secret"
        get = ["get-secret", "--broker", env.broker.address, *agent_tls_args(env.layout),
               "--key-id", DEMO_KEY_ID, "--out", str(out), *sim]
        before = agent(*get)
        assert before.returncode == 1 and "denied: CHAIN_UNTRUSTED" in before.stderr, \
            before.stderr
        enrolled = agent("enrol-tpm", "--broker", env.broker.address,
                         *agent_tls_args(env.layout), "--insecure-simulator", "--simulator-dir",
                         str(layout.root), "--tpm-tcti", tpm.tcti)
        assert enrolled.returncode == 0, enrolled.stderr
        assert enrolled.stdout.startswith("enrolled AK 000b")
        after = agent(*get)
        assert after.returncode == 0, after.stderr
        assert out.read_bytes() == env.secret
    finally:
        tpm.stop()


def test_tpm_release_in_process_with_claims(tpms: Tpms) -> None:
    """The enrolled demo machine's quote releases the secret; both machines were enrolled."""
    assert len(tpms.enrolled) == 2 and all("enrolled for EK" in x for x in tpms.enrolled)
    attempt = build_attempt(tpms.env, demo_tpm(tpms), init_data=b"")
    assert open_released(attempt, send(tpms.env, attempt.request)) == tpms.env.secret


def test_tpm_wrong_extra_data_is_freshness(tpms: Tpms) -> None:
    """A quote whose extraData is not the challenge binding is refused (FRESHNESS, row 31)."""
    attempt = build_attempt(tpms.env, OtherNonce(demo_tpm(tpms)), init_data=b"")
    err = assert_denied(tpms.env, attempt, Category.FRESHNESS)
    assert "extraData" in err.reason


def test_tpm_quote_missing_a_required_pcr_is_measurement(tpms: Tpms) -> None:
    """A quote without PCR 4 (required by the policy) is refused (MEASUREMENT)."""
    collector = demo_tpm(tpms, event_log=None, pcrs=(0, 1, 2, 3, 5, 6, 7))
    err = assert_denied(tpms.env, build_attempt(tpms.env, collector, init_data=b""),
                        Category.MEASUREMENT)
    assert "PCR 4" in err.reason


def test_tpm_wrong_kernel_is_measurement(tpms: Tpms) -> None:
    """The enrolled machine that booted another kernel is refused on PCR 4 (MEASUREMENT)."""
    layout = machine(tpms.env.layout.sim, WRONG_KERNEL)
    collector = TpmCollector((layout.root / "tcti").read_text().strip(),
                             event_log=layout.event_log)
    assert_denied(tpms.env, build_attempt(tpms.env, collector, init_data=b""),
                  Category.MEASUREMENT)


def _rewrite_log(evidence: evidence_pb2.Evidence, change: str) -> None:
    log = parse_event_log(evidence.tpm.event_log)
    events = list(log.events)
    kernel = max(i for i, ev in enumerate(events) if ev.index == 4)
    if change == "digest":
        events[kernel] = dataclasses.replace(
            events[kernel], digests=((0x000B, WRONG_KERNEL),))
    elif change == "no-action":
        events[kernel] = dataclasses.replace(events[kernel], event_type=EV_NO_ACTION)
    evidence.tpm.event_log = build_event_log(dataclasses.replace(log, events=tuple(events)))


def test_tpm_tampered_event_log_is_event_log(tpms: Tpms) -> None:
    """A log whose kernel digest was changed does not replay to the quote (EVENT_LOG)."""
    attempt = build_attempt(tpms.env, demo_tpm(tpms), init_data=b"",
                            mutate=lambda ev: _rewrite_log(ev, "digest"))
    assert_denied(tpms.env, attempt, Category.EVENT_LOG)


def test_tpm_event_turned_no_action_is_event_log(tpms: Tpms) -> None:
    """An extended event relabelled EV_NO_ACTION is not extended, so the log no longer
    replays (EVENT_LOG)."""
    attempt = build_attempt(tpms.env, demo_tpm(tpms), init_data=b"",
                            mutate=lambda ev: _rewrite_log(ev, "no-action"))
    assert_denied(tpms.env, attempt, Category.EVENT_LOG)


@pytest.fixture(scope="module")
def no_secure_boot(tpms: Tpms) -> Iterator[TpmCollector]:
    """An enrolled machine that booted the demo kernel with secure boot off."""
    with enrolled_machine(tpms.env, "no-secure-boot", secure_boot=False) as machine:
        yield machine.collector


def _smuggle(evidence: evidence_pb2.Evidence, event_type: int | None) -> None:
    """Secure boot claimed on: an EV_NO_ACTION copy of the SecureBoot event saying 1 put first
    (``event_type`` None), or the real SecureBoot event's type changed to ``event_type``."""
    log = parse_event_log(evidence.tpm.event_log)
    events = list(log.events)
    position, real = next((i, ev) for i, ev in enumerate(events)
                          if ev.index == 7 and b"S\x00e\x00c\x00u\x00r\x00e\x00B" in ev.data)
    if event_type is None:
        events.insert(position, dataclasses.replace(
            real, event_type=EV_NO_ACTION, data=real.data[:-1] + b"\x01"))
    else:
        events[position] = dataclasses.replace(real, event_type=event_type)
    evidence.tpm.event_log = build_event_log(dataclasses.replace(log, events=tuple(events)))


def test_tpm_secure_boot_off_is_platform_policy(tpms: Tpms,
                                               no_secure_boot: TpmCollector) -> None:
    """The machine's own log says SecureBoot=0: refused (PLATFORM_POLICY)."""
    attempt = build_attempt(tpms.env, no_secure_boot, key_id=SB_KEY, init_data=b"")
    err = assert_denied(tpms.env, attempt, Category.PLATFORM_POLICY)
    assert "disabled" in (err.actual or err.reason) or "secure boot" in err.reason


def test_tpm_no_action_smuggling_is_not_believed(tpms: Tpms,
                                                no_secure_boot: TpmCollector) -> None:
    """An EV_NO_ACTION event claiming SecureBoot=1 replays (it extends nothing) but is never
    used for a claim: still PLATFORM_POLICY."""
    attempt = build_attempt(tpms.env, no_secure_boot, key_id=SB_KEY, init_data=b"",
                            mutate=lambda ev: _smuggle(ev, None))
    assert_denied(tpms.env, attempt, Category.PLATFORM_POLICY)


def test_tpm_changed_event_type_loses_the_claim(tpms: Tpms) -> None:
    """The real SecureBoot=1 event relabelled as another extended type still replays, but
    its data is no longer a secure boot claim: refused (PLATFORM_POLICY), never believed."""
    attempt = build_attempt(tpms.env, demo_tpm(tpms), key_id=SB_KEY, init_data=b"",
                            mutate=lambda ev: _smuggle(ev, EV_EFI_VARIABLE_AUTHORITY))
    assert_denied(tpms.env, attempt, Category.PLATFORM_POLICY)
    plain = build_attempt(tpms.env, demo_tpm(tpms), key_id=SB_KEY, init_data=b"")
    assert open_released(plain, send(tpms.env, plain.request)) == b"secure-boot-secret"


def test_tpm_reset_counters_going_backwards_is_freshness(tpms: Tpms) -> None:
    """A TPM rolled back to an earlier state (its resetCount lower than one already seen for
    its enrolled AK) is refused (FRESHNESS); the quotes before the rollback were released."""
    env = tpms.env
    layout = sibling(env, "rollback")
    manufacture(layout)
    snapshot = layout.root / "state-at-manufacture"
    shutil.copytree(layout.state, snapshot)
    credentials, _ = agent_channel(env.layout)

    def boot_and_release(enrol: bool) -> TpmCollector:
        tpm = Swtpm(layout).start()
        try:
            tpm.boot(SimulatedBoot(kernel_digest=DEMO_KERNEL))
            collector = TpmCollector(tpm.tcti, event_log=layout.event_log)
            if enrol:
                enrol_tpm(env.broker.address, collector, timeout=30, credentials=credentials)
            attempt = build_attempt(env, collector, init_data=b"")
            assert open_released(attempt, send(env, attempt.request)) == env.secret
            return collector
        finally:
            tpm.stop()

    boot_and_release(enrol=True)
    boot_and_release(enrol=False)  # a second power-on: resetCount went up
    shutil.rmtree(layout.state)
    shutil.copytree(snapshot, layout.state)
    tpm = Swtpm(layout).start()
    try:
        tpm.boot(SimulatedBoot(kernel_digest=DEMO_KERNEL))
        collector = TpmCollector(tpm.tcti, event_log=layout.event_log)
        err = assert_denied(env, build_attempt(env, collector, init_data=b""),
                            Category.FRESHNESS)
        assert "counters went backwards" in err.reason
    finally:
        tpm.stop()


def test_tpm_enrolment_of_an_untrusted_ek_is_refused(tpms: Tpms, tmp_path: Path) -> None:
    """A swtpm whose EK certificate comes from a CA the verifier does not trust cannot enrol
    (CHAIN_UNTRUSTED)."""
    layout = SwtpmLayout(tmp_path / "stranger")
    tpm = Swtpm(layout).start()
    try:
        credentials, _ = agent_channel(tpms.env.layout)
        with pytest.raises(KeybrokerError) as exc:
            enrol_tpm(tpms.env.broker.address, TpmCollector(tpm.tcti, event_log=None),
                      timeout=30, credentials=credentials)
        assert exc.value.category is Category.CHAIN_UNTRUSTED
    finally:
        tpm.stop()


def admin(tpms: Tpms, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tpms.env.layout.root / "admin" / "admin.toml"
    return subprocess.run(keybroker_command("admin", "tpm", *args, "--profile", str(profile)),
                          capture_output=True, text=True, check=False, timeout=60)


def test_tpm_admin_revocation_and_re_enrolment(tpms: Tpms) -> None:
    """`keybroker admin tpm list` shows the enrolled EKs; `revoke` (policy-admin, recorded)
    makes the AK's quotes CHAIN_UNTRUSTED at once; the machine may then enrol again."""
    env = tpms.env
    with enrolled_machine(env, "revoked") as machine:
        collector, enrolled = machine.collector, machine.enrolment
        credentials, _ = agent_channel(env.layout)
        listed = admin(tpms, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["ek_fingerprint"]: r for r in json.loads(listed.stdout)}
        assert rows[enrolled.ek_fingerprint]["ak_name"] == enrolled.ak_name.hex()
        assert len(rows) >= 3 and all(r["insecure"] for r in rows.values())
        revoked = admin(tpms, "revoke", enrolled.ek_fingerprint, "--comment", "decommissioned")
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.startswith(f"revoked AK {enrolled.ak_name.hex()}")
        assert_denied(env, build_attempt(env, collector, init_data=b""),
                      Category.CHAIN_UNTRUSTED)
        again = admin(tpms, "revoke", enrolled.ek_fingerprint, "--comment", "twice")
        assert again.returncode == 1 and "MALFORMED" in again.stderr
        enrol_tpm(env.broker.address, collector, timeout=30, credentials=credentials)
        attempt = build_attempt(env, collector, init_data=b"")
        assert open_released(attempt, send(env, attempt.request)) == env.secret


def test_tpm_ima_runtime_policy(tpms: Tpms) -> None:
    """IMA end to end: the allowed binary measured into PCR 10 releases the key; without the
    IMA log, or once another binary ran, the release is refused (MEASUREMENT)."""
    env = tpms.env
    with enrolled_machine(env, "ima", ima=True) as machine:
        tpm, layout, collector = machine.tpm, machine.layout, machine.collector
        tpm.measure_file("/usr/bin/workload", WORKLOAD)
        attempt = build_attempt(env, collector, key_id=IMA_KEY, init_data=b"")
        assert open_released(attempt, send(env, attempt.request)) == b"ima-secret"
        no_log = TpmCollector(tpm.tcti, event_log=layout.event_log)
        err = assert_denied(env, build_attempt(env, no_log, key_id=IMA_KEY, init_data=b""),
                            Category.MEASUREMENT)
        assert "IMA" in err.reason
        tpm.measure_file("/usr/bin/rogue", b"not on the list")
        err = assert_denied(env, build_attempt(env, collector, key_id=IMA_KEY, init_data=b""),
                            Category.MEASUREMENT)
        assert "not allowed by the IMA policy" in err.reason


def test_tpm_demo_command(tmp_path: Path) -> None:
    """`keybroker demo --tee tpm`: two swtpm machines enrolled, one release through the agent
    process, one MEASUREMENT denial on PCR 4 (the other kernel), exit 0."""
    done = subprocess.run(keybroker_command("demo", "--tee", "tpm", "--workdir",
                                            str(tmp_path / "demo"), "--releases", "2"),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("enrolled for EK") == 2
    assert "RELEASED demo/db-password" in done.stdout
    assert "MEASUREMENT: policy tpm-demo@1: sha256 PCR 4 is not an accepted value" in done.stdout
    assert done.stdout.rstrip().endswith("demo: OK (1 release, 1 denial)")


def test_tpm_demo_names_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Without swtpm the TPM demo says what to install and exits 1, starting nothing."""
    monkeypatch.setattr(demo_tpm_module.shutil, "which", lambda tool: None)
    assert main(["demo", "--tee", "tpm"]) == 1
    err = capsys.readouterr().err
    assert "swtpm (Debian package swtpm)" in err and "swtpm-tools" in err


def test_tpm_init_data_bound_by_pcr8(tpms: Tpms) -> None:
    """Init-data on TPM machines: the host extends PCR 8 with its SHA-256; the agent presents
    the document, the token names PCR8 and its content; another document, or a machine whose
    PCR 8 never received it, is refused (MEASUREMENT)."""
    env = tpms.env
    with enrolled_machine(env, "init-data") as machine:
        tpm, collector = machine.tpm, machine.collector
        unbound = build_attempt(env, collector, init_data=DEMO_INIT_DATA)
        assert "PCR8" in assert_denied(env, unbound, Category.MEASUREMENT).reason
        tpm.measure_init_data(DEMO_INIT_DATA)
        attempt = build_attempt(env, collector, init_data=DEMO_INIT_DATA)
        response = send(env, attempt.request)
        assert open_released(attempt, response) == env.secret
        token = jwt.decode(response.result_token, options={"verify_signature": False})
        (submod,) = token["submods"].values()
        workload = submod["keybroker.workload"]
        assert workload["init_data_register"] == "PCR8" and workload["name"] == "demo"
        other = build_attempt(env, collector, init_data=DEMO_INIT_DATA + b"# changed\n")
        assert_denied(env, other, Category.MEASUREMENT)
