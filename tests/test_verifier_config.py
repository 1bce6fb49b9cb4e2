"""Verifier config loading and the start-up guard against test anchors (row 58)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keybroker.errors import Category, Malformed
from verifier.config import ensure_secure, load_config

CONFIG = Path(__file__).resolve().parent.parent / "config"


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
    assert config.policies == (CONFIG / "policies/snp-demo.toml",
                               CONFIG / "policies/snp-strict.toml")
    assert config.result_key == CONFIG / "result-key.pem"
    assert config.collateral == (CONFIG / "collateral",)
    assert config.simulator_roots == ()
    assert (config.result_ttl_seconds, config.audience) == (60, "keybroker-broker")
    ensure_secure(config, insecure=False)


def test_defaults(tmp_path: Path) -> None:
    """Only policies and result_key are required; the rest has documented defaults."""
    config = load_config(_write(tmp_path, 'policies = ["p.toml"]\nresult_key = "k.pem"\n'))
    assert config.policies == (tmp_path.resolve() / "p.toml",)
    assert config.listen == "127.0.0.1:50061"
    assert config.collateral == () and config.simulator_roots == ()


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
    ],
)
def test_bad_config_is_malformed(tmp_path: Path, body: str, key: str) -> None:
    """Unknown keys, wrong types, bad values and missing keys are MALFORMED naming the key."""
    with pytest.raises(Malformed) as exc:
        load_config(_write(tmp_path, body))
    assert exc.value.category is Category.MALFORMED
    assert key in exc.value.reason
    assert str(tmp_path) in exc.value.reason


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
