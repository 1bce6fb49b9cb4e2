"""``keybroker admin refvalues``: admin and JWS imports, provider keys, life cycle (real
processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.api_jws import PyJWS
from support.admin import MEASUREMENT, admin, write_verifier_config

ADMINS = '{ secops = ["policy-admin"], release-team = ["refvalue-admin"] }'
DOCUMENT = {
    "kind": "ReferenceValues",
    "name": "snp-launch",
    "values": [{"name": "ovmf-2026.02", "value": MEASUREMENT.hex(),
                "not_before": "2026-01-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z"}],
}


def _yaml(name: str = "snp-launch") -> str:
    return (f"kind: ReferenceValues\nname: {name}\nvalues:\n"
            f"  - name: ovmf-2026.02\n    value: \"{MEASUREMENT.hex()}\"\n"
            "    not_before: 2026-01-01T00:00:00Z\n    not_after: 2027-01-01T00:00:00Z\n")


def _provider(directory: Path, sets: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "vendor.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    table = ("[[verifier.reference_providers]]\nname = \"fw-vendor\"\nkey = \"vendor.pem\"\n"
             f"sets = {sets}\n")
    return key, table


def _jws(path: Path, key: ec.EllipticCurvePrivateKey, document: dict[str, object]) -> Path:
    token = PyJWS().encode(json.dumps(document).encode(), key, algorithm="ES256")
    path.write_text(token)
    return path


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    directory = tmp_path / "verifier"
    directory.mkdir()
    key, providers = _provider(directory, '["snp-*"]')
    return write_verifier_config(directory, admins=ADMINS, providers=providers), key


def _listed(config: Path) -> list[dict[str, object]]:
    result = admin("refvalues", "list", "--config", config, "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def test_admin_yaml_import_needs_refvalue_admin(
        tmp_path: Path, lab: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """A YAML import by a policy-admin is refused; by a refvalue-admin it is staged."""
    config, _ = lab
    doc = tmp_path / "refs.yaml"
    doc.write_text(_yaml())
    refused = admin("refvalues", "import", doc, "--config", config, "--author", "secops",
                    "--comment", "c")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error PLATFORM_POLICY:") and "not authorised" in (
        refused.stderr)
    assert _listed(config) == []
    ok = admin("refvalues", "import", doc, "--config", config, "--author", "release-team",
               "--comment", "firmware 2026.02")
    assert ok.returncode == 0, ok.stderr
    assert "snp-launch@1 staged (admin:release-team)" in ok.stdout
    (listed,) = _listed(config)
    assert (listed["state"], listed["provenance"]) == ("staged", "admin:release-team")


def test_jws_import_with_provider_key(
        tmp_path: Path, lab: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """A manifest signed by the configured provider key imports (no role needed) as staged,
    with jws provenance."""
    config, key = lab
    manifest = _jws(tmp_path / "snp.jws", key, DOCUMENT)
    result = admin("refvalues", "import", manifest, "--config", config, "--author",
                   "build-pipeline", "--comment", "vendor release")
    assert result.returncode == 0, result.stderr
    (listed,) = _listed(config)
    assert str(listed["provenance"]).startswith("jws:fw-vendor:")
    assert listed["state"] == "staged"


def test_jws_with_wrong_key_or_set_is_refused(
        tmp_path: Path, lab: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """A manifest signed by another key is SIG_INVALID; a set outside the provider's patterns
    is CHAIN_UNTRUSTED; nothing is stored."""
    config, key = lab
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = _jws(tmp_path / "forged.jws", stranger, DOCUMENT)
    result = admin("refvalues", "import", forged, "--config", config, "--author", "x",
                   "--comment", "c")
    assert result.returncode == 1
    assert result.stderr.startswith("error SIG_INVALID:")
    other = _jws(tmp_path / "tdx.jws", key, {**DOCUMENT, "name": "tdx-mrtd"})
    result = admin("refvalues", "import", other, "--config", config, "--author", "x",
                   "--comment", "c")
    assert result.returncode == 1
    assert result.stderr.startswith("error CHAIN_UNTRUSTED:")
    assert _listed(config) == []


def test_lifecycle(tmp_path: Path, lab: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """staged -> active -> deprecated -> retired, each by a refvalue-admin; a retired version
    cannot come back, and lifecycle changes need the role."""
    config, _ = lab
    doc = tmp_path / "refs.yaml"
    doc.write_text(_yaml())
    common = ("--config", config, "--author", "release-team", "--comment", "c")
    assert admin("refvalues", "import", doc, *common).returncode == 0
    denied = admin("refvalues", "activate", "snp-launch", "1", "--config", config,
                   "--author", "secops", "--comment", "c")
    assert denied.returncode == 1 and "not authorised" in denied.stderr
    steps = [
        (("activate", "snp-launch", "1"), "staged -> active", "active"),
        (("deprecate", "snp-launch", "1", "--retire-at", "2099-01-01T00:00:00Z"),
         "active -> deprecated (retires 2099-01-01T00:00:00Z)", "deprecated"),
        (("retire", "snp-launch", "1"), "deprecated -> retired", "retired"),
    ]
    for args, printed, state in steps:
        result = admin("refvalues", *args, *common)
        assert result.returncode == 0, result.stderr
        assert printed in result.stdout
        assert _listed(config)[0]["state"] == state
    again = admin("refvalues", "activate", "snp-launch", "1", *common)
    assert again.returncode == 1 and again.stderr.startswith("error MALFORMED:")
    text = admin("refvalues", "list", "snp-launch", "--config", config)
    assert text.stdout.startswith("snp-launch@1 retired")


def test_deprecate_without_retire_at_is_usage_and_broker_config_refused(
        tmp_path: Path, lab: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """deprecate needs --retire-at (exit 2); reference values with a broker config exit 2."""
    config, _ = lab
    result = admin("refvalues", "deprecate", "snp-launch", "1", "--config", config,
                   "--author", "release-team", "--comment", "c")
    assert result.returncode == 2
    broker = tmp_path / "broker.toml"
    broker.write_text("[broker]\n")
    doc = tmp_path / "refs.yaml"
    doc.write_text(_yaml())
    result = admin("refvalues", "import", doc, "--config", broker, "--author", "x",
                   "--comment", "c")
    assert result.returncode == 2
