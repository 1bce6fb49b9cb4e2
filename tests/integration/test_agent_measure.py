"""``attester-agent measure``: runtime log append + RTMR3 extend, locking, rollback, refusals."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.paths import ROOT

from attester_agent import measure
from attester_agent.cli import main
from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.runtime_log import (
    MAX_EVENTS,
    encode_log,
    extend,
    image_event,
    parse_runtime_log,
)

REPO = ROOT


def image(n: int) -> str:
    """A distinct well-formed image digest."""
    return f"sha256:{n:064x}"


def replay_file(log: Path) -> bytes:
    """RTMR3 as the runtime log says it should be (independent replay)."""
    value = bytes(48)
    for event in parse_runtime_log(log.read_bytes()):
        value = extend(value, event)
    return value


@pytest.fixture
def sim(tmp_path: Path) -> tuple[Path, measure.SimulatedRtmr]:
    """A runtime log path and a simulated RTMR3 in a temp directory."""
    return tmp_path / "run" / "events.jsonl", measure.SimulatedRtmr(tmp_path / "rtmr3")


def test_measure_appends_and_extends(sim: tuple[Path, measure.SimulatedRtmr]) -> None:
    """Each measure adds one line and extends the register; register == replay of the log."""
    log, register = sim
    first = measure.measure_image(image(1), log_path=log, register=register)
    measure.measure_image(image(2), log_path=log, register=register)
    assert first == image_event(image(1))
    assert log.read_bytes() == encode_log([image_event(image(1)), image_event(image(2))])
    assert register.read() == replay_file(log)
    assert register.read() == extend(extend(bytes(48), image_event(image(1))),
                                     image_event(image(2)))


def test_log_and_register_files_are_private(sim: tuple[Path, measure.SimulatedRtmr]) -> None:
    """The log is created 0600 (directory 0700), the simulated register 0600."""
    log, register = sim
    measure.measure_image(image(1), log_path=log, register=register)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(register.path.stat().st_mode) == 0o600


def test_bad_image_digest_is_malformed(sim: tuple[Path, measure.SimulatedRtmr]) -> None:
    """Only sha256:<64 lowercase hex> is measured; nothing is created otherwise."""
    log, register = sim
    for bad in ("sha256:" + "AB" * 32, "sha384:" + "ab" * 48, "ab" * 32, ""):
        with pytest.raises(KeybrokerError) as exc:
            measure.measure_image(bad, log_path=log, register=register)
        assert exc.value.category is Category.MALFORMED
    assert not log.exists()
    assert not register.path.exists()


def test_symlinked_log_is_refused(tmp_path: Path, sim: tuple[Path, measure.SimulatedRtmr]) -> None:
    """A runtime log that is a symlink is refused; neither target nor register change."""
    log, register = sim
    target = tmp_path / "target.jsonl"
    target.write_bytes(b"")
    log.parent.mkdir()
    log.symlink_to(target)
    with pytest.raises(KeybrokerError) as exc:
        measure.measure_image(image(1), log_path=log, register=register)
    assert exc.value.category is Category.UNAVAILABLE
    assert target.read_bytes() == b""
    assert not register.path.exists()


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_non_regular_log_is_refused(sim: tuple[Path, measure.SimulatedRtmr], kind: str) -> None:
    """A runtime log that is a directory or a FIFO is UNAVAILABLE."""
    log, register = sim
    log.parent.mkdir()
    if kind == "directory":
        log.mkdir()
    else:
        os.mkfifo(log)
    with pytest.raises(KeybrokerError) as exc:
        measure.measure_image(image(1), log_path=log, register=register)
    assert exc.value.category is Category.UNAVAILABLE
    assert not register.path.exists()


@pytest.mark.parametrize("content", [
    b'{"mr":3,"kind":"image","value":"' + image(1).encode() + b'"}',  # torn: no newline
    b"garbage\n",
    b'{"mr":2,"kind":"image","value":"' + image(1).encode() + b'"}\n',
], ids=["torn", "garbage", "wrong-register"])
def test_corrupt_log_is_not_appended_to(
    sim: tuple[Path, measure.SimulatedRtmr], content: bytes
) -> None:
    """An existing log that does not parse is MALFORMED: no append, no extend."""
    log, register = sim
    log.parent.mkdir()
    log.write_bytes(content)
    with pytest.raises(KeybrokerError) as exc:
        measure.measure_image(image(2), log_path=log, register=register)
    assert exc.value.category is Category.MALFORMED
    assert log.read_bytes() == content
    assert not register.path.exists()


def test_full_log_is_refused(sim: tuple[Path, measure.SimulatedRtmr]) -> None:
    """A log at the format's event limit takes no further event (the verifier would refuse)."""
    log, register = sim
    log.parent.mkdir()
    content = encode_log([image_event(image(i)) for i in range(MAX_EVENTS)])
    log.write_bytes(content)
    with pytest.raises(KeybrokerError) as exc:
        measure.measure_image(image(MAX_EVENTS), log_path=log, register=register)
    assert exc.value.category is Category.MALFORMED
    assert log.read_bytes() == content


