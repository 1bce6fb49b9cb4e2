"""The verifier's policies in force: seeding from files, compile-once cache, live reload."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.policy_docs import snp_policy_yaml

from keybroker.errors import Category, KeybrokerError
from keybroker.policy_store import PolicyStore
from keybroker.reload import Watched
from verifier.policy.model import AppraisalPolicy
from verifier.policy.state import KIND, PolicyState, load_state, seed_policies
from verifier.reference.store import ReferenceStore

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _stores(tmp_path: Path) -> tuple[PolicyStore, ReferenceStore]:
    db = tmp_path / "state.db"
    return PolicyStore(db), ReferenceStore(db)


def test_files_seed_an_empty_store_only(tmp_path: Path) -> None:
    """A file seeds version 1; an edited file later does not replace the version in force."""
    policies, references = _stores(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_bytes(snp_policy_yaml("p"))
    seed_policies(policies, [path], NOW)
    first = load_state(policies, references).policies["p"]
    assert first.policy_id == "p@1"
    path.write_bytes(snp_policy_yaml("p", allowed_vmpls=[0, 1]))
    seed_policies(policies, [path], NOW)
    assert [v.version for v in policies.history(KIND, "p")] == [1]
    assert load_state(policies, references).policies["p"].digest == first.digest


def test_broken_file_refuses_start_and_seeds_nothing(tmp_path: Path) -> None:
    """A broken file among good ones stops start-up (MALFORMED) before anything is seeded."""
    policies, _ = _stores(tmp_path)
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_bytes(snp_policy_yaml("good"))
    bad.write_bytes(snp_policy_yaml("bad").replace(b"min_tcb", b"min_tcbx"))
    with pytest.raises(KeybrokerError) as exc:
        seed_policies(policies, [good, bad], NOW)
    assert exc.value.category is Category.MALFORMED and "bad.yaml:" in exc.value.reason
    assert policies.in_force(KIND) == {}


def test_each_version_compiled_once(tmp_path: Path) -> None:
    """Reloading keeps the compiled object of an unchanged version; a new version replaces it
    and drops the superseded one from the cache."""
    policies, references = _stores(tmp_path)
    policies.apply(KIND, "p", snp_policy_yaml("p"), author="secops", comment="c", now=NOW)
    cache: dict[tuple[str, int, str], AppraisalPolicy] = {}
    first = load_state(policies, references, cache).policies["p"]
    assert load_state(policies, references, cache).policies["p"] is first
    policies.apply(KIND, "p", snp_policy_yaml("p", allowed_vmpls=[0, 1]), author="secops",
                   comment="c2", now=NOW)
    second = load_state(policies, references, cache).policies["p"]
    assert second.policy_id == "p@2" and second is not first
    assert list(cache) == [("p", 2, second.digest)]


def test_reload_swaps_whole_state_and_keeps_old_on_failure(tmp_path: Path) -> None:
    """An applied version is picked up by refresh(); a version that does not compile keeps the
    previous state in force."""
    policies, references = _stores(tmp_path)
    policies.apply(KIND, "p", snp_policy_yaml("p"), author="secops", comment="c", now=NOW)
    watched: Watched[PolicyState] = Watched(
        "test", lambda: (policies.generation(), references.generation()),
        lambda: load_state(policies, references))
    assert not watched.refresh()
    policies.apply(KIND, "p", snp_policy_yaml("p", allowed_vmpls=[0, 2]), author="secops",
                   comment="c2", now=NOW)
    assert watched.refresh()
    assert watched.current.policies["p"].policy_id == "p@2"
    policies.apply(KIND, "p", b"kind: AppraisalPolicy\nname: p\n", author="secops",
                   comment="bypassing validation", now=NOW)
    assert not watched.refresh()
    assert watched.current.policies["p"].policy_id == "p@2"
