"""Reading the CCEL from an ACPI tables tree (sysfs layout) in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.paths import VECTORS

from attester_agent.collectors import ccel as ccel_mod
from attester_agent.collectors.ccel import CcelReader
from keybroker.errors import Category, KeybrokerError

GCE = VECTORS / "tdx/gotdx-gce-spr-v4-ccel"
TABLE = (GCE / "ccel_table.dat").read_bytes()
DATA = (GCE / "ccel_data.dat").read_bytes()


def tree(root: Path, table: bytes | None = TABLE, data: bytes | None = DATA) -> CcelReader:
    """``root/CCEL`` and ``root/data/CCEL`` as sysfs shows them."""
    (root / "data").mkdir(parents=True)
    if table is not None:
        (root / "CCEL").write_bytes(table)
    if data is not None:
        (root / "data" / "CCEL").write_bytes(data)
    return CcelReader(root)


def test_reads_table_and_log_area(tmp_path: Path) -> None:
    """The real GCE table (56 bytes) and log area (256 KiB) are read byte for byte."""
    found = tree(tmp_path).read()
    assert found is not None
    assert found.table == TABLE
    assert found.data == DATA
    assert len(found.table) == 56


def test_default_root_is_sysfs() -> None:
    """By default the reader looks where the kernel exposes ACPI tables."""
    reader = CcelReader()
    assert reader.table_path == Path("/sys/firmware/acpi/tables/CCEL")
    assert reader.data_path == Path("/sys/firmware/acpi/tables/data/CCEL")


def test_no_table_means_no_ccel(tmp_path: Path) -> None:
    """Without a CCEL table the guest has no CCEL: None, not an error."""
    assert tree(tmp_path, table=None, data=None).read() is None
    assert CcelReader(tmp_path / "absent").read() is None


def test_table_without_log_area_is_unavailable(tmp_path: Path) -> None:
    """Half a CCEL is never sent: a table without its log area is UNAVAILABLE."""
    with pytest.raises(KeybrokerError) as exc:
        tree(tmp_path, data=None).read()
    assert exc.value.category is Category.UNAVAILABLE


@pytest.mark.parametrize("table", [
    b"CCE",
    b"XSDT" + TABLE[4:],
    TABLE[:4] + (57).to_bytes(4, "little") + TABLE[8:],
    TABLE + b"\0",
], ids=["truncated", "signature", "length-field", "extra-byte"])
def test_bad_table_is_malformed(tmp_path: Path, table: bytes) -> None:
    """A table without the CCEL signature or whose Length disagrees with its size: MALFORMED."""
    with pytest.raises(KeybrokerError) as exc:
        tree(tmp_path, table=table).read()
    assert exc.value.category is Category.MALFORMED


def test_oversized_log_area_is_malformed(tmp_path: Path) -> None:
    """A log area above the bound is MALFORMED, never truncated."""
    big = DATA + b"\xff" * (ccel_mod.MAX_DATA_SIZE - len(DATA) + 1)
    with pytest.raises(KeybrokerError) as exc:
        tree(tmp_path, data=big).read()
    assert exc.value.category is Category.MALFORMED


def test_log_area_at_the_bound_is_read(tmp_path: Path) -> None:
    """A log area of exactly the bound is accepted."""
    big = DATA + b"\xff" * (ccel_mod.MAX_DATA_SIZE - len(DATA))
    found = tree(tmp_path, data=big).read()
    assert found is not None
    assert len(found.data) == ccel_mod.MAX_DATA_SIZE


def test_symlinked_table_is_not_followed(tmp_path: Path) -> None:
    """Files are opened with O_NOFOLLOW: a symlinked table is UNAVAILABLE."""
    reader = tree(tmp_path / "acpi", table=None)
    (tmp_path / "elsewhere").write_bytes(TABLE)
    reader.table_path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeybrokerError) as exc:
        reader.read()
    assert exc.value.category is Category.UNAVAILABLE
