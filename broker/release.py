"""The release decision (architecture section 2): challenge -> appraisal -> token -> seal.

Invariants:
- Fail closed: only the single successful path at the end of ``Broker.release`` returns keys.
  Every typed error, unexpected exception, cancellation, timeout or unavailable dependency is
  a denial, recorded in the audit log with its category, and nothing is sealed.
- Order: validate the request (MALFORMED), consume the challenge atomically (FRESHNESS),
  check TEE type and key subset against the challenge (FRESHNESS), resolve release rules
  (a key without a rule is PLATFORM_POLICY), ask the verifier with a deadline (no answer is
  UNAVAILABLE; its Denial is relayed with its category), verify the token (TOKEN_INVALID /
  BINDING / PLATFORM_POLICY), decrypt the secrets, write the audit intent durably, seal each
  secret to the agent's key with ``release_info(key_id, version, challenge_id)``, write the
  outcome, respond. No verdict is cached or reused.
- The expected binding is computed here from the challenge nonce, suite, public key,
  init-data digest and, over mutual TLS, the agent's client certificate digest (from the
  channel, never the request; the challenge must be consumed from that same certificate);
  the evidence must carry it (checked by the verifier and again via the
  token's ``keybroker.report-data``).
- Blocking SQLite work runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.challenges import NO_PEER, Challenge, ChallengeStore, Clock, Peer, validate_key_ids
from broker.rules import ReleaseRules, Requirement
from broker.secrets import MAX_VERSION, SecretStore
from broker.token import TokenVerifier, evidence_digest
from broker.verifier_client import Appraiser
from keybroker.audit_log import AuditEntry, AuditLog
from keybroker.binding import init_data_digest, report_data
from keybroker.errors import Category, FreshnessError, KeybrokerError, Malformed, Unavailable
from keybroker.health import HealthMonitor
from keybroker.reload import Watched
from keybroker.tracing import Tracing
from keybroker.v1 import broker_pb2, evidence_pb2, verifier_pb2
from keybroker.wrapping import PublicKey, Suite, load_public_key, release_info, seal

_log = logging.getLogger(__name__)

MAX_INIT_DATA = 64 * 1024
MAX_REQUEST_ID = 128
MAX_CHALLENGE_ID = 64

# TeeType numbers that have an Evidence variant, and the oneof field carrying each.
TEE_EVIDENCE = {
    evidence_pb2.TEE_TYPE_SEV_SNP: "snp",
    evidence_pb2.TEE_TYPE_TDX: "tdx",
    evidence_pb2.TEE_TYPE_SGX: "sgx",
    evidence_pb2.TEE_TYPE_TPM: "tpm",
    evidence_pb2.TEE_TYPE_MAA: "maa",
    evidence_pb2.TEE_TYPE_AZURE_SNP_VTPM: "az_snp_vtpm",
    evidence_pb2.TEE_TYPE_AZURE_TDX_VTPM: "az_tdx_vtpm",
    evidence_pb2.TEE_TYPE_NITRO: "nitro",
}


@dataclass
class _Trail:
    """What is known about a request so far, for the audit record."""

    request_id: str
    challenge_id: str = ""
    agent_fp: str = ""
    evidence_digest: str = ""
    policy_ids: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    released: bool = field(default=False)
    replica: str = ""

    def entry(self, kind: str, category: str = "", reason: str = "") -> AuditEntry:
        return AuditEntry(request_id=self.request_id, kind=kind, category=category,
                          reason=reason, evidence_digest=self.evidence_digest,
                          policy_ids=self.policy_ids, keys=self.keys,
                          agent_key_fingerprint=self.agent_fp, challenge_id=self.challenge_id,
                          replica=self.replica)


@dataclass(frozen=True)
class _Validated:
    suite: Suite
    public_key: bytes
    keys: tuple[tuple[str, int], ...]
    tee: int


def _validate(request: broker_pb2.ReleaseKeyRequest) -> _Validated:
    suite = Suite.from_wire(request.suite)
    load_public_key(suite, request.public_key)
    if not request.keys:
        raise Malformed("no keys requested", expected="1..64 keys", actual="0")
    validate_key_ids([k.key_id for k in request.keys])
    refs = tuple((k.key_id, int(k.version)) for k in request.keys)
    if len(set(refs)) != len(refs):
        raise Malformed("duplicate key reference", expected="distinct key/version pairs")
    for _, version in refs:
        if version > MAX_VERSION:
            raise Malformed("version out of range", actual=str(version))
    kind = request.evidence.WhichOneof("kind") if request.HasField("evidence") else None
    tees = [tee for tee, name in TEE_EVIDENCE.items() if name == kind]
    if not tees:
        raise Malformed("evidence missing", expected="one of " + ", ".join(TEE_EVIDENCE.values()),
                        actual=str(kind))
    if len(request.init_data) > MAX_INIT_DATA:
        raise Malformed("init-data too large", expected=f"<= {MAX_INIT_DATA} bytes",
                        actual=f"{len(request.init_data)} bytes")
    if not request.challenge_id or len(request.challenge_id) > MAX_CHALLENGE_ID:
        raise FreshnessError("challenge id missing or invalid", rule="challenge.single-use")
    return _Validated(suite, bytes(request.public_key), refs, tees[0])


def effective_request_id(raw: str) -> str:
    """The agent's request id if well-formed (<= 128 printable ASCII), else a fresh uuid4."""
    if raw and len(raw) <= MAX_REQUEST_ID and raw.isascii() and raw.isprintable():
        return raw
    return str(uuid.uuid4())