@pytest.mark.parametrize("rtmr", ["absent", "directory", "/dev/full"])
def test_failed_extend_rolls_the_log_back(tmp_path: Path, rtmr: str) -> None:
    """If the register write fails (ENOENT, EISDIR, ENOSPC) the log returns to its old length."""
    log = tmp_path / "events.jsonl"
    good = measure.SimulatedRtmr(tmp_path / "sim-rtmr3")
    measure.measure_image(image(1), log_path=log, register=good)
    before = log.read_bytes()
    path = {"absent": tmp_path / "no-rtmr3", "directory": tmp_path,
            "/dev/full": Path("/dev/full")}[rtmr]
    with pytest.raises(KeybrokerError) as exc:
        measure.measure_image(image(2), log_path=log, register=measure.SysfsRtmr(path))
    assert exc.value.category is Category.UNAVAILABLE
    assert "rolled back" in exc.value.reason
    assert log.read_bytes() == before
    assert good.read() == replay_file(log)


def test_failed_append_rolls_back_and_never_extends(tmp_path: Path) -> None:
    """An append cut short (RLIMIT_FSIZE, a real torn write) is undone; RTMR3 is untouched."""
    log = tmp_path / "events.jsonl"
    rtmr = tmp_path / "rtmr3"
    measure.measure_image(image(1), log_path=log, register=measure.SimulatedRtmr(rtmr))
    before, register_before = log.read_bytes(), rtmr.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from attester_agent import measure
        from keybroker.errors import KeybrokerError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 10}, resource.RLIM_INFINITY))
        try:
            measure.measure_image({image(2)!r}, log_path=Path({str(log)!r}),
                                  register=measure.SimulatedRtmr(Path({str(rtmr)!r})))
        except KeybrokerError as exc:
            print(exc.category.value, exc.reason)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, check=False, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("UNAVAILABLE measure failed: could not append")
    assert log.read_bytes() == before
    assert rtmr.read_bytes() == register_before


def test_sysfs_register_write_is_48_bytes_at_offset_0(tmp_path: Path) -> None:
    """The kernel ABI: one write of exactly the digest at offset 0 (shown on a plain file)."""
    attr = tmp_path / "rtmr3:sha384"
    attr.write_bytes(b"\xee" * 48)
    event = measure.measure_image(image(7), log_path=tmp_path / "log",
                                  register=measure.SysfsRtmr(attr))
    assert attr.read_bytes() == event.digest
    assert measure.SysfsRtmr(attr).read() == event.digest


def test_register_refuses_wrong_digest_size(tmp_path: Path) -> None:
    """An extend takes exactly 48 bytes."""
    with pytest.raises(ValueError, match="48"):
        measure.SimulatedRtmr(tmp_path / "r").extend(bytes(32))
    with pytest.raises(ValueError, match="48"):
        measure.SysfsRtmr(tmp_path / "r").extend(bytes(49))


