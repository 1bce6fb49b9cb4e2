"""Typed errors with exactly one category each (architecture section 7).

Invariants:
- Every rejection anywhere in keybroker is a ``KeybrokerError`` subclass whose class fixes its
  ``Category``; tests assert the category, never the message.
- ``safe_message`` is what a remote caller may see (no secrets, no raw evidence). The full
  detail (rule, expected, actual) is for the operator's log and the audit record.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Category(enum.Enum):
    """The rejection categories; values equal the names used in logs, audit and tokens."""

    MALFORMED = "MALFORMED"
    SIG_INVALID = "SIG_INVALID"
    CHAIN_UNTRUSTED = "CHAIN_UNTRUSTED"
    COLLATERAL_STALE = "COLLATERAL_STALE"
    PLATFORM_POLICY = "PLATFORM_POLICY"
    TCB_POLICY = "TCB_POLICY"
    MEASUREMENT = "MEASUREMENT"
    EVENT_LOG = "EVENT_LOG"
    FRESHNESS = "FRESHNESS"
    BINDING = "BINDING"
    TOKEN_INVALID = "TOKEN_INVALID"
    UNAVAILABLE = "UNAVAILABLE"


class KeybrokerError(Exception):
    """Base of every typed rejection. Subclasses set ``category``."""

    category: ClassVar[Category]

    def __init__(
        self,
        reason: str,
        *,
        rule: str = "",
        expected: str = "",
        actual: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule
        self.expected = expected
        self.actual = actual

    @property
    def safe_message(self) -> str:
        """Message for the remote caller: category and reason only."""
        return f"{self.category.value}: {self.reason}"

    @property
    def detail(self) -> str:
        """Operator detail: reason plus rule, expected and actual values when known."""
        parts = [self.reason]
        if self.rule:
            parts.append(f"rule={self.rule}")
        if self.expected:
            parts.append(f"expected={self.expected}")
        if self.actual:
            parts.append(f"actual={self.actual}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return f"{self.category.value}: {self.detail}"


class Malformed(KeybrokerError):
    """Size, version, encoding, reserved bits, type confusion."""

    category = Category.MALFORMED


class SignatureInvalid(KeybrokerError):
    """A signature does not verify."""

    category = Category.SIG_INVALID


class ChainUntrusted(KeybrokerError):
    """Endorsement chain does not reach a pinned root, wrong product/key type, revoked, expired."""

    category = Category.CHAIN_UNTRUSTED


class CollateralStale(KeybrokerError):
    """Collateral missing from the cache or past its nextUpdate."""

    category = Category.COLLATERAL_STALE


class PlatformPolicyViolation(KeybrokerError):
    """Debug, VMPL, migration, SMT, attributes."""

    category = Category.PLATFORM_POLICY


class TcbPolicyViolation(KeybrokerError):
    """TCB below floor; TCB status or advisory not allowed."""

    category = Category.TCB_POLICY


class MeasurementMismatch(KeybrokerError):
    """Launch digest, MRTD/RTMR, PCR, image digest or init-data mismatch."""

    category = Category.MEASUREMENT


class EventLogMismatch(KeybrokerError):
    """An event log does not replay to the quoted register."""

    category = Category.EVENT_LOG


class FreshnessError(KeybrokerError):
    """Challenge unknown, expired or consumed; timestamp out of window."""

    category = Category.FRESHNESS


class BindingMismatch(KeybrokerError):
    """report_data does not commit to this challenge and key."""

    category = Category.BINDING


class TokenInvalid(KeybrokerError):
    """The result token's algorithm, key, claims or expiry are wrong."""

    category = Category.TOKEN_INVALID


class Unavailable(KeybrokerError):
    """Verifier, store, HSM or audit sink down."""

    category = Category.UNAVAILABLE


class Exhausted(Unavailable):
    """A bounded resource is full (e.g. outstanding challenges): category UNAVAILABLE, sent
    as gRPC RESOURCE_EXHAUSTED so the caller backs off."""


_BY_CATEGORY: dict[Category, type[KeybrokerError]] = {
    cls.category: cls
    for cls in (
        Malformed,
        SignatureInvalid,
        ChainUntrusted,
        CollateralStale,
        PlatformPolicyViolation,
        TcbPolicyViolation,
        MeasurementMismatch,
        EventLogMismatch,
        FreshnessError,
        BindingMismatch,
        TokenInvalid,
        Unavailable,
    )
}


def error_for(
    category: Category, reason: str, *, rule: str = "", expected: str = "", actual: str = ""
) -> KeybrokerError:
    """Build the typed error of ``category`` (used when a category crosses a process boundary)."""
    return _BY_CATEGORY[category](reason, rule=rule, expected=expected, actual=actual)
