"""The example files in config/ load with the real loaders (they are documentation too)."""

from __future__ import annotations

import pytest
from support.paths import CONFIG

from attester_agent.simulator.dcap import (
    DEFAULT_MR_ENCLAVE,
    DEFAULT_MR_SIGNER,
    TdBoot,
    mr_td_for,
)
from attester_agent.simulator.tpm import DEFAULT_KERNEL as DEMO_KERNEL
from attester_agent.simulator.tpm import SimulatedBoot
from broker.config import load_config
from broker.rules import load_rules
from keybroker.errors import Category, KeybrokerError
from verifier.config import load_config as load_verifier_config
from verifier.dcap.policy import sgx_section, tdx_section
from verifier.policy.compile import load_policy
from verifier.tpm.policy import tpm_section


def test_example_broker_config_loads() -> None:
    """config/broker.toml loads; relative paths resolve next to the file; insecure is off."""
    config = load_config(CONFIG / "broker.toml")
    assert config.database == CONFIG / "broker.db"
    assert config.release_rules == CONFIG / "release-rules.yaml"
    assert config.verifier_alg == "ES256"
    assert config.accept_insecure_results is False
    tls = CONFIG / "tls"
    assert config.tls is not None and config.tls.cert == tls / "broker.pem"
    assert config.verifier_tls is not None and config.verifier_tls.ca == tls / "ca.pem"
    assert config.verifier_tls.cert == tls / "broker-client.pem"


def test_example_release_rules_load() -> None:
    """config/release-rules.yaml maps demo/* and prod/* to their policies; others match none."""
    rules = load_rules(CONFIG / "release-rules.yaml")
    assert [r.policy for r in rules.requirements(["demo/db-password"])] == ["snp-demo"]
    assert [r.policy for r in rules.requirements(["prod/api"])] == ["snp-strict"]
    with pytest.raises(KeybrokerError) as exc:
        rules.requirements(["other/key"])
    assert exc.value.category is Category.MALFORMED
    assert exc.value.rule == "release.unknown-key"


def test_example_tdx_policy_loads() -> None:
    """config/policies/tdx-demo.yaml is a strict TDX policy for the simulator's default TD."""
    policy = load_policy(CONFIG / "policies" / "tdx-demo.yaml", version=1)
    tdx = tdx_section(policy)
    assert policy.policy_id == "tdx-demo@1"
    assert tdx.mrtd == frozenset({mr_td_for(TdBoot())})
    assert tdx.tcb.accepted_statuses == frozenset({"UpToDate"})
    assert tdx.tcb.out_of_date_grace_until is None and not tdx.tcb.allow_missing_crl
    assert tdx.require_sept_ve_disable and not tdx.allow_migratable
    assert not policy.workload.require_init_data


def test_example_sgx_policy_loads() -> None:
    """config/policies/sgx-demo.yaml accepts the SGX simulator's default enclave and signer."""
    sgx = sgx_section(load_policy(CONFIG / "policies" / "sgx-demo.yaml"))
    assert sgx.mrenclave == frozenset({DEFAULT_MR_ENCLAVE})
    assert sgx.signer is not None and sgx.signer.mrsigner == frozenset({DEFAULT_MR_SIGNER})
    assert (sgx.signer.isv_prod_id, sgx.signer.min_isv_svn) == (1, 1)


def test_example_tpm_policy_loads() -> None:
    """config/policies/tpm-demo.yaml pins PCRs 0, 4 and 7 of the demo machine's simulated boot
    (computed independently by the simulator) and requires the log and secure boot."""
    policy = load_policy(CONFIG / "policies" / "tpm-demo.yaml", version=1)
    tpm = tpm_section(policy)
    boot = SimulatedBoot(kernel_digest=DEMO_KERNEL).pcrs()
    assert tpm.pcrs == {"sha256": {pcr: frozenset({boot[pcr]}) for pcr in (0, 4, 7)}}
    assert tpm.ak_trust == frozenset({"enrolled"})
    assert tpm.require_event_log and tpm.secure_boot and tpm.ima is None


def test_example_verifier_config_lists_every_example_policy() -> None:
    """config/verifier.toml names every policy in config/policies and no simulator roots."""
    config = load_verifier_config(CONFIG / "verifier.toml")
    assert set(config.policies) == set((CONFIG / "policies").glob("*.yaml"))
    assert config.simulator_roots == () and config.simulator_intel_roots == ()
    assert config.tls is not None and config.tls.ca == CONFIG / "tls" / "ca.pem"
    assert config.allowed_clients == frozenset({"broker-client"})
