"""README.md's operator sections run as written: every shell command of "Running the
processes yourself" (a simulator deployment prepared, started, attested, denied, audited and
stopped by hand; the example configs initialised; evidence verified offline), in order, on a
scratch copy of the repository, with the output and exit codes the README shows.

The conventions are those of ``docs/policies.md`` (``support.doc_commands``). Shell blocks in
these sections must be ``console`` blocks (so every one runs); syntax summaries are ``text``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from support.doc_commands import FENCE, VENV_BIN, Command, check, parse, run
from support.paths import ROOT

README = ROOT / "README.md"
OPERATOR_SECTIONS = ("## Running the processes yourself",)
SHELL_KINDS = frozenset({"console", "sh", "bash", "shell", "zsh"})
# What the operator flow must show (a command containing each phrase).
REQUIRED = (
    "keybroker demo --workdir deploy --prepare-only",
    "keybroker verifier serve", "keybroker broker serve", "--pid-file",
    "keybroker status", "--wait",
    "attester-agent get-secret", "--out secret.bin",
    "keybroker broker audit list", "admin audit verify",
    "kill $(cat deploy/broker.pid)",
    "keybroker tls init", "keybroker verifier init", "keybroker broker init",
    "admin policy validate", "broker secret put",
    "keybroker verify", "--tee snp", "--tee tdx",
)
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache",
                              ".pytest_cache", "*.egg-info", "build", "dist")


def operator_text() -> str:
    """README.md with everything outside the operator sections blanked (line numbers kept)."""
    out, keep = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            keep = line.rstrip() in OPERATOR_SECTIONS
        out.append(line if keep else "")
    return "\n".join(out)


def test_readme_operator_sections_are_all_runnable() -> None:
    """Every shell block of the operator sections is a console block (so the test below runs
    it), the flow shows every step an operator needs, and only ``text`` blocks are left."""
    text = operator_text()
    kinds = [m.group("info").split()[0] for line in text.splitlines()
             if (m := FENCE.match(line)) and m.group("info").strip()]
    assert kinds, "no code blocks in the operator sections"
    for kind in kinds:
        assert kind in ("console", "text"), f"README operator block of kind {kind!r}"
    commands = [s.text for s in parse(text) if isinstance(s, Command)]
    for phrase in REQUIRED:
        assert any(phrase in c for c in commands), f"README flow has no command with {phrase!r}"
    assert any(s.exit_code == 1 for s in parse(text) if isinstance(s, Command))


@pytest.mark.integration
@pytest.mark.slow
def test_readme_operator_flow_runs_as_written(tmp_path: Path) -> None:
    """Each command of the operator sections exits and prints as README.md says."""
    assert (VENV_BIN / "keybroker").exists(), f"no keybroker console script in {VENV_BIN}"
    work = tmp_path / "repo"
    shutil.copytree(ROOT, work, ignore=SKIP)
    steps = [s for s in parse(operator_text()) if isinstance(s, Command)]
    ran = 0
    try:
        for step in steps:
            code, output = run(step, work, {})
            check(step, code, output, "README.md", {})
            ran += 1
    finally:  # the flow starts services in the background: never leave them running
        _stop_services(work / "deploy")
    assert ran == len(steps) >= 20, f"only {ran} README commands ran"
    assert (work / "secret.bin").stat().st_mode & 0o777 == 0o600


def _stop_services(deploy: Path) -> None:
    for pid_file in deploy.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            continue
    deadline = time.monotonic() + 15
    while any(deploy.glob("*.pid")) and time.monotonic() < deadline:
        time.sleep(0.1)
