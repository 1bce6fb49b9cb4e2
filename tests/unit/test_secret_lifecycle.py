"""Secret version lifecycle (enabled, disabled, pending destruction, destroyed), generate, and
which version a release gets (latest enabled unless a release rule pins one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.store_backends import StoreBackend

from broker.kek import FileBackend, FileKek
from broker.kek_ring import KekRing
from broker.rules import parse_rules
from broker.secrets import SecretStore, VersionConflict
from broker.service import BROKER_MIGRATIONS
from keybroker.database import open_database
from keybroker.errors import Category, KeybrokerError, Malformed, PlatformPolicyViolation


class Clock:
    now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock, db_backend: StoreBackend) -> SecretStore:
    FileKek.create(tmp_path / "kek.bin")
    db = open_database(db_backend.target("broker"), component="broker",
                       migrations=BROKER_MIGRATIONS)
    return SecretStore(db, KekRing(db, FileBackend(tmp_path / "kek.bin"), clock=clock),
                       clock=clock)


def test_latest_enabled_version_is_released(store: SecretStore) -> None:
    """Version 0 is the latest enabled version; a disabled one is skipped, and asking for it
    by number is PLATFORM_POLICY; enabling it again brings it back."""
    for value in (b"one", b"two", b"three"):
        store.put("app/k", value)
    store.set_state("app/k", 3, "disabled")
    assert store.get("app/k").value == b"two"
    with pytest.raises(PlatformPolicyViolation) as exc:
        store.get("app/k", 3)
    assert exc.value.rule == "secrets.state" and "disabled" in exc.value.actual
    store.set_state("app/k", 3, "enabled")
    assert store.get("app/k").value == b"three"
    for version in (1, 2, 3):
        store.set_state("app/k", version, "disabled")
    with pytest.raises(KeybrokerError) as exc2:
        store.get("app/k")
    assert exc2.value.category is Category.PLATFORM_POLICY


def test_destruction_waits_for_the_grace_period_and_erases_the_data_key(
        store: SecretStore, clock: Clock, db_backend: StoreBackend) -> None:
    """pending_destruction can be cancelled; after the grace period destroy_due erases the
    wrapped data key, and destroyed is final."""
    store.put("app/k", b"v1")
    store.put("app/k", b"v2")
    info = store.set_state("app/k", 1, "pending_destruction", grace_seconds=3600)
    assert info.state == "pending_destruction" and info.destroy_after == clock.now + 3600
    store.set_state("app/k", 1, "enabled")  # cancelled
    store.set_state("app/k", 1, "pending_destruction", grace_seconds=3600)
    clock.now += 3599
    assert store.destroy_due() == ()
    clock.now += 1
    assert store.destroy_due() == ("app/k@1",)
    wrapped = db_backend.raw("broker").execute("SELECT wrapped_key FROM secrets WHERE version = 1")
    assert wrapped == [(b"",)]
    with pytest.raises(PlatformPolicyViolation):
        store.get("app/k", 1)
    for target in ("enabled", "disabled", "pending_destruction"):
        with pytest.raises(Malformed) as exc:
            store.set_state("app/k", 1, target)
        assert exc.value.rule == "secrets.state"
    assert store.get("app/k").value == b"v2"
    assert [i.state for i in store.list("app/k")] == ["destroyed", "enabled"]


def test_generate_and_compare_and_set(store: SecretStore) -> None:
    """generate stores random material of the asked length; CAS refuses a stale writer; a
    length outside 1..4096 is MALFORMED."""
    assert store.generate("app/aes", 32, expect_version=0) == 1
    first = store.get("app/aes").value
    assert len(first) == 32
    assert store.generate("app/aes", 32, expect_version=1) == 2
    assert store.get("app/aes").value != first
    with pytest.raises(VersionConflict):
        store.generate("app/aes", 32, expect_version=1)
    with pytest.raises(Malformed):
        store.generate("app/aes", 0)


def test_release_rules_pin_a_version() -> None:
    """A rule's version pins what is released; asking for another version, or two rules
    pinning different versions, is PLATFORM_POLICY."""
    rules = parse_rules(b"kind: ReleaseRules\nname: r\nrules:\n"
                        b"  - name: pinned\n    keys: 'app/*'\n    policy: p\n    version: 2\n"
                        b"  - name: free\n    keys: 'other/*'\n    policy: p\n", "r.yaml")
    assert rules.resolve_version("app/k", 0) == 2 and rules.resolve_version("app/k", 2) == 2
    assert rules.resolve_version("other/k", 0) == 0 and rules.resolve_version("other/k", 5) == 5
    with pytest.raises(PlatformPolicyViolation) as exc:
        rules.resolve_version("app/k", 3)
    assert exc.value.rule == "release.version"
    both = parse_rules(b"kind: ReleaseRules\nname: r\nrules:\n"
                       b"  - name: a\n    keys: 'app/*'\n    policy: p\n    version: 2\n"
                       b"  - name: b\n    keys: 'app/k'\n    policy: p\n    version: 3\n", "r.yaml")
    with pytest.raises(PlatformPolicyViolation):
        both.resolve_version("app/k", 0)
