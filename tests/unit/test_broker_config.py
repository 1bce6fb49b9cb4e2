"""Broker config: the administration keys (admins, policy_poll_seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_config
from keybroker.errors import Malformed


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text("[broker]\n" + body)
    return path


def test_administration_defaults(tmp_path: Path) -> None:
    """Without the keys there are no admins and the poll interval is 1 s."""
    config = load_config(_write(tmp_path, ""))
    assert dict(config.admins) == {} and config.policy_poll_seconds == 1.0


def test_administration_keys(tmp_path: Path) -> None:
    """admins maps identities to role sets; the poll interval accepts int or float."""
    config = load_config(_write(tmp_path, 'admins = { secops = ["policy-admin"] }\n'
                                          "policy_poll_seconds = 0.5\n"))
    assert dict(config.admins) == {"secops": frozenset({"policy-admin"})}
    assert config.policy_poll_seconds == 0.5


@pytest.mark.parametrize(("body", "needle"), [
    ('admins = { secops = ["superuser"] }\n', "broker.admins"),
    ('admins = { secops = "policy-admin" }\n', "broker.admins"),
    ('admins = { "a b" = ["policy-admin"] }\n', "broker.admins"),
    ("admins = 1\n", "broker.admins"),
    ("policy_poll_seconds = 0\n", "policy_poll_seconds"),
    ("policy_poll_seconds = 61\n", "policy_poll_seconds"),
    ("policy_poll_seconds = true\n", "policy_poll_seconds"),
    ('policy_poll_seconds = "1"\n', "policy_poll_seconds"),
])
def test_bad_administration_keys(tmp_path: Path, body: str, needle: str) -> None:
    """Unknown roles, wrong types and out-of-range intervals are MALFORMED naming the key."""
    with pytest.raises(Malformed) as exc:
        load_config(_write(tmp_path, body))
    assert needle in exc.value.reason
