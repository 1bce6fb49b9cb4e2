"""The example files in config/ load with the real loaders (they are documentation too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_config
from broker.rules import load_rules
from keybroker.errors import Category, KeybrokerError

CONFIG = Path(__file__).resolve().parent.parent / "config"


def test_example_broker_config_loads() -> None:
    """config/broker.toml loads; relative paths resolve next to the file; insecure is off."""
    config = load_config(CONFIG / "broker.toml")
    assert config.database == CONFIG / "broker.db"
    assert config.release_rules == CONFIG / "release-rules.toml"
    assert config.verifier_alg == "ES256"
    assert config.accept_insecure_results is False


def test_example_release_rules_load() -> None:
    """config/release-rules.toml maps demo/* and prod/* to their policies; others match none."""
    rules = load_rules(CONFIG / "release-rules.toml")
    assert [r.policy for r in rules.requirements(["demo/db-password"])] == ["snp-demo"]
    assert [r.policy for r in rules.requirements(["prod/api"])] == ["snp-strict"]
    with pytest.raises(KeybrokerError) as exc:
        rules.requirements(["other/key"])
    assert exc.value.category is Category.PLATFORM_POLICY
