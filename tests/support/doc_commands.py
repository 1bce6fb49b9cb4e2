"""Documents whose shell examples are executed by tests (``docs/policies.md``, README.md).

Conventions (stated in each document): a fenced block whose info string holds ``file=PATH``
is written to PATH (relative to the working directory) when the reader reaches it; a
``console`` block holds commands on lines starting with ``$ `` (a trailing `` \\`` continues a
command on the next line), each run on its own in ``bash -o pipefail`` in the working
directory; the lines after a command up to the next ``$ `` must each appear in its stdout or
stderr (``...`` lines are not checked; a leading ``...`` in a line stands for text left out
before it), and ``# exit N`` gives the expected exit code (default 0).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(?P<info>[^`]*)$")
EXIT = re.compile(r"^# exit (?P<code>\d+)$")
COMMAND_TIMEOUT = 180.0


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
                f"line {line}: file blocks stay inside the working directory: {path}")
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
        assert commands, f"line {number}: output before the first '$ ' command"
        exit_match = EXIT.match(text.strip())
        if exit_match:
            commands[-1].exit_code = int(exit_match.group("code"))
        else:
            commands[-1].expected.append(text)
    return commands


def parse(text: str) -> list[Step]:
    """The document's steps (files to write, commands to run) in document order."""
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
        assert index < len(lines), f"line {start}: unclosed code block"
        body = lines[start:index]
        index += 1
        kind = info.split()[0] if info else ""
        path = _file_path(info, start)
        if path is not None:
            steps.append(FileBlock(start, path, "\n".join(body) + "\n"))
        elif kind == "console":
            steps.extend(_commands(body, start + 1))
    return steps


def run(command: Command, work: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """Run one command as the reader would, with the virtualenv's ``bin`` first on ``PATH``
    and ``env`` added; (exit code, stdout + stderr)."""
    full = dict(os.environ, **env, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    full.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command.text], cwd=work, env=full,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    return done.returncode, done.stdout + done.stderr


def check(command: Command, code: int, output: str, doc: str,
          replacements: Mapping[str, str]) -> None:
    """Fail with the document line when the exit code or an expected line differs."""
    where = f"{doc}:{command.line}: $ {command.text}"
    assert code == command.exit_code, (
        f"{where}\nexit code {code}, expected {command.exit_code}\n{output}")
    for expected in command.expected:
        wanted = expected.removeprefix("...")
        for name, value in replacements.items():
            wanted = wanted.replace(name, value)
        assert wanted in output, f"{where}\nmissing output: {wanted!r}\n--- got ---\n{output}"
