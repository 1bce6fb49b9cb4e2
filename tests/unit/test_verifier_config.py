"""Verifier config loading and the start-up guard against test anchors (row 58)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.paths import CONFIG

from keybroker.errors import Category, KeybrokerError, Malformed
from verifier.config import ensure_secure, load_config
from verifier.dcap.trust import load_simulator_roots


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "verifier.toml"
    path.write_text("[verifier]\n" + body)
    return path


def _self_signed(org: str) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA384()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_example_config_loads_with_paths_relative_to_file() -> None:
    """config/verifier.toml loads; its paths resolve against config/ and it is secure."""
    config = load_config(CONFIG / "verifier.toml")
    assert config.listen == "127.0.0.1:50061"
    assert config.policies == (CONFIG / "policies/snp-demo.yaml",
                               CONFIG / "policies/snp-strict.yaml",
                               CONFIG / "policies/tdx-demo.yaml",
                               CONFIG / "policies/sgx-demo.yaml",
                               CONFIG / "policies/tpm-demo.yaml",
                               CONFIG / "policies/maa-demo.yaml",
                               CONFIG / "policies/azsnp-demo.yaml",
                               CONFIG / "policies/aztdx-demo.yaml",
                               CONFIG / "policies/nitro-demo.yaml")
    assert config.result_key == CONFIG / "result-key.pem"
    assert config.collateral == (CONFIG / "collateral",)
    assert config.simulator_roots == () and config.simulator_intel_roots == ()
    assert (config.result_ttl_seconds, config.audience) == (60, "keybroker-broker")
    ensure_secure(config, insecure=False)


def test_defaults(tmp_path: Path) -> None:
    """Only policies and result_key are required; the rest has documented defaults."""
    config = load_config(_write(tmp_path, 'policies = ["p.toml"]\nresult_key = "k.pem"\n'))
    assert config.policies == (tmp_path.resolve() / "p.toml",)
    assert config.listen == "127.0.0.1:50061"
    assert config.collateral == () and config.simulator_roots == ()
    assert config.simulator_intel_roots == ()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('policies = ["p"]\nresult_key = "k"\nsimulator = true\n', "verifier.simulator"),
        ('policies = "p"\nresult_key = "k"\n', "verifier.policies"),
        ('policies = ["p"]\nresult_key = "k"\nresult_ttl_seconds = "60"\n',
         "verifier.result_ttl_seconds"),
        ('policies = ["p"]\nresult_key = "k"\nresult_ttl_seconds = true\n',
         "verifier.result_ttl_seconds"),
        ('policies = ["p"]\nresult_key = "k"\nresult_ttl_seconds = 0\n',
         "verifier.result_ttl_seconds"),
        ('policies = [1]\nresult_key = "k"\n', "verifier.policies"),
        ('policies = []\nresult_key = "k"\n', "verifier.policies"),
        ('policies = ["p"]\n', "verifier.result_key"),
        ('policies = ["p"]\nresult_key = "k"\nlisten = "nohost"\n', "verifier.listen"),
        ('policies = ["p"]\nresult_key = "k"\nsimulator_intel_roots = "r.pem"\n',
         "verifier.simulator_intel_roots"),
        ('policies = ["p"]\nresult_key = "k"\nsimulator_intel_roots = [""]\n',
         "verifier.simulator_intel_roots"),
        ('policies = ["p"]\nresult_key = "k"\nstate_db = ""\n', "verifier.state_db"),
        ('policies = ["p"]\nresult_key = "k"\nstate_db = 1\n', "verifier.state_db"),
        ('policies = ["p"]\nresult_key = "k"\nrecord_days = 91\n', "verifier.record_days"),
        ('policies = ["p"]\nresult_key = "k"\nrecord_days = -1\n', "verifier.record_days"),
        ('policies = ["p"]\nresult_key = "k"\nrecord_days = 7.0\n', "verifier.record_days"),
        ('policies = ["p"]\nresult_key = "k"\npolicy_poll_seconds = 0.05\n',
         "verifier.policy_poll_seconds"),
        ('policies = ["p"]\nresult_key = "k"\npolicy_poll_seconds = true\n',
         "verifier.policy_poll_seconds"),
        ('policies = ["p"]\nresult_key = "k"\nadmins = ["secops"]\n', "verifier.admins"),
        ('policies = ["p"]\nresult_key = "k"\nadmins = { secops = ["root"] }\n',
         "verifier.admins"),
        ('policies = ["p"]\nresult_key = "k"\nadmins = { secops = "policy-admin" }\n',
         "verifier.admins"),
        ('policies = ["p"]\nresult_key = "k"\n'
         'admins = { secops = ["policy-admin", "policy-admin"] }\n', "verifier.admins"),
        ('policies = ["p"]\nresult_key = "k"\nreference_providers = ["v"]\n',
         "verifier.reference_providers[0]"),
        ('policies = ["p"]\nresult_key = "k"\n'
         'reference_providers = [{ name = "v", key = "v.pem" }]\n',
         "verifier.reference_providers[0].sets"),
        ('policies = ["p"]\nresult_key = "k"\n'
         'reference_providers = [{ name = "v", key = "v.pem", sets = [] }]\n',
         "verifier.reference_providers[0].sets"),
        ('policies = ["p"]\nresult_key = "k"\n'
         'reference_providers = [{ name = "v", key = "v.pem", sets = ["*"], url = "x" }]\n',
         "verifier.reference_providers[0].url"),
        ('policies = ["p"]\nresult_key = "k"\n'
         'reference_providers = [{ name = "v w", key = "v.pem", sets = ["*"] }]\n',
         "verifier.reference_providers[0].name"),
        ('policies = ["p"]\nresult_key = "k"\n'
         'reference_providers = [{ name = "v", key = "a.pem", sets = ["*"] },'
         ' { name = "v", key = "b.pem", sets = ["*"] }]\n',
         "verifier.reference_providers[1].name"),
    ],
)
def test_bad_config_is_malformed(tmp_path: Path, body: str, key: str) -> None:
    """Unknown keys, wrong types, bad values and missing keys are MALFORMED naming the key."""
    with pytest.raises(Malformed) as exc:
        load_config(_write(tmp_path, body))
    assert exc.value.category is Category.MALFORMED
    assert key in exc.value.reason
    assert str(tmp_path) in exc.value.reason


def test_administration_keys(tmp_path: Path) -> None:
    """state_db, record_days, poll interval, admins and providers load with paths resolved."""
    config = load_config(_write(tmp_path, (
        'policies = ["p"]\nresult_key = "k"\nstate_db = "db/state.db"\nrecord_days = 0\n'
        'policy_poll_seconds = 2\n'
        'admins = { secops = ["policy-admin", "refvalue-admin"], build-pipeline = [] }\n'
        '[[verifier.reference_providers]]\nname = "fw-vendor"\nkey = "keys/fw.pem"\n'
        'sets = ["snp-*"]\n')))
    assert config.state_db == tmp_path.resolve() / "db/state.db"
    assert (config.record_days, config.policy_poll_seconds) == (0, 2.0)
    assert dict(config.admins) == {"secops": frozenset({"policy-admin", "refvalue-admin"}),
                                   "build-pipeline": frozenset()}
    (provider,) = config.reference_providers
    assert provider.name == "fw-vendor"
    assert provider.key == tmp_path.resolve() / "keys/fw.pem"
    assert provider.covers("snp-launch") and not provider.covers("tdx-mrtd")


def test_administration_defaults(tmp_path: Path) -> None:
    """Without the keys: state db beside the config, 7 days, 1 s poll, no admins, no providers."""
    config = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'))
    assert config.state_db == tmp_path.resolve() / "verifier-state.db"
    assert (config.record_days, config.policy_poll_seconds) == (7, 1.0)
    assert dict(config.admins) == {} and config.reference_providers == ()


def test_other_tables_are_malformed(tmp_path: Path) -> None:
    """A config with tables other than [verifier] is MALFORMED."""
    path = tmp_path / "c.toml"
    path.write_text('[broker]\nlisten = "x:1"\n')
    with pytest.raises(Malformed):
        load_config(path)


def test_row58_simulator_roots_refused_without_flag(tmp_path: Path) -> None:
    """Row 58: simulator_roots without --insecure-simulator refuses to start."""
    (tmp_path / "ark.pem").write_bytes(_self_signed("keybroker simulator (INSECURE TEST ROOT)"))
    config = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                          'simulator_roots = ["ark.pem"]\n'))
    with pytest.raises(Malformed) as exc:
        ensure_secure(config, insecure=False)
    assert exc.value.rule == "startup.insecure_guard"
    assert "--insecure-simulator" in exc.value.reason
    ensure_secure(config, insecure=True)


def test_nitro_settings(tmp_path: Path) -> None:
    """The Nitro window defaults to 300 s / 30 s and is range-checked; Nitro simulator roots
    are refused without the insecure switch (row 58)."""
    base = 'policies = ["p"]\nresult_key = "k"\n'
    config = load_config(_write(tmp_path, base))
    assert (config.nitro_max_age_seconds, config.nitro_max_skew_seconds) == (300, 30)
    for bad in ("nitro_max_age_seconds = 0\n", "nitro_max_skew_seconds = 601\n",
                "nitro_max_age_seconds = true\n"):
        with pytest.raises(Malformed, match="nitro_max"):
            load_config(_write(tmp_path, base + bad))
    config = load_config(_write(tmp_path, base + 'simulator_nitro_roots = ["root.pem"]\n'))
    with pytest.raises(Malformed) as exc:
        ensure_secure(config, insecure=False)
    assert "simulator_nitro_roots" in exc.value.reason
    ensure_secure(config, insecure=True)
    (tmp_path / "sim-root.pem").write_bytes(
        _self_signed("keybroker simulator (INSECURE TEST ROOT)"))
    config = load_config(_write(tmp_path, base + 'nitro_roots = ["sim-root.pem"]\n'))
    with pytest.raises(Malformed) as hidden:  # a test root passed off as a production one
        ensure_secure(config, insecure=False)
    assert "sim-root.pem" in str(hidden.value.actual)


def test_workers_setting(tmp_path: Path) -> None:
    """``workers`` defaults to the number of cores and is range-checked (0 = in-process)."""
    base = 'policies = ["p"]\nresult_key = "k"\n'
    assert load_config(_write(tmp_path, base)).workers == (os.cpu_count() or 1)
    assert load_config(_write(tmp_path, base + "workers = 0\n")).workers == 0
    for bad in ("workers = -1\n", "workers = 65\n", 'workers = "2"\n'):
        with pytest.raises(Malformed, match="workers"):
            load_config(_write(tmp_path, base + bad))


def test_row58_simulator_certificate_in_collateral_refused(tmp_path: Path) -> None:
    """Row 58: a test-root certificate hidden in the collateral refuses to start."""
    (tmp_path / "collateral").mkdir()
    (tmp_path / "collateral" / "amd.pem").write_bytes(_self_signed("Advanced Micro Devices"))
    (tmp_path / "collateral" / "sub").mkdir()
    sneaky = tmp_path / "collateral" / "sub" / "root.der"
    sneaky.write_bytes(x509.load_pem_x509_certificate(
        _self_signed("keybroker simulator (INSECURE TEST ROOT)")).public_bytes(
        serialization.Encoding.DER))
    config = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                          'collateral = ["collateral"]\n'))
    with pytest.raises(Malformed) as exc:
        ensure_secure(config, insecure=False)
    assert str(sneaky) in exc.value.actual
    ensure_secure(config, insecure=True)


def test_genuine_collateral_passes_guard(tmp_path: Path) -> None:
    """Collateral without test certificates passes the guard."""
    (tmp_path / "collateral").mkdir()
    (tmp_path / "collateral" / "amd.pem").write_bytes(_self_signed("Advanced Micro Devices"))
    (tmp_path / "collateral" / "notes.txt").write_text("not a certificate")
    config = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                          'collateral = ["collateral"]\n'))
    ensure_secure(config, insecure=False)


def _intel_style_root(org: str) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key


def test_row58_simulator_intel_roots_refused_without_flag(tmp_path: Path) -> None:
    """Row 58: simulator_intel_roots without --insecure-simulator refuses to start."""
    pem, _ = _intel_style_root("keybroker simulator (INSECURE TEST ROOT)")
    (tmp_path / "intel-root.pem").write_bytes(pem)
    config = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                          'simulator_intel_roots = ["intel-root.pem"]\n'))
    assert config.simulator_intel_roots == (tmp_path.resolve() / "intel-root.pem",)
    with pytest.raises(Malformed) as exc:
        ensure_secure(config, insecure=False)
    assert exc.value.rule == "startup.insecure_guard"
    assert "simulator_intel_roots" in exc.value.reason
    ensure_secure(config, insecure=True)


def test_intel_roots_load_from_pem_and_der_as_insecure(tmp_path: Path) -> None:
    """simulator_intel_roots files (PEM or DER) load as INSECURE Intel trust stores."""
    pem, _ = _intel_style_root("keybroker simulator (INSECURE TEST ROOT)")
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    (tmp_path / "a.pem").write_bytes(pem)
    (tmp_path / "b.der").write_bytes(der)
    config = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                          'simulator_intel_roots = ["a.pem", "b.der"]\n'))
    stores = load_simulator_roots(config)
    assert len(stores) == 2 and all(s.insecure for s in stores)
    assert stores[0].root.der == stores[1].root.der == der


def test_intel_roots_that_are_not_roots_refuse_the_start(tmp_path: Path) -> None:
    """A non-certificate file is MALFORMED; a certificate that is not an Intel-style root is
    refused (CHAIN_UNTRUSTED)."""
    (tmp_path / "junk.pem").write_text("not a certificate")
    (tmp_path / "amd.pem").write_bytes(_self_signed("Advanced Micro Devices"))
    junk = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                        'simulator_intel_roots = ["junk.pem"]\n'))
    with pytest.raises(Malformed) as exc:
        load_simulator_roots(junk)
    assert exc.value.rule == "config.simulator_intel_roots"
    amd = load_config(_write(tmp_path, 'policies = ["p"]\nresult_key = "k"\n'
                                       'simulator_intel_roots = ["amd.pem"]\n'))
    with pytest.raises(KeybrokerError) as refused:
        load_simulator_roots(amd)
    assert refused.value.category is Category.CHAIN_UNTRUSTED
