"""What an ``keybroker admin`` command acts on: the service config, its store, its admins.

Invariants:
- A config file is a verifier config (one ``[verifier]`` table) or a broker config (one
  ``[broker]`` table); it is loaded with the service's own strict loader, so the CLI sees
  exactly the paths and roles the service sees. Appraisal policies, reference values and
  recorded appraisals live in the verifier's ``state_db``; release rules in the broker's
  ``database``.
- A document kind belongs to one service: asking the other service's config to store it is a
  usage error (exit 2), never a silent write to the wrong database.
- Errors print as one line ``error <CATEGORY>: <reason> (expected ..., actual ...)`` on stderr;
  exit codes are 0 ok, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.config import BrokerConfig
from broker.config import load_config as load_broker_config
from keybroker.database import DatabaseTarget
from keybroker.errors import KeybrokerError, Malformed
from keybroker.roles import Admins
from verifier.config import VerifierConfig
from verifier.config import load_config as load_verifier_config

KIND_POLICY = "AppraisalPolicy"
KIND_RULES = "ReleaseRules"
KIND_REFS = "ReferenceValues"
KIND_CASE = "PolicyTestCase"
SERVICE_OF = {KIND_POLICY: "verifier", KIND_RULES: "broker", KIND_REFS: "verifier"}
VERIFIER = "verifier"
BROKER = "broker"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_SINCE_RE = re.compile(r"^([0-9]{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class UsageError(Exception):
    """A command that cannot apply to what it was given (exit 2)."""


@dataclass(frozen=True)
class Target:
    """One service configuration as the admin commands see it."""

    service: str  # "verifier" | "broker"
    source: Path
    store_path: DatabaseTarget
    admins: Admins
    verifier: VerifierConfig | None = None
    broker: BrokerConfig | None = None

    @property
    def policy_kind(self) -> str:
        """The policy document kind this service stores."""
        return KIND_POLICY if self.service == VERIFIER else KIND_RULES

    def require_service(self, kind: str) -> None:
        """Usage error unless documents of ``kind`` belong to this service."""
        owner = SERVICE_OF.get(kind)
        if owner != self.service:
            raise UsageError(f"{kind} documents belong to the {owner or 'no'} service, but "
                             f"{self.source} is a {self.service} config")

    def verifier_config(self, what: str) -> VerifierConfig:
        """The verifier config; usage error for a broker config."""
        if self.verifier is None:
            raise UsageError(f"{what} needs a verifier config, but {self.source} is a "
                             f"{self.service} config")
        return self.verifier


def load_target(path: Path) -> Target:
    """Load a verifier or broker config (by its top-level table)."""
    try:
        top = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: not a valid TOML config: {exc}") from None
    try:
        if VERIFIER in top:
            verifier = load_verifier_config(path)
            return Target(VERIFIER, verifier.source, verifier.state_db, verifier.admins,
                          verifier=verifier)
        if BROKER in top:
            broker = load_broker_config(path)
            return Target(BROKER, path.resolve(), broker.database, broker.admins,
                          broker=broker)
    except KeybrokerError as err:
        raise UsageError(f"bad config: {format_error(err)}") from None
    raise UsageError(f"{path}: neither a [verifier] nor a [broker] config")


def utc_now() -> datetime:
    """The current instant (aware, UTC)."""
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """``2026-01-02T03:04:05Z`` (fractions dropped) for output."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    """An RFC 3339 instant with a time zone; usage error otherwise."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"not an RFC 3339 instant: {text!r}") from None
    if value.tzinfo is None:
        raise UsageError(f"instant needs a time zone: {text!r}")
    return value.astimezone(UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m``, ``90s`` before ``now``, or an RFC 3339 instant."""
    match = _SINCE_RE.fullmatch(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return parse_instant(text)


def format_error(err: KeybrokerError) -> str:
    """``error <CATEGORY>: <reason> (expected ..., actual ...)``."""
    extras = []
    if err.expected:
        extras.append(f"expected {err.expected}")
    if err.actual:
        extras.append(f"actual {err.actual}")
    tail = f" ({', '.join(extras)})" if extras else ""
    return f"error {err.category.value}: {err.reason}{tail}"


def print_error(err: KeybrokerError) -> None:
    """Print a typed error on stderr in the admin format."""
    print(format_error(err), file=sys.stderr)


Command = Callable[[argparse.Namespace], int]


def command(body: Command) -> Command:
    """``body`` wrapped by ``run_command`` (for ``set_defaults(func=...)``)."""

    def run(args: argparse.Namespace) -> int:
        # The CEL library logs every compiled expression at INFO: not for operators' eyes.
        logging.getLogger("celpy").setLevel(max(logging.WARNING, logging.root.level))
        return run_command(lambda: body(args))

    return run


def run_command(body: Callable[[], int]) -> int:
    """Run a command body, mapping typed errors to exit 1 and usage errors to exit 2."""
    try:
        return body()
    except UsageError as err:
        print(f"usage error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeybrokerError as err:
        print_error(err)
        return EXIT_FAILED


def read_file(path: Path) -> bytes:
    """The bytes of ``path``; Malformed (rule ``policy.file``) when unreadable."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Malformed(f"{path}: cannot read file", rule="policy.file",
                        expected="a readable file", actual=exc.strerror or str(exc)) from None