def test_measure_waits_for_the_exclusive_lock(
    sim: tuple[Path, measure.SimulatedRtmr]
) -> None:
    """While someone holds the log's lock (e.g. a quote being made), measure waits."""
    log, register = sim
    measure.measure_image(image(1), log_path=log, register=register)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from attester_agent import measure
        measure.measure_image({image(2)!r}, log_path=Path({str(log)!r}),
                              register=measure.SimulatedRtmr(Path({str(register.path)!r})))
    """)
    with measure.runtime_log_snapshot(log) as held:
        assert held == log.read_bytes()
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
        time.sleep(1.0)
        assert proc.poll() is None  # blocked on the lock
        assert log.read_bytes() == held
    assert proc.wait(timeout=60) == 0
    assert len(parse_runtime_log(log.read_bytes())) == 2
    assert register.read() == replay_file(log)


def test_snapshot_of_absent_log_is_none(tmp_path: Path) -> None:
    """No log file: the snapshot is None (and no file is created)."""
    with measure.runtime_log_snapshot(tmp_path / "absent") as data:
        assert data is None
    with measure.runtime_log_snapshot(None) as data:
        assert data is None
    assert not (tmp_path / "absent").exists()


def test_snapshots_share_the_lock(sim: tuple[Path, measure.SimulatedRtmr]) -> None:
    """Two snapshots may be held at once (shared lock) but exclude an exclusive one."""
    log, register = sim
    measure.measure_image(image(1), log_path=log, register=register)
    with measure.runtime_log_snapshot(log) as a, measure.runtime_log_snapshot(log) as b:
        assert a == b == log.read_bytes()
        fd = os.open(log, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from attester_agent import measure
    log, rtmr, go, first = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    while not go.exists():
        time.sleep(0.001)
    for n in range(first, first + 40):
        measure.measure_image(f"sha256:{n:064x}", log_path=log,
                              register=measure.SimulatedRtmr(rtmr))
""")


def test_concurrent_measures_stay_consistent(tmp_path: Path) -> None:
    """Two processes measuring at once: every event logged once, register == replay."""
    log, rtmr, go = tmp_path / "events.jsonl", tmp_path / "rtmr3", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(log), str(rtmr), str(go),
                               str(first)], cwd=REPO) for first in (0, 1000)]
    time.sleep(0.5)
    go.write_bytes(b"")
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    events = parse_runtime_log(log.read_bytes())
    assert sorted(e.value for e in events) == sorted(
        [image(n) for n in range(40)] + [image(n) for n in range(1000, 1040)])
    assert rtmr.read_bytes() == replay_file(log)


def test_concurrent_cli_measures_stay_consistent(tmp_path: Path) -> None:
    """Two `attester-agent measure` processes on the simulator at once stay consistent."""
    sim_dir = tmp_path / "sim"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "attester_agent.cli", "measure", "--image", image(n),
         "--insecure-simulator", "--simulator-dir", str(sim_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    log = sim_dir / "tdx" / "runtime-events.jsonl"
    assert sorted(e.value for e in parse_runtime_log(log.read_bytes())) == [image(1), image(2)]
    assert (sim_dir / "tdx" / "rtmr3").read_bytes() == replay_file(log)


# --- the command line ----------------------------------------------------------------------

def test_cli_measure_with_simulator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """measure --insecure-simulator extends DIR/tdx/rtmr3 and logs to DIR/tdx/."""
    code = main(["measure", "--image", image(5), "--insecure-simulator",
                 "--simulator-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert image(5) in out
    assert image_event(image(5)).digest.hex() in out
    log = tmp_path / "tdx" / "runtime-events.jsonl"
    assert parse_runtime_log(log.read_bytes()) == (image_event(image(5)),)
    assert (tmp_path / "tdx" / "rtmr3").read_bytes() == replay_file(log)


def test_cli_measure_on_hardware_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the simulator, --rtmr-path and --runtime-log choose the register and the log."""
    attr = tmp_path / "rtmr3:sha384"
    attr.write_bytes(bytes(48))
    code = main(["measure", "--image", image(6), "--rtmr-path", str(attr),
                 "--runtime-log", str(tmp_path / "log.jsonl")])
    assert code == 0
    assert attr.read_bytes() == image_event(image(6)).digest
    capsys.readouterr()


@pytest.mark.parametrize(("argv", "code", "prefix"), [
    (["--image", image(1), "--rtmr-path", "{tmp}/absent", "--runtime-log", "{tmp}/log"], 1,
     "error: UNAVAILABLE: "),
    (["--image", "sha256:xyz", "--rtmr-path", "{tmp}/r", "--runtime-log", "{tmp}/log"], 1,
     "error: MALFORMED: "),
    (["--image", image(1), "--insecure-simulator"], 2, ""),
    (["--image", image(1), "--simulator-dir", "{tmp}"], 2, ""),
    (["--image", image(1), "--insecure-simulator", "--simulator-dir", "{tmp}",
      "--rtmr-path", "{tmp}/r"], 2, ""),
    ([], 2, ""),
])
def test_cli_measure_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            argv: list[str], code: int, prefix: str) -> None:
    """Local failures exit 1 with their category; contradictory flags are usage errors (2)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["measure", *args]) == code
    err = capsys.readouterr().err
    assert err.startswith(prefix) if prefix else "error" in err
    assert not (tmp_path / "r").exists()
