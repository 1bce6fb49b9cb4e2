"""``keybroker admin policy``: validate, diff (offline), and apply, history, rollback through a
real verifier's admin API with mutual-TLS identities (roles from the channel, never from an
argument)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.admin import AdminLab, admin, snp_policy, verifier_admin, write_broker_config

from keybroker.policy_store import PolicyStore

ADMINS = '{ secops = ["policy-admin"], build-pipeline = ["refvalue-admin"] }'


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[AdminLab]:
    with verifier_admin(tmp_path / "verifier", ("secops", "build-pipeline", "mallory"),
                        admins=ADMINS) as running:
        yield running


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _in_force(config: Path, name: str) -> bytes:
    store = PolicyStore(config.parent / "state.db")
    try:
        return store.in_force("AppraisalPolicy")[name].document
    finally:
        store.close()


def test_validate_good_documents(tmp_path: Path) -> None:
    """A good policy and the shipped example policies validate (exit 0, one ok line each)."""
    good = _write(tmp_path, "good.yaml", snp_policy())
    examples = sorted(Path("config/policies").resolve().glob("*.yaml"))
    result = admin("policy", "validate", good, *examples)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(examples)
    assert lines[0].startswith(f"ok {good}: AppraisalPolicy sim (sev-snp)")


def test_validate_reports_each_bad_file_with_line(tmp_path: Path) -> None:
    """Syntax, unknown field, bad CEL and wrong type each give file:line; exit 1."""
    syntax = _write(tmp_path, "syntax.yaml", snp_policy() + "  allow_debug: [false\n")
    unknown = _write(tmp_path, "unknown.yaml", snp_policy() + "  allow_everything: true\n")
    cel = _write(tmp_path, "cel.yaml", snp_policy() + (
        "conditions:\n  - name: bogus\n    when: \"evidence.no_such_claim == 1\"\n"))
    wrong = _write(tmp_path, "wrong.yaml", snp_policy() + "  allow_debug: 3\n")
    good = _write(tmp_path, "good.yaml", snp_policy())
    result = admin("policy", "validate", syntax, unknown, cel, good, wrong)
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 4, result.stderr
    assert errors[0].startswith(f"error MALFORMED: {syntax}:")
    assert f"{unknown}:8:" in errors[1] and "allow_everything" in errors[1]
    assert f"{cel}:10:" in errors[2] and "conditions" in errors[2]
    assert f"{wrong}:8:" in errors[3] and "boolean" in errors[3]
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines()
                                          if line.startswith(f"ok {good}")]


def test_schema_prints_published_json_schema() -> None:
    """`schema AppraisalPolicy` prints the JSON Schema with its published $id."""
    result = admin("policy", "schema", "AppraisalPolicy")
    assert result.returncode == 0
    assert json.loads(result.stdout)["$id"] == (
        "https://keybroker.dev/schemas/v1/appraisal-policy.json")


def test_apply_history_rollback(tmp_path: Path, lab: AdminLab) -> None:
    """apply v1, apply v2, rollback to 1: three versions by the authenticated principal, and
    v1's document is in force."""
    config = lab.config
    v1 = _write(tmp_path, "v1.yaml", snp_policy())
    v2 = _write(tmp_path, "v2.yaml", snp_policy(floor="{microcode: 200}"))
    common = ("--profile", lab.profiles["secops"])
    first = admin("policy", "apply", v1, *common, "--comment", "initial")
    assert first.returncode == 0, first.stderr
    assert "applied AppraisalPolicy sim@1" in first.stdout
    assert admin("policy", "apply", v2, *common, "--comment", "raise floor").returncode == 0
    back = admin("policy", "rollback", "sim", "--to", "1", "--service", "verifier", *common,
                 "--comment", "revert")
    assert back.returncode == 0, back.stderr
    assert "sim@3" in back.stdout

    history = admin("policy", "history", "sim", "--config", config)
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    assert lines[2].split()[2:4] == ["secops", "rollback(to"]
    assert '"revert"' in lines[2]
    as_json = json.loads(admin("policy", "history", "sim", "--config", config, "--json").stdout)
    assert [(v["version"], v["action"], v["rollback_of"]) for v in as_json] == [
        (1, "apply", None), (2, "apply", None), (3, "rollback", 1)]
    assert as_json[0]["digest"] == as_json[2]["digest"] != as_json[1]["digest"]
    assert _in_force(config, "sim") == v1.read_bytes()


