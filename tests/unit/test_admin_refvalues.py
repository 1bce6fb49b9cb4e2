"""``keybroker admin refvalues``: admin and JWS imports, provider keys, life cycle, through a
real verifier's admin API (mutual-TLS identities)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.api_jws import PyJWS
from support.admin import MEASUREMENT, AdminLab, admin, verifier_admin

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


PRINCIPALS = ("secops", "release-team", "build-pipeline")
ADMINS = ('{ secops = ["policy-admin"], release-team = ["refvalue-admin"], '
          'build-pipeline = ["refvalue-admin"] }')


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[AdminLab, ec.EllipticCurvePrivateKey]]:
    directory = tmp_path / "verifier"
    directory.mkdir()
    key, providers = _provider(directory, '["snp-*"]')
    with verifier_admin(directory, PRINCIPALS, admins=ADMINS, providers=providers) as running:
        yield running, key


def _listed(lab: AdminLab) -> list[dict[str, object]]:
    result = admin("refvalues", "list", "--config", lab.config, "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def test_admin_yaml_import_needs_refvalue_admin(
        tmp_path: Path, lab: tuple[AdminLab, ec.EllipticCurvePrivateKey]) -> None:
    """A YAML import by a policy-admin is refused; by a refvalue-admin it is staged, with the
    authenticated principal as its author."""
    running, _ = lab
    doc = tmp_path / "refs.yaml"
    doc.write_text(_yaml())
    refused = admin("refvalues", "import", doc, "--profile", running.profiles["secops"],
                    "--comment", "c")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error PLATFORM_POLICY:") and "may not" in refused.stderr
    assert _listed(running) == []
    ok = admin("refvalues", "import", doc, "--profile", running.profiles["release-team"],
               "--comment", "firmware 2026.02")
    assert ok.returncode == 0, ok.stderr
    assert "snp-launch@1 staged (admin:release-team)" in ok.stdout
    (listed,) = _listed(running)
    assert (listed["state"], listed["provenance"]) == ("staged", "admin:release-team")


def test_jws_import_with_provider_key(
        tmp_path: Path, lab: tuple[AdminLab, ec.EllipticCurvePrivateKey]) -> None:
    """A manifest signed by the configured provider key imports as staged, with jws
    provenance."""
    running, key = lab
    manifest = _jws(tmp_path / "snp.jws", key, DOCUMENT)
    result = admin("refvalues", "import", manifest, "--profile",
                   running.profiles["build-pipeline"], "--comment", "vendor release")
    assert result.returncode == 0, result.stderr
    (listed,) = _listed(running)
    assert str(listed["provenance"]).startswith("jws:fw-vendor:")
    assert listed["state"] == "staged"


def test_jws_with_wrong_key_or_set_is_refused(
        tmp_path: Path, lab: tuple[AdminLab, ec.EllipticCurvePrivateKey]) -> None:
    """A manifest signed by another key is SIG_INVALID; a set outside the provider's patterns
    is CHAIN_UNTRUSTED; nothing is stored."""
    running, key = lab
    who = ("--profile", running.profiles["build-pipeline"])
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = _jws(tmp_path / "forged.jws", stranger, DOCUMENT)
    result = admin("refvalues", "import", forged, *who, "--comment", "c")
    assert result.returncode == 1
    assert result.stderr.startswith("error SIG_INVALID:")
    other = _jws(tmp_path / "tdx.jws", key, {**DOCUMENT, "name": "tdx-mrtd"})
    result = admin("refvalues", "import", other, *who, "--comment", "c")
    assert result.returncode == 1
    assert result.stderr.startswith("error CHAIN_UNTRUSTED:")
    assert _listed(running) == []


def test_lifecycle(tmp_path: Path, lab: tuple[AdminLab, ec.EllipticCurvePrivateKey]) -> None:
    """staged -> active -> deprecated -> retired, each by a refvalue-admin; a retired version
    cannot come back, and lifecycle changes need the role."""
    running, _ = lab
    doc = tmp_path / "refs.yaml"
    doc.write_text(_yaml())
    common = ("--profile", running.profiles["release-team"], "--comment", "c")
    assert admin("refvalues", "import", doc, *common).returncode == 0
    denied = admin("refvalues", "activate", "snp-launch", "1", "--profile",
                   running.profiles["secops"], "--comment", "c")
    assert denied.returncode == 1 and "may not" in denied.stderr
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
        assert _listed(running)[0]["state"] == state
    again = admin("refvalues", "activate", "snp-launch", "1", *common)
    assert again.returncode == 1 and again.stderr.startswith("error MALFORMED:")
    text = admin("refvalues", "list", "snp-launch", "--config", running.config)
    assert text.stdout.startswith("snp-launch@1 retired")


def test_changes_need_the_admin_api(tmp_path: Path) -> None:
    """deprecate needs --retire-at (exit 2); an import or a state change without the admin API
    (the old --config/--author form) is a usage error: identity never comes from an
    argument."""
    result = admin("refvalues", "deprecate", "snp-launch", "1", "--comment", "c")
    assert result.returncode == 2
    doc = tmp_path / "refs.yaml"
    doc.write_text(_yaml())
    result = admin("refvalues", "import", doc, "--comment", "c")
    assert result.returncode == 2 and "--profile" in result.stderr
    result = admin("refvalues", "import", doc, "--config", tmp_path / "v.toml", "--author",
                   "x", "--comment", "c")
    assert result.returncode == 2
