"""Integration on Azure confidential VMs with real processes: verifier and broker on loopback,
each VM a real swtpm whose paravisor is simulated (the HCL report in NV 0x01400001 regenerated
from the report data the agent writes to NV 0x01400002, the SNP report or TD quote under the
simulator CAs, the vTPM AK persistent at 0x81000003). Releases through the agent process
(az-snp-vtpm) and in process (az-tdx-vtpm), and the denials: a PCR that does not match, secure
boot off, an SNP report not from VMPL 0, an HCL report bound to another challenge (BINDING),
a quote over another challenge (FRESHNESS), and a paravisor that never took the report data
(the agent refuses to send it)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.agent_tls import secure_channel
from support.demo_stack import prepared_services
from support.imds import Answer, imds_server, json_answer
from support.release_attempts import (
    Attempt,
    Env,
    agent,
    assert_denied,
    build_attempt,
    open_released,
    send,
)

from attester_agent.collectors.azure_imds import THIM_PATH, Imds
from attester_agent.collectors.azure_vtpm import AzureVtpmCollector
from attester_agent.simulator.azure import (
    DEFAULT_VM_CONFIGURATION,
    SimulatedParavisor,
    simulated_azure_collector,
)
from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from attester_agent.simulator.tpm import SimulatedBoot, Swtpm, SwtpmLayout
from keybroker.errors import Category, Unavailable
from keybroker.strict_yaml import dump_yaml
from keybroker.v1 import broker_pb2_grpc, evidence_pb2
from keybroker_cli.demo_setup import (
    DEMO_MEASUREMENT,
    DEMO_MRTD,
    DemoLayout,
    agent_tls_args,
    put_secret,
)
from keybroker_cli.demo_tpm import DEMO_KERNEL, WRONG_KERNEL

pytestmark = pytest.mark.integration

SNP_KEY = "azsnp/key"
TDX_KEY = "aztdx/key"


def _policy(name: str, platform: str, measurement: bytes) -> bytes:
    """Measurement, secure boot and vTPM on, and PCR 4 of the demo kernel's boot."""
    pcr4 = SimulatedBoot(kernel_digest=DEMO_KERNEL).pcrs()[4].hex()
    return dump_yaml({
        "kind": "AppraisalPolicy", "name": name, "platform": platform,
        platform.replace("-", "_"): {
            "measurements": [measurement.hex()],
            "vm_configuration": {"secure-boot": True, "tpm-enabled": True},
            "pcrs": [{"pcr": 4, "values": [pcr4]}]}})


def _before_start(layout: DemoLayout) -> None:
    """Azure policies, rules and secrets; the simulator ARK pinned with its ASK (as AMD's
    real ASKs are pinned: Azure evidence carries only the VCEK)."""
    bundle = layout.sim / "ark-ask.pem"
    bundle.write_bytes(b"".join((layout.sim / f"{name}.pem").read_bytes()
                                for name in ("ark", "ask")))
    config = layout.verifier_config.read_text()
    roots = f'simulator_roots = ["{layout.sim / "ark.pem"}"]'
    assert roots in config
    config = config.replace(roots, f'simulator_roots = ["{bundle}"]')
    config = config.replace("policies = [", 'policies = ["policies/az-snp.yaml", '
                                             '"policies/az-tdx.yaml", ')
    layout.verifier_config.write_text(config)
    policies = layout.verifier / "policies"
    (policies / "az-snp.yaml").write_bytes(_policy("az-snp", "az-snp-vtpm", DEMO_MEASUREMENT))
    (policies / "az-tdx.yaml").write_bytes(_policy("az-tdx", "az-tdx-vtpm", DEMO_MRTD))
    with (layout.broker / "release-rules.yaml").open("a") as rules:
        for name, keys in (("az-snp", "azsnp/*"), ("az-tdx", "aztdx/*")):
            rules.write(f'  - name: {name}-keys\n    keys: "{keys}"\n    policy: {name}\n'
                        "    accept_warning: false\n")
    put_secret(layout, SNP_KEY, b"azure-snp-secret")
    put_secret(layout, TDX_KEY, b"azure-tdx-secret")