def test_refused_apply_leaves_policy_in_force(tmp_path: Path, lab: AdminLab) -> None:
    """A broken document, an unchanged document and a bad rollback change nothing in force."""
    config = lab.config
    good = _write(tmp_path, "good.yaml", snp_policy())
    broken = _write(tmp_path, "broken.yaml", snp_policy() + (
        "conditions:\n  - name: typo\n    when: \"evidence.vmpl ==\"\n"))
    common = ("--profile", lab.profiles["secops"], "--comment", "c")
    assert admin("policy", "apply", good, *common).returncode == 0
    refused = admin("policy", "apply", broken, *common)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error MALFORMED:") and f"{broken}:" in refused.stderr
    unchanged = admin("policy", "apply", good, *common)
    assert unchanged.returncode == 1 and "identical" in unchanged.stderr
    assert admin("policy", "rollback", "sim", "--to", "7", "--service", "verifier",
                 *common).returncode == 1
    history = json.loads(admin("policy", "history", "sim", "--config", config, "--json").stdout)
    assert [v["version"] for v in history] == [1]
    assert _in_force(config, "sim") == good.read_bytes()


def test_author_without_role_is_refused(tmp_path: Path, lab: AdminLab) -> None:
    """A principal without policy-admin (or without any role) is refused PLATFORM_POLICY;
    nothing stored; --author is no longer accepted at all."""
    good = _write(tmp_path, "good.yaml", snp_policy())
    for who in ("build-pipeline", "mallory"):
        result = admin("policy", "apply", good, "--profile", lab.profiles[who], "--comment", "c")
        assert result.returncode == 1
        assert result.stderr.startswith("error PLATFORM_POLICY:")
    assert admin("policy", "history", "sim", "--config", lab.config).returncode == 1
    assert admin("policy", "apply", good, "--config", lab.config, "--author", "secops",
                 "--comment", "c").returncode == 2


def test_history_with_a_broker_config_reads_release_rules(tmp_path: Path) -> None:
    """Offline history with a broker config looks among release rules: an appraisal policy's
    name is not found there (exit 1, naming the kind)."""
    broker = write_broker_config(tmp_path / "broker", admins='{ secops = ["policy-admin"] }')
    result = admin("policy", "history", "sim", "--config", broker)
    assert result.returncode == 1 and "no ReleaseRules named 'sim'" in result.stderr


def test_diff_files_and_in_force(tmp_path: Path, lab: AdminLab) -> None:
    """diff prints a unified diff and the changed fields by dotted path, offline or vs in force."""
    old = _write(tmp_path, "old.yaml", snp_policy())
    new = _write(tmp_path, "new.yaml", snp_policy(floor="{bootloader: 3, tee: 0, snp: 8, "
                                                        "microcode: 200}") +
                 "description: raised\n")
    result = admin("policy", "diff", old, new)
    assert result.returncode == 0, result.stderr
    assert f"--- {old}" in result.stdout and f"+++ {new}" in result.stdout
    assert "# ~ snp.min_tcb.microcode: 115 -> 200" in result.stdout
    assert '# + description: "raised"' in result.stdout
    assert "# 2 field(s) changed" in result.stdout

    config = lab.config
    assert admin("policy", "apply", old, "--profile", lab.profiles["secops"],
                 "--comment", "c").returncode == 0
    vs_force = admin("policy", "diff", "sim", new, "--config", config, "--json")
    assert vs_force.returncode == 0, vs_force.stderr
    changes = json.loads(vs_force.stdout)["changes"]
    assert {(c["path"], c["change"]) for c in changes} == {
        ("snp.min_tcb.microcode", "changed"), ("description", "added")}
    seed = admin("policy", "diff", "seed", new, "--config", config)
    assert seed.returncode == 0 and "# ~ name: \"seed\" -> \"sim\"" in seed.stdout
    assert admin("policy", "diff", "nope", new, "--config", config).returncode == 1


def test_shipped_release_rules_validate() -> None:
    """The example release rules validate offline (applying rules goes to the broker's admin
    API: tests/integration/test_admin_api.py)."""
    shipped = admin("policy", "validate", Path("config/release-rules.yaml").resolve())
    assert shipped.returncode == 0, shipped.stderr


def test_apply_warns_about_a_reference_set_without_active_version(tmp_path: Path,
                                                                  lab: AdminLab) -> None:
    """A policy bound to a set with no active version applies, with a warning naming the
    document line and the set."""
    bound = _write(tmp_path, "bound.yaml", snp_policy(measurements="", extra=(
        "reference_values:\n  - claim: evidence.measurement\n    set: snp-launch\n")))
    result = admin("policy", "apply", bound, "--profile", lab.profiles["secops"],
                   "--comment", "bind to reference values")
    assert result.returncode == 0, result.stderr
    assert f"warning: {bound}:8: reference set 'snp-launch' has no active version" in (
        result.stderr)