def _fixed(rules: ReleaseRules) -> Callable[[], ReleaseRules]:
    def current() -> ReleaseRules:
        return rules
    return current


class Broker:
    """The Relying Party: issues challenges and decides releases."""

    def __init__(
        self,
        *,
        challenges: ChallengeStore,
        secrets: SecretStore,
        rules: ReleaseRules | Callable[[], ReleaseRules],
        tokens: TokenVerifier,
        audit: AuditLog,
        appraiser: Appraiser,
        clock: Clock,
    ) -> None:
        self.challenges = challenges
        self.secrets = secrets
        self._rules: Callable[[], ReleaseRules] = (
            rules if callable(rules) else _fixed(rules))
        self.tokens = tokens
        self.audit = audit
        self.appraiser = appraiser
        self._clock = clock
        self.suites = tuple(Suite)
        self.replica = ""  # this broker's replica id, in its audit records (set at build)
        self.watched_rules: Watched[ReleaseRules] | None = None
        self.monitor: HealthMonitor | None = None  # set by the server (status replies)
        self.tracing = Tracing()  # spans (off unless configured; set by the server)
        # (tee, release-rule patterns, category or "" for a release) after every request.
        self.observer: Callable[[str, tuple[str, ...], str], None] | None = None

    async def get_challenge(self, tee: int, key_ids: Sequence[str],
                            peer: Peer = NO_PEER) -> Challenge:
        """Issue a challenge for ``tee`` (a TeeType with an Evidence variant) and ``key_ids``
        to ``peer``."""
        if tee not in TEE_EVIDENCE:
            raise Malformed("unsupported TEE type",
                            expected=", ".join(str(t) for t in TEE_EVIDENCE), actual=str(tee))
        self._rules().check_known(key_ids)  # fail before the agent gathers evidence
        return await asyncio.to_thread(self.challenges.issue, tee, list(key_ids), peer)

    async def release(
        self, request: broker_pb2.ReleaseKeyRequest, *, request_id: str | None = None,
        peer: Peer = NO_PEER,
    ) -> broker_pb2.ReleaseKeyResponse:
        """Decide ``request`` from ``peer``; return the sealed keys or raise the (audited)
        typed error; the outcome goes to ``observer`` (metrics).

        ``request_id`` is ``effective_request_id(request.request_id)`` unless given.
        """
        try:
            response = await self._release(request, request_id, peer)
        except KeybrokerError as err:
            self._observe(request, err.category.value)
            raise
        except asyncio.CancelledError:
            self._observe(request, Category.UNAVAILABLE.value)
            raise
        self._observe(request, "")
        return response

    def _observe(self, request: broker_pb2.ReleaseKeyRequest, category: str) -> None:
        if self.observer is not None:
            keys = [k.key_id for k in request.keys[:64]]
            self.observer(request.evidence.WhichOneof("kind") or "none",
                          self._rules().patterns(keys), category)

    async def _release(
        self, request: broker_pb2.ReleaseKeyRequest, request_id: str | None, peer: Peer,
    ) -> broker_pb2.ReleaseKeyResponse:
        request_id = request_id or effective_request_id(request.request_id)
        bad_id: KeybrokerError | None = None
        if request.request_id and request.request_id != request_id:
            bad_id = Malformed("request id invalid",
                               expected=f"<= {MAX_REQUEST_ID} printable ASCII characters")
        trail = _Trail(request_id=request_id,
                       challenge_id=request.challenge_id[:MAX_CHALLENGE_ID], replica=self.replica,
                       agent_fp=hashlib.sha256(request.public_key).hexdigest(),
                       keys=tuple(f"{k.key_id[:256]}@{k.version or 'latest'}"
                                  for k in request.keys[:64]))
        try:
            return await self._decide(request, trail, bad_id, peer)
        except KeybrokerError as err:
            await self._deny(trail, err)
            raise
        except asyncio.CancelledError:
            # The caller went away (or the deadline passed): nothing leaves, record the denial.
            if not trail.released:
                with contextlib.suppress(Unavailable):  # logged; the cancellation propagates
                    self._deny_sync(trail, Unavailable("request cancelled",
                                                       rule="release.deadline"))
            raise
        except Exception as exc:
            _log.exception("release %s: unexpected failure", request_id)
            internal = Unavailable("internal error", rule="release.internal",
                                   actual=type(exc).__name__)
            await self._deny(trail, internal)
            raise internal from exc

    async def _decide(
        self, request: broker_pb2.ReleaseKeyRequest, trail: _Trail,
        bad_id: KeybrokerError | None, peer: Peer,
    ) -> broker_pb2.ReleaseKeyResponse:
        if bad_id is not None:
            raise bad_id
        valid = _validate(request)
        trail.evidence_digest = evidence_digest(request.evidence)
        challenge = await asyncio.to_thread(self.challenges.consume, request.challenge_id, peer)
        if challenge.tee != valid.tee:
            raise FreshnessError("evidence is for another TEE than the challenge",
                                 rule="challenge.tee", expected=str(challenge.tee),
                                 actual=str(valid.tee))
        outside = sorted({k for k, _ in valid.keys} - set(challenge.key_ids))
        if outside:
            raise FreshnessError("keys not announced in the challenge", rule="challenge.keys",
                                 expected=", ".join(challenge.key_ids), actual=", ".join(outside))
        expected = report_data(challenge.nonce, valid.suite.value, valid.public_key,
                               init_data_digest(request.init_data), peer.channel)
        rules = self._rules()
        key_ids = [k for k, _ in valid.keys]
        keys = tuple((k, rules.resolve_version(k, v)) for k, v in valid.keys)
        requirements: tuple[Requirement, ...] = rules.requirements(key_ids)
        trail.policy_ids = (*(r.policy for r in requirements), rules.rules_id)
        token = await self.appraiser.appraise(verifier_pb2.AppraiseRequest(
            evidence=request.evidence, expected_report_data=expected, nonce=challenge.nonce,
            policy_ids=[r.policy for r in requirements], init_data=request.init_data,
            request_id=trail.request_id, public_key=valid.public_key))
        result = self.tokens.verify(
            token, now=self._clock(), nonce=challenge.nonce,
            evidence_sha256=trail.evidence_digest, report_data=expected,
            request_id=trail.request_id, requirements=requirements)
        trail.policy_ids = (*result.policy_ids, rules.rules_id)
        rules.check_conditions(key_ids, result.claims)
        if result.insecure:
            _log.warning("release %s: accepting an INSECURE (simulator) attestation result",
                         trail.request_id)
        public = load_public_key(valid.suite, valid.public_key)
        wrapped = await asyncio.to_thread(self._grant, keys, valid.suite, public,
                                          challenge.challenge_id, trail)
        trail.released = True
        _log.info("release %s: released %s (policies %s)", trail.request_id,
                  ",".join(trail.keys), ",".join(trail.policy_ids))
        return broker_pb2.ReleaseKeyResponse(keys=wrapped, result_token=token,
                                             request_id=trail.request_id)

    def _grant(
        self, keys: Sequence[tuple[str, int]], suite: Suite, public: PublicKey,
        challenge_id: str, trail: _Trail,
    ) -> list[broker_pb2.WrappedKey]:
        """Load every requested secret version, write the durable intent record (naming the
        exact versions about to leave), HPKE-seal each secret to the agent's key, then write
        the outcome record: one worker-thread hop for the whole grant."""
        secrets = [self.secrets.get(key_id, version) for key_id, version in keys]
        trail.keys = tuple(f"{s.key_id}@{s.version}" for s in secrets)
        self.audit.append(trail.entry("intent"), first_for_challenge=True)
        wrapped = [
            broker_pb2.WrappedKey(
                key_id=s.key_id, version=s.version,
                sealed=seal(suite, public, s.value,
                            release_info(s.key_id, s.version, challenge_id)))
            for s in secrets
        ]
        self.audit.append(trail.entry("released"))
        return wrapped

    async def _deny(self, trail: _Trail, err: KeybrokerError) -> None:
        await asyncio.to_thread(self._deny_sync, trail, err)

    def _deny_sync(self, trail: _Trail, err: KeybrokerError) -> None:
        _log.warning("release %s denied: %s (%s)", trail.request_id, err.category.value,
                     err.detail)
        try:
            self.audit.append(trail.entry("denied", err.category.value, err.detail))
        except Unavailable:
            _log.critical("release %s: audit sink failed while recording a denial",
                          trail.request_id)
            raise
