"""docs/policies.md runs as written: every ``$ `` command, against a real demo deployment.

The document's conventions (stated in its "How to read" section):

- a fenced block whose info string holds ``file=PATH`` is written to PATH (relative to the
  working directory) when the walk-through reaches it;
- a ``console`` block holds commands on lines starting with ``$ `` (a trailing `` \\``
  continues a command on the next line); each runs on its own in ``bash -o pipefail`` in the
  working directory with ``DEMO`` set and the virtualenv's ``bin`` first on ``PATH``;
- the lines after a command up to the next ``$ `` must each appear in its stdout or stderr
  (``$DEMO`` in them is the demo directory; ``...`` lines are not checked), and ``# exit N``
  gives the expected exit code (default 0).

The first command is ``keybroker demo --workdir $DEMO``: real verifier and broker processes
on loopback, a release through the attester agent and one denial, recorded by the verifier and
audited by the broker; every later command reads or changes that deployment's stores.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.doc_commands import VENV_BIN, Command, FileBlock, check, parse, run
from support.paths import ROOT

DOC = ROOT / "docs" / "policies.md"

# Every admin command the walk-through must show (a command containing each phrase).
REQUIRED = (
    "keybroker demo --workdir $DEMO",
    "admin policy schema appraisal-policy",
    "admin policy validate",
    "admin policy test",
    "admin policy diff --config",
    "admin policy dry-run",
    "--since 7d",
    "admin policy apply",
    "--profile",
    "--comment",
    "admin policy history",
    "admin policy rollback",
    "admin refvalues import",
    "admin refvalues activate",
    "admin refvalues deprecate",
    "--retire-at",
    "admin refvalues list",
    "admin tcb report",
    "broker audit list",
)


def test_walkthrough_shows_every_admin_command() -> None:
    """The walk-through's commands cover every admin command and option it promises."""
    steps = parse(DOC.read_text(encoding="utf-8"))
    commands = [s.text for s in steps if isinstance(s, Command)]
    files = [s for s in steps if isinstance(s, FileBlock)]
    assert commands[0].startswith("keybroker demo --workdir $DEMO"), commands[0]
    for phrase in REQUIRED:
        assert any(phrase in c for c in commands), f"no command with {phrase!r}"
    assert any(c.exit_code == 1 for c in steps if isinstance(c, Command))
    assert len({f.path for f in files}) == len(files), "a file block is written twice"
    everything = "\n".join(commands)
    for block in files:
        used = (str(block.path) in everything
                or f"--cases {block.path.parent}" in everything
                or any(block.path.name in other.content for other in files if other != block))
        assert used, f"policies.md:{block.line}: {block.path} is never used"


@pytest.mark.integration
@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Every command of docs/policies.md exits and prints as the document says."""
    assert (VENV_BIN / "keybroker").exists(), f"no keybroker console script in {VENV_BIN}"
    work = tmp_path / "work"
    demo = tmp_path / "demo"
    work.mkdir()
    steps = parse(DOC.read_text(encoding="utf-8"))
    started = time.monotonic()
    ran = 0
    try:
        for step in steps:
            if isinstance(step, FileBlock):
                target = work / step.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(step.content, encoding="utf-8")
                continue
            code, output = run(step, work, {"DEMO": str(demo)})
            check(step, code, output, "policies.md", {"$DEMO": str(demo)})
            ran += 1
    finally:  # the walk-through starts services with --serve; never leave them running
        if (demo / "services.json").exists():
            run(Command(0, "keybroker demo --workdir $DEMO --stop"), work, {"DEMO": str(demo)})
    assert ran >= 30, f"only {ran} commands in the walk-through"
    assert time.monotonic() - started < 300, "the walk-through got too slow"