@dataclass
class Azure:
    env: Env
    machines: dict[str, Swtpm]  # demo kernel: "snp", "tdx"; another kernel: "wrong"

    def snp(self, machine: str = "snp", **kwargs: object) -> AzureVtpmCollector:
        return simulated_azure_collector(self.machines[machine].tcti, "az-snp-vtpm",
                                         self.env.layout.sim, measurement=DEMO_MEASUREMENT,
                                         **kwargs)  # type: ignore[arg-type]

    def tdx(self) -> AzureVtpmCollector:
        return simulated_azure_collector(self.machines["tdx"].tcti, "az-tdx-vtpm",
                                         self.env.layout.sim, mr_td=DEMO_MRTD)


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azure]:
    """The prepared deployment with the Azure policies, and three booted swtpm VMs."""
    root = tmp_path_factory.mktemp("azure-release")
    with prepared_services(root, before_start=_before_start) as served:
        channel = secure_channel(served.layout, served.broker.address)
        machines: dict[str, Swtpm] = {}
        try:
            for name, kernel in (("snp", DEMO_KERNEL), ("tdx", DEMO_KERNEL),
                                 ("wrong", WRONG_KERNEL)):
                machines[name] = Swtpm(SwtpmLayout(root / "vms" / name)).start()
                machines[name].boot(SimulatedBoot(kernel_digest=kernel))
            env = Env(served.layout, served.secret, served.verifier, served.broker, channel,
                      broker_pb2_grpc.KeyBrokerStub(channel))
            yield Azure(env, machines)
        finally:
            for tpm in machines.values():
                tpm.stop()
            channel.close()


def test_azure_snp_release_through_the_agent_process(azure: Azure) -> None:
    """`attester-agent get-secret --sim-tee az-snp-vtpm` writes the binding to the vTPM,
    sends the HCL report, the quote and the VCEK, and receives the secret."""
    env = azure.env
    out = env.layout.root / "azure-secret"
    done = agent("get-secret", "--broker", env.broker.address, *agent_tls_args(env.layout),
                 "--key-id", SNP_KEY, "--out", str(out), "--insecure-simulator",
                 "--simulator-dir", str(env.layout.sim), "--sim-tee", "az-snp-vtpm",
                 "--sim-measurement", DEMO_MEASUREMENT.hex(),
                 "--tpm-tcti", azure.machines["snp"].tcti)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"azure-snp-secret"


def test_azure_tdx_release_in_process(azure: Azure) -> None:
    """An az-tdx-vtpm VM: the TD quote of the HCL's TDREPORT through DCAP, then the vTPM."""
    collector = azure.tdx()
    assert collector.tee == evidence_pb2.TEE_TYPE_AZURE_TDX_VTPM
    attempt = build_attempt(azure.env, collector, key_id=TDX_KEY, init_data=b"")
    assert open_released(attempt, send(azure.env, attempt.request)) == b"azure-tdx-secret"


def test_azure_snp_vcek_from_the_metadata_service(azure: Azure) -> None:
    """The hardware path: the VCEK comes from the instance metadata service (THIM, here a
    local server giving the simulated VCEK), the paravisor regenerates the HCL report."""
    snp = SnpSimulator(SnpTestCa.load(azure.env.layout.sim), measurement=DEMO_MEASUREMENT)
    paravisor = SimulatedParavisor(azure.machines["snp"].tcti, snp=snp).provision()
    with imds_server() as imds:
        imds.answers[THIM_PATH] = Answer(json_answer({"vcekCert": paravisor.vcek().decode()}))
        collector = AzureVtpmCollector(azure.machines["snp"].tcti, imds=Imds(imds.url),
                                       after_write=paravisor.refresh)
        attempt = build_attempt(azure.env, collector, key_id=SNP_KEY, init_data=b"")
    assert [(method, path) for method, path, *_ in imds.seen] == [("GET", THIM_PATH)]
    assert open_released(attempt, send(azure.env, attempt.request)) == b"azure-snp-secret"


def test_azure_wrong_kernel_pcr_is_measurement(azure: Azure) -> None:
    """The VM that booted another kernel: its quoted PCR 4 is not accepted (MEASUREMENT)."""
    attempt = build_attempt(azure.env, azure.snp("wrong"), key_id=SNP_KEY, init_data=b"")
    err = assert_denied(azure.env, attempt, Category.MEASUREMENT)
    assert "PCR 4" in err.reason


def test_azure_secure_boot_off_is_platform_policy(azure: Azure) -> None:
    """The HCL's vm-configuration says secure boot is off (PLATFORM_POLICY)."""
    config = {**DEFAULT_VM_CONFIGURATION, "secure-boot": False}
    attempt = build_attempt(azure.env, azure.snp(vm_configuration=config), key_id=SNP_KEY,
                            init_data=b"")
    err = assert_denied(azure.env, attempt, Category.PLATFORM_POLICY)
    assert "secure-boot is not as required" in err.reason


def test_azure_snp_report_not_from_vmpl0_is_platform_policy(azure: Azure) -> None:
    """The paravisor's SNP report must come from VMPL 0 (PLATFORM_POLICY otherwise)."""
    attempt = build_attempt(azure.env, azure.snp(vmpl=1), key_id=SNP_KEY, init_data=b"")
    err = assert_denied(azure.env, attempt, Category.PLATFORM_POLICY)
    assert "not from VMPL 0" in err.reason


