"""Secret files: mode 0600 from creation, atomic replace, symlinks refused."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from attester_agent.secret_output import (
    SecretOutputRefused,
    check_secret_target,
    write_secret_file,
    write_secret_stream,
)

SECRET = b"\x00top secret\xff" * 3


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run with umask 0 so that only the code itself can make the file private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_new_file_is_0600_with_exact_bytes(tmp_path: Path, permissive_umask: None) -> None:
    """A new secret file has mode 0600 and holds exactly the secret."""
    target = tmp_path / "secret.bin"
    write_secret_file(target, SECRET)
    assert target.read_bytes() == SECRET
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.bin"]


def test_existing_file_replaced_and_made_private(tmp_path: Path) -> None:
    """An existing world-readable file is replaced by a 0600 file."""
    target = tmp_path / "secret.bin"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_secret_file(target, SECRET)
    assert target.read_bytes() == SECRET
    assert _mode(target) == 0o600


def test_symlink_target_refused_and_not_followed(tmp_path: Path) -> None:
    """A symlink at the target is refused; the file it points to is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "secret.bin"
    link.symlink_to(victim)
    with pytest.raises(SecretOutputRefused, match="symbolic link"):
        write_secret_file(link, SECRET)
    assert victim.read_bytes() == b"keep"
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.bin", "victim"]


def test_dangling_symlink_refused(tmp_path: Path) -> None:
    """A dangling symlink is refused, so no file appears where it points."""
    link = tmp_path / "secret.bin"
    link.symlink_to(tmp_path / "created-through-link")
    with pytest.raises(SecretOutputRefused):
        write_secret_file(link, SECRET)
    assert not (tmp_path / "created-through-link").exists()


def test_directory_target_refused(tmp_path: Path) -> None:
    """A directory at the target is not replaced."""
    (tmp_path / "secret.bin").mkdir()
    with pytest.raises(SecretOutputRefused, match="not a regular file"):
        write_secret_file(tmp_path / "secret.bin", SECRET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.bin"]


def test_missing_directory_refused(tmp_path: Path) -> None:
    """A target in a missing directory is refused."""
    with pytest.raises(SecretOutputRefused):
        write_secret_file(tmp_path / "absent" / "secret.bin", SECRET)


def test_stream_gets_raw_bytes() -> None:
    """The stream receives exactly the raw secret bytes."""
    out = io.BytesIO()
    write_secret_stream(out, SECRET)
    assert out.getvalue() == SECRET


def test_check_secret_target_matches_writer(tmp_path: Path) -> None:
    """The early check accepts new or regular files and refuses links, dirs, missing dirs."""
    check_secret_target(tmp_path / "new")
    (tmp_path / "regular").write_bytes(b"")
    check_secret_target(tmp_path / "regular")
    (tmp_path / "link").symlink_to(tmp_path / "regular")
    (tmp_path / "dir").mkdir()
    for bad in (tmp_path / "link", tmp_path / "dir", tmp_path / "absent" / "x"):
        with pytest.raises(SecretOutputRefused):
            check_secret_target(bad)
