"""The ``maa`` evidence arm: a Microsoft Azure Attestation token verified against the
configured MAA instances, to typed claims.

Invariants:
- Only configured instances are trusted (``maa_instances``: issuer URL and JWKS file); the
  instance is chosen by the token's header kid, and the token's issuer must then equal that
  instance's (``verifier.maa.token``). A kid no configured instance holds is TOKEN_INVALID.
- Several instances may share keys (regional shared instances): each instance holding the kid
  is tried; the token is accepted by the first that verifies it, else the first refusal is
  raised.
- The JWKS files are read once, at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import jwt

from keybroker.errors import KeybrokerError, TokenInvalid
from keybroker.v1 import evidence_pb2
from verifier.maa.claims import MaaClaims
from verifier.maa.token import MaaInstance, verify_maa_token


class MaaVerifier:
    """Verifies ``maa`` evidence with the configured instances."""

    def __init__(self, instances: Sequence[MaaInstance]) -> None:
        self._instances = tuple(instances)

    def verify(self, evidence: evidence_pb2.MaaEvidence, *, at: datetime) -> MaaClaims:
        """Typed claims of the token (module invariants)."""
        token = evidence.token
        try:
            kid = jwt.get_unverified_header(token).get("kid") if token.count(".") == 2 else None
        except jwt.DecodeError:
            kid = None
        candidates = [i for i in self._instances if kid in i.keys] or list(self._instances[:1])
        if not candidates:
            raise TokenInvalid("no MAA instance is configured on this verifier",
                               rule="maa.instance", expected="maa_instances", actual="none")
        first: KeybrokerError | None = None
        for instance in candidates:
            try:
                return MaaClaims.of(verify_maa_token(token, instance, at=at))
            except KeybrokerError as err:
                first = first or err
        assert first is not None
        raise first