def _document(evidence: evidence_pb2.Evidence) -> dict[str, object]:
    doc: dict[str, object] = json.loads(evidence.az_snp_vtpm.evidence)
    return doc


def _splice(azure: Azure, *, hcl_from_other: bool) -> Attempt:
    """Evidence for the attempt's binding with one half taken from evidence the same VM made
    for another binding: the HCL report (``hcl_from_other``) or the vTPM quote."""
    collector = azure.snp()
    other = _document(collector.collect(b"\x5a" * 64))

    def mutate(evidence: evidence_pb2.Evidence) -> None:
        doc = _document(evidence)
        doc["hcl_report" if hcl_from_other else "tpm_quote"] = other[
            "hcl_report" if hcl_from_other else "tpm_quote"]
        evidence.az_snp_vtpm.evidence = json.dumps(doc).encode()
    return build_attempt(azure.env, collector, key_id=SNP_KEY, init_data=b"", mutate=mutate)


def test_azure_hcl_report_of_another_challenge_is_binding(azure: Azure) -> None:
    """The VM's genuine HCL report whose user-data is another challenge's binding, with a
    quote over this one: the runtime claims do not bind the request (BINDING)."""
    attempt = _splice(azure, hcl_from_other=True)
    assert_denied(azure.env, attempt, Category.BINDING)


def test_azure_quote_of_another_challenge_is_freshness(azure: Azure) -> None:
    """This request's HCL report with a quote the vTPM made for another challenge: the
    quote's extraData is not the binding (FRESHNESS)."""
    attempt = _splice(azure, hcl_from_other=False)
    err = assert_denied(azure.env, attempt, Category.FRESHNESS)
    assert "extraData" in err.reason


def test_azure_agent_refuses_an_hcl_report_without_its_report_data(azure: Azure) -> None:
    """A paravisor that never regenerates the HCL report: the agent reads it again until
    ``settle`` has passed, then refuses to send it (UNAVAILABLE), never evidence for another
    binding."""
    simulated = azure.snp()
    stale = AzureVtpmCollector(azure.machines["snp"].tcti, vcek=lambda: b"", settle=0.3)
    assert stale.tee == simulated.tee
    with pytest.raises(Unavailable) as exc:
        stale.collect(b"\x33" * 64)
    assert exc.value.expected == (b"\x33" * 64).hex()


def test_azure_evidence_is_trustee_v1_json(azure: Azure) -> None:
    """What the collector sends is Trustee's v1 document: hex quote and PCRs, base64url HCL
    report, the VCEK in PEM."""
    doc = _document(azure.snp().collect(b"\x11" * 64))
    assert doc["version"] == 1
    quote = doc["tpm_quote"]
    assert isinstance(quote, dict) and len(quote["pcrs"]) == 24
    assert bytes.fromhex(quote["pcrs"][4]) == SimulatedBoot(kernel_digest=DEMO_KERNEL).pcrs()[4]
    report = str(doc["hcl_report"])
    assert base64.urlsafe_b64decode(report + "=" * (-len(report) % 4))[:4] == b"HCLA"
    assert str(doc["vcek"]).startswith("-----BEGIN CERTIFICATE-----")


def test_azure_agent_usage_errors(azure: Azure, tmp_path: Path) -> None:
    """A swtpm without the insecure switch, a simulated Azure VM without --tpm-tcti, and an
    option of another simulated TEE are usage errors (exit 2)."""
    base = ["get-secret", "--broker", azure.env.broker.address,
            *agent_tls_args(azure.env.layout), "--key-id", SNP_KEY, "--out", str(tmp_path / "x")]
    tcti = azure.machines["snp"].tcti
    cases = [
        (["--collector", "azure-vtpm", "--tpm-tcti", tcti], "--insecure-simulator"),
        (["--insecure-simulator", "--simulator-dir", str(azure.env.layout.sim), "--sim-tee",
          "az-snp-vtpm"], "needs --tpm-tcti"),
        (["--insecure-simulator", "--simulator-dir", str(azure.env.layout.sim), "--sim-tee",
          "az-snp-vtpm", "--tpm-tcti", tcti, "--sim-mrtd", "00" * 48], "--sim-mrtd"),
        (["--collector", "azure-vtpm", "--tpm-pcrs", "1,2"], "does not apply"),
    ]
    for extra, message in cases:
        done = agent(*base, *extra)
        assert done.returncode == 2, (extra, done.stderr)
        assert message in done.stderr, (extra, done.stderr)
