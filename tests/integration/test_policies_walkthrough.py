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

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from support.paths import ROOT

DOC = ROOT / "docs" / "policies.md"
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(?P<info>[^`]*)$")
EXIT = re.compile(r"^# exit (?P<code>\d+)$")
COMMAND_TIMEOUT = 180.0

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


@dataclass
class Command:
    """One ``$ `` command of a console block with what it must print and exit with."""

    line: int
    text: str
    exit_code: int = 0
    expected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileBlock:
    """A fenced block that is the content of a file the commands use."""

    line: int
    path: PurePosixPath
    content: str


Step = Command | FileBlock


def _file_path(info: str, line: int) -> PurePosixPath | None:
    for word in info.split()[1:]:
        if word.startswith("file="):
            path = PurePosixPath(word.removeprefix("file="))
            assert not path.is_absolute() and ".." not in path.parts, (
                f"policies.md:{line}: file blocks stay inside the working directory: {path}")
            return path
    return None


def _commands(lines: list[str], first: int) -> list[Command]:
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        text = lines[index].rstrip()
        number = first + index
        index += 1
        if text.startswith("$ "):
            command = text[2:]
            while command.endswith(" \\") and index < len(lines):
                command = command[:-2] + " " + lines[index].strip()
                index += 1
            commands.append(Command(number, command))
            continue
        if not text.strip() or text.strip() == "...":
            continue
        assert commands, f"policies.md:{number}: output before the first '$ ' command"
        exit_match = EXIT.match(text.strip())
        if exit_match:
            commands[-1].exit_code = int(exit_match.group("code"))
        else:
            commands[-1].expected.append(text)
    return commands


def parse(text: str) -> list[Step]:
    """The walk-through's steps (files to write, commands to run) in document order."""
    steps: list[Step] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        info = opening.group("info").strip()
        start = index
        while index < len(lines) and lines[index].rstrip() != "```":
            index += 1
        assert index < len(lines), f"policies.md:{start}: unclosed code block"
        body = lines[start:index]
        index += 1
        kind = info.split()[0] if info else ""
        path = _file_path(info, start)
        if path is not None:
            steps.append(FileBlock(start, path, "\n".join(body) + "\n"))
        elif kind == "console":
            steps.extend(_commands(body, start + 1))
    return steps


def run(command: Command, work: Path, demo: Path) -> tuple[int, str]:
    """Run one command as the reader would; (exit code, stdout + stderr)."""
    env = dict(os.environ, DEMO=str(demo),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command.text], cwd=work, env=env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    return done.returncode, done.stdout + done.stderr


def check(command: Command, code: int, output: str, demo: Path) -> None:
    """Fail with the document line when the exit code or an expected line differs."""
    where = f"policies.md:{command.line}: $ {command.text}"
    assert code == command.exit_code, (
        f"{where}\nexit code {code}, expected {command.exit_code}\n{output}")
    for expected in command.expected:
        wanted = expected.replace("$DEMO", str(demo))
        assert wanted in output, f"{where}\nmissing output: {wanted!r}\n--- got ---\n{output}"


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
            code, output = run(step, work, demo)
            check(step, code, output, demo)
            ran += 1
    finally:  # the walk-through starts services with --serve; never leave them running
        if (demo / "services.json").exists():
            run(Command(0, "keybroker demo --workdir $DEMO --stop"), work, demo)
    assert ran >= 30, f"only {ran} commands in the walk-through"
    assert time.monotonic() - started < 300, "the walk-through got too slow"
