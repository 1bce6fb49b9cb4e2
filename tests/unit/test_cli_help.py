"""The operator's view of both commands: --version, validated --log-level, help texts written
for operators (examples and exit codes, no module docstrings), and --tee offering only what
works."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable

import pytest
from support.paths import ROOT

from attester_agent.cli import build_parser as build_agent_parser
from attester_agent.cli import main as agent_main
from keybroker.version import version
from keybroker_cli.launcher import keybroker_command
from keybroker_cli.main import build_parser, main


def test_version_of_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """`--version` prints the installed version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"keybroker {version()}"
    assert agent_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"attester-agent {version()}"
    assert version() != "0+unknown"  # the test environment installs the package


def test_log_level_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --log-level is a usage error (exit 2) for both commands; case is free."""
    assert main(["--log-level", "bogus", "tls", "init", "/nonexistent/x"]) == 2
    assert "invalid choice: 'BOGUS'" in capsys.readouterr().err
    assert agent_main(["--log-level", "loud", "detect"]) == 2
    assert main(["--log-level", "warning", "--version"]) == 0


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"], ["admin", "--help"]])
def test_help_is_written_for_operators(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Help shows exit codes and no internal docstring vocabulary."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out
    assert "Invariants" not in out and "``" not in out


def test_tee_offers_only_what_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    """`verify --tee` lists the platforms that verify (snp ... nitro); others are refused."""
    assert main(["verify", "x", "--tee", "keystone"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'keystone'" in err and "'snp'" in err and "'tpm'" in err
    assert "'nitro'" in err


def _command_paths(parser: argparse.ArgumentParser,
                   prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of ``parser`` (``()`` for the top level), depth first."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert described.get(name), f"{' '.join((*prefix, name))} has no help line"
                paths += _command_paths(sub, (*prefix, name))
    return paths


@pytest.mark.parametrize(("cli", "build"), [(main, build_parser),
                                            (agent_main, build_agent_parser)])
def test_every_subcommand_help_is_for_operators(cli: Callable[[list[str]], int],
                                                build: Callable[[], argparse.ArgumentParser],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every command and subcommand of both tools: ``--help`` exits 0, each subcommand has a
    one-line description in its parent's list, and no help holds module-docstring vocabulary
    ("Invariants", RST double backticks)."""
    paths = _command_paths(build())
    assert len(paths) > (30 if cli is main else 3)
    for path in paths:
        assert cli([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: "), path
        assert "Invariants" not in out and "``" not in out, (path, out)


def test_one_shot_commands_log_only_warnings_by_default() -> None:
    """`keybroker verify` writes no INFO log lines unless asked (`--log-level INFO`)."""
    vectors = ROOT / "tests" / "vectors" / "sev-snp" / "gosev-milan-v2"
    argv = [str(vectors / "attestation.bin"), "--tee", "snp", "--collateral",
            str(vectors / "vcek.der"), "--at", "2022-09-24T01:00:00Z", "--allow-missing-crl"]
    quiet = subprocess.run(keybroker_command("verify", *argv), capture_output=True, text=True,
                           check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and "collateral loaded" not in quiet.stderr
    loud = subprocess.run(keybroker_command("--log-level", "INFO", "verify", *argv),
                          capture_output=True, text=True, check=False)
    assert '"level":"INFO"' in loud.stderr and "collateral loaded" in loud.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    """`keybroker eventlog LOG | head -1`: the reader leaves early; no traceback on stderr."""
    log = ROOT / "tests" / "vectors" / "tpm" / "eventlogs" / "keylime-binary_bios_measurements"
    command = " ".join(keybroker_command("eventlog", str(log)))
    done = subprocess.run(["bash", "-c", f"{command} | head -1"], capture_output=True,
                          text=True, check=False)
    assert done.stdout.count("\n") == 1 and "EV_NO_ACTION" in done.stdout
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
