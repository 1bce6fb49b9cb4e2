"""Broker configuration: read once at start-up from TOML into a frozen dataclass.

Invariants:
- Only the keys documented here are accepted; an unknown key or a value of the wrong type is
  MALFORMED (with the file, what was expected and what was found), so a typo never silently
  falls back to a default.
- Relative paths are resolved against the directory of the configuration file.
- ``database`` is a SQLite file or a ``postgresql://`` URL (replicas share it: broker state in
  schema ``broker``, the audit log in ``broker_audit``); with a URL, ``audit_database``
  defaults to the same database.
- ``admins`` maps identities to roles (``keybroker.roles``; the broker honours
  ``policy-admin`` for release rules); ``policy_poll_seconds`` (0.1..60) is how often the
  service looks for newly applied release rules in ``database``.
- Replicas: ``replica_id`` names this broker in its audit records (default ``host:listen``;
  unique per replica, stable across its restarts). At start a broker marks its own
  release intents without outcome ``unknown``; every ``challenge_purge_seconds`` it marks
  those of any replica older than ``intent_grace_seconds`` (10..86400, default 300: longer
  than any release can take), so a replica that never returns leaves no dangling intent.
- ``verifier`` is one ``host:port`` or a list of them (replicas): the broker keeps a channel
  to each, sends each appraisal to a healthy one and fails over to the next on UNAVAILABLE.
- Transport: ``tls_cert`` + ``tls_key`` (the agents' TLS server certificate) come together;
  ``agent_client_ca``, when set, requires every agent to present a client certificate under it
  (challenges and bindings then cover that certificate). ``verifier_ca``,
  ``verifier_client_cert`` and ``verifier_client_key`` come together: mutual TLS to the
  verifier (``verifier_server_name`` overrides the name checked in its certificate). Without
  them the config describes a plaintext broker, run only with ``--insecure-plaintext``.
- Admin API: ``admin_listen`` (off when empty or when ``admins`` is empty), its callers
  authenticated by a client certificate under ``admin_client_ca`` and/or a JWT checked with
  ``admin_jwks``, ``admin_jwt_issuer``, ``admin_jwt_audience`` and ``admin_jwt_alg``.
- ``audit_checkpoint_every`` (1..100000): a keyed audit checkpoint every N records.
- KEK: ``kek_provider`` is ``file`` (``kek_file``) or ``pkcs11`` (``pkcs11_module``,
  ``pkcs11_token_label``, ``pkcs11_key_label`` and exactly one of ``pkcs11_pin_file`` /
  ``pkcs11_pin_env``: the PIN never sits in this file).
- ``max_challenges`` (total) and ``max_challenges_per_peer`` bound the outstanding challenges
  (RESOURCE_EXHAUSTED past them); expired ones are purged every ``challenge_purge_seconds``.
- Metrics (``metrics_listen``, ``metrics_client_ca``) as ``keybroker.metrics`` says; off
  unless ``metrics_listen`` is set. Tracing (``tracing``, ``tracing_file``) as
  ``keybroker.tracing`` says; off by default.
- Dependencies (database, audit sink, KEK provider, verifier) are probed every
  ``health_check_seconds`` (0.1..300) for gRPC health and ``keybroker status``.
- ``accept_insecure_results`` is only read here; refusing to start with it (unless the operator
  passed the explicit insecure flag) is the CLI's start-up guard.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keybroker.admin_auth import ADMIN_KEYS, AdminSettings, admin_settings
from keybroker.database import DatabaseTarget, database_target, is_database_url
from keybroker.errors import Malformed
from keybroker.metrics import METRICS_KEYS, MetricsSettings, metrics_settings
from keybroker.roles import NO_ADMINS, Admins, parse_admins
from keybroker.tls import TlsFiles
from keybroker.tracing import TracingSettings, tracing_settings

ALGORITHMS = ("ES256", "ES384")


@dataclass(frozen=True)
class Pkcs11Settings:
    """Module path, token label, KEK label and where the user PIN comes from."""

    module: Path
    token_label: str
    key_label: str
    pin_file: Path | None = None
    pin_env: str = ""

    def pin(self) -> str:
        """The user PIN (file: mode 0600, one line; env: the named variable)."""
        if self.pin_file is not None:
            try:
                st = self.pin_file.stat()
                text = self.pin_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise Malformed(f"cannot read the PIN file {self.pin_file}",
                                rule="kek.pkcs11_pin_file",
                                actual=exc.strerror or type(exc).__name__) from None
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise Malformed(f"PIN file {self.pin_file} is accessible by group or others",
                                rule="kek.pkcs11_pin_file", expected="0600",
                                actual=f"{stat.S_IMODE(st.st_mode):04o}")
            return text
        value = os.environ.get(self.pin_env, "")
        if not value:
            raise Malformed(f"the PIN variable {self.pin_env} is not set",
                            rule="kek.pkcs11_pin_env", expected="a non-empty PIN",
                            actual="unset or empty")
        return value


@dataclass(frozen=True)
class BrokerConfig:
    """The ``[broker]`` table of the broker configuration file."""

    listen: str
    database: DatabaseTarget
    audit_database: DatabaseTarget
    kek_file: Path
    verifiers: tuple[str, ...]  # host:port of each verifier replica (failover in order)
    verifier_jwks: Path
    verifier_alg: str
    verifier_timeout_seconds: float
    challenge_ttl_seconds: int
    audience: str
    release_rules: Path
    accept_insecure_results: bool
    token_leeway_seconds: int
    max_request_bytes: int
    admins: Admins = field(default_factory=lambda: NO_ADMINS)
    policy_poll_seconds: float = 1.0
    tls: TlsFiles | None = None  # agent-facing server certificate (+ agent client CA)
    verifier_tls: TlsFiles | None = None  # client certificate + the verifier's CA
    verifier_server_name: str = ""
    audit_checkpoint_every: int = 100
    kek_provider: str = "file"
    pkcs11: Pkcs11Settings | None = None
    admin: AdminSettings = field(default_factory=AdminSettings)
    max_challenges: int = 100_000
    max_challenges_per_peer: int = 64
    challenge_purge_seconds: float = 30.0
    replica_id: str = ""  # this replica's name in the audit log (default host:listen)
    intent_grace_seconds: float = 300.0
    health_check_seconds: float = 2.0
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)


_DEFAULTS: dict[str, object] = {
    "listen": "127.0.0.1:50051",
    "database": "broker.db",
    "audit_database": "broker-audit.db",
    "kek_file": "kek.bin",
    "verifier": "127.0.0.1:50061",
    "verifier_jwks": "verifier-jwks.json",
    "verifier_alg": "ES256",
    "verifier_timeout_seconds": 5.0,
    "challenge_ttl_seconds": 60,
    "audience": "keybroker-broker",
    "release_rules": "release-rules.yaml",
    "accept_insecure_results": False,
    "token_leeway_seconds": 5,
    "max_request_bytes": 1024 * 1024,
    "admins": {},
    "policy_poll_seconds": 1.0,
    "tls_cert": "",
    "tls_key": "",
    "agent_client_ca": "",
    "verifier_ca": "",
    "verifier_client_cert": "",
    "verifier_client_key": "",
    "verifier_server_name": "",
    "max_challenges": 100_000,
    "max_challenges_per_peer": 64,
    "audit_checkpoint_every": 100,
    **{key: "" for key in ADMIN_KEYS},
    **{key: "" for key in METRICS_KEYS},
    "tracing": "off",
    "tracing_file": "",
    "kek_provider": "file",
    "pkcs11_module": "",
    "pkcs11_token_label": "",
    "pkcs11_key_label": "",
    "pkcs11_pin_file": "",
    "pkcs11_pin_env": "",
    "challenge_purge_seconds": 30.0,
    "replica_id": "",
    "intent_grace_seconds": 300.0,
    "health_check_seconds": 2.0,
}

_PATHS = ("database", "audit_database", "kek_file", "verifier_jwks", "release_rules")
_STRINGS = ("listen", "verifier_alg", "audience")
_PKCS11 = ("pkcs11_module", "pkcs11_token_label", "pkcs11_key_label", "pkcs11_pin_file",
           "pkcs11_pin_env")
_OPTIONAL_PATHS = ("tls_cert", "tls_key", "agent_client_ca", "verifier_ca",
                   "verifier_client_cert", "verifier_client_key")


def _verifiers(path: Path, value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or not items or len(items) > 16
            or not all(isinstance(i, str) and i.strip() for i in items)
            or len(set(items)) != len(items)):
        raise Malformed(f"{path}: [broker].verifier has the wrong value", rule="broker.verifier",
                        expected="host:port, or a list of 1..16 distinct host:port",
                        actual=repr(value)[:120])
    return tuple(str(i).strip() for i in items)


def _typed(path: Path, key: str, value: object, kind: type | tuple[type, ...]) -> None:
    # bool is an int subclass: never accept it where a number is expected.
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        kinds = (kind,) if isinstance(kind, type) else kind
        expected = " or ".join(k.__name__ for k in kinds)
        raise Malformed(f"{path}: [broker].{key} has the wrong type", rule=f"broker.{key}",
                        expected=expected, actual=type(value).__name__)


def parse_config(data: dict[str, object], path: Path) -> BrokerConfig:
    """Build the config from parsed TOML ``data``; ``path`` locates relative files and errors."""
    unknown_top = sorted(set(data) - {"broker"})
    if unknown_top:
        raise Malformed(f"{path}: unknown top-level table", expected="[broker]",
                        actual=", ".join(unknown_top))
    table = data.get("broker")
    if not isinstance(table, dict):
        raise Malformed(f"{path}: missing [broker] table", expected="[broker]", actual="none")
    unknown = sorted(set(table) - set(_DEFAULTS))
    if unknown:
        raise Malformed(f"{path}: unknown key in [broker]", expected=", ".join(sorted(_DEFAULTS)),
                        actual=", ".join(unknown))
    merged: dict[str, object] = {**_DEFAULTS, **table}
    base = path.parent
    for key in (*_PATHS, *_STRINGS, *_OPTIONAL_PATHS, *_PKCS11, "verifier_server_name",
                "kek_provider"):
        _typed(path, key, merged[key], str)
    for key in ("max_challenges", "max_challenges_per_peer", "audit_checkpoint_every"):
        _typed(path, key, merged[key], int)
    every = int(merged["audit_checkpoint_every"])  # type: ignore[call-overload]
    if not 1 <= every <= 100_000:
        raise Malformed(f"{path}: audit_checkpoint_every out of range",
                        rule="broker.audit_checkpoint_every", expected="1..100000",
                        actual=str(every))
    _typed(path, "challenge_purge_seconds", merged["challenge_purge_seconds"], (int, float))
    _typed(path, "health_check_seconds", merged["health_check_seconds"], (int, float))
    _typed(path, "verifier_timeout_seconds", merged["verifier_timeout_seconds"], (int, float))
    for key in ("challenge_ttl_seconds", "token_leeway_seconds", "max_request_bytes"):
        _typed(path, key, merged[key], int)
    _typed(path, "accept_insecure_results", merged["accept_insecure_results"], bool)
    _typed(path, "policy_poll_seconds", merged["policy_poll_seconds"], (int, float))

    def p(key: str) -> Path:
        return base / str(merged[key])

    alg = str(merged["verifier_alg"])
    if alg not in ALGORITHMS:
        raise Malformed(f"{path}: unsupported verifier_alg", rule="broker.verifier_alg",
                        expected=" | ".join(ALGORITHMS), actual=alg)
    timeout = float(merged["verifier_timeout_seconds"])  # type: ignore[arg-type]
    ttl = int(merged["challenge_ttl_seconds"])  # type: ignore[call-overload]
    leeway = int(merged["token_leeway_seconds"])  # type: ignore[call-overload]
    max_bytes = int(merged["max_request_bytes"])  # type: ignore[call-overload]
    if not 0 < timeout <= 300:
        raise Malformed(f"{path}: verifier_timeout_seconds out of range",
                        expected="0 < t <= 300", actual=str(timeout))
    if not 1 <= ttl <= 3600:
        raise Malformed(f"{path}: challenge_ttl_seconds out of range",
                        expected="1..3600", actual=str(ttl))
    if not 0 <= leeway <= 60:
        raise Malformed(f"{path}: token_leeway_seconds out of range",
                        expected="0..60", actual=str(leeway))
    poll = float(merged["policy_poll_seconds"])  # type: ignore[arg-type]
    if not 0.1 <= poll <= 60:
        raise Malformed(f"{path}: policy_poll_seconds out of range",
                        rule="broker.policy_poll_seconds", expected="0.1..60", actual=str(poll))
    if not 4096 <= max_bytes <= 16 * 1024 * 1024:
        raise Malformed(f"{path}: max_request_bytes out of range",
                        expected="4096..16777216", actual=str(max_bytes))
    config = BrokerConfig(
        listen=str(merged["listen"]),
        database=database_target(str(merged["database"]), base, "broker"),
        audit_database=database_target(
            str(merged["database"] if is_database_url(str(merged["database"]))
                and "audit_database" not in table else merged["audit_database"]),
            base, "broker_audit"),
        kek_file=p("kek_file"),
        verifiers=_verifiers(path, merged["verifier"]),
        verifier_jwks=p("verifier_jwks"),
        verifier_alg=alg,
        verifier_timeout_seconds=timeout,
        challenge_ttl_seconds=ttl,
        audience=str(merged["audience"]),
        release_rules=p("release_rules"),
        accept_insecure_results=bool(merged["accept_insecure_results"]),
        token_leeway_seconds=leeway,
        max_request_bytes=max_bytes,
        admins=parse_admins(merged["admins"], path, "broker.admins"),
        policy_poll_seconds=poll,
        audit_checkpoint_every=every,
    )
    return dataclasses.replace(config, **_transport(path, merged), **_kek(path, merged),
                               admin=admin_settings(merged, path.parent, f"{path} [broker]"),
                               metrics=metrics_settings(merged, path.parent,
                                                        f"{path} [broker]"),
                               tracing=tracing_settings(merged, path.parent,
                                                        f"{path} [broker]"))


def _kek(path: Path, merged: dict[str, object]) -> dict[str, Any]:
    provider = str(merged["kek_provider"])
    given = [k for k in _PKCS11 if merged[k]]
    if provider == "file":
        if given:
            raise Malformed(f"{path}: [broker].{given[0]} needs kek_provider = \"pkcs11\"",
                            rule="broker.kek_provider", expected="pkcs11", actual="file")
        return {"kek_provider": provider, "pkcs11": None}
    if provider != "pkcs11":
        raise Malformed(f"{path}: unknown kek_provider", rule="broker.kek_provider",
                        expected="file | pkcs11", actual=provider)
    for key in ("pkcs11_module", "pkcs11_token_label", "pkcs11_key_label"):
        if not merged[key]:
            raise Malformed(f"{path}: [broker].{key} is missing", rule=f"broker.{key}",
                            expected="present with kek_provider = \"pkcs11\"", actual="absent")
    if bool(merged["pkcs11_pin_file"]) == bool(merged["pkcs11_pin_env"]):
        raise Malformed(f"{path}: the HSM PIN comes from exactly one place",
                        rule="broker.pkcs11_pin", expected="pkcs11_pin_file or pkcs11_pin_env",
                        actual="both" if merged["pkcs11_pin_file"] else "neither")
    settings = Pkcs11Settings(
        module=path.parent / str(merged["pkcs11_module"]),
        token_label=str(merged["pkcs11_token_label"]),
        key_label=str(merged["pkcs11_key_label"]),
        pin_file=(path.parent / str(merged["pkcs11_pin_file"])
                  if merged["pkcs11_pin_file"] else None),
        pin_env=str(merged["pkcs11_pin_env"]))
    return {"kek_provider": provider, "pkcs11": settings}


def _together(path: Path, merged: dict[str, object], keys: tuple[str, ...],
              why: str) -> tuple[Path, ...] | None:
    given = [k for k in keys if merged[k]]
    if not given:
        return None
    if len(given) != len(keys):
        missing = next(k for k in keys if not merged[k])
        raise Malformed(f"{path}: [broker].{missing} is missing ({why})",
                        rule=f"broker.{missing}", expected=", ".join(keys) + " together",
                        actual="given: " + ", ".join(given))
    return tuple(path.parent / str(merged[k]) for k in keys)


def _transport(path: Path, merged: dict[str, object]) -> dict[str, Any]:
    server = _together(path, merged, ("tls_cert", "tls_key"), "the agents' TLS certificate")
    client_ca = path.parent / str(merged["agent_client_ca"]) if merged["agent_client_ca"] \
        else None
    if client_ca is not None and server is None:
        raise Malformed(f"{path}: [broker].agent_client_ca needs tls_cert and tls_key",
                        rule="broker.agent_client_ca", expected="tls_cert, tls_key",
                        actual="absent")
    verifier = _together(path, merged, ("verifier_ca", "verifier_client_cert",
                                        "verifier_client_key"), "mutual TLS to the verifier")
    limits = {k: int(merged[k]) for k in ("max_challenges",  # type: ignore[call-overload]
                                          "max_challenges_per_peer")}
    if not 1 <= limits["max_challenges_per_peer"] <= limits["max_challenges"] <= 10_000_000:
        raise Malformed(f"{path}: challenge limits out of range", rule="broker.max_challenges",
                        expected="1 <= max_challenges_per_peer <= max_challenges <= 10000000",
                        actual=f"{limits['max_challenges_per_peer']}, "
                               f"{limits['max_challenges']}")
    grace = merged["intent_grace_seconds"]
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 10 <= grace <= 86400:
        raise Malformed(f"{path}: intent_grace_seconds out of range",
                        rule="broker.intent_grace_seconds", expected="10..86400",
                        actual=repr(grace))
    replica = merged["replica_id"]
    if not isinstance(replica, str) or len(replica) > 128 or not replica.isprintable():
        raise Malformed(f"{path}: replica_id is not a name", rule="broker.replica_id",
                        expected="up to 128 printable characters", actual=repr(replica)[:140])
    purge = float(merged["challenge_purge_seconds"])  # type: ignore[arg-type]
    if not 1 <= purge <= 3600:
        raise Malformed(f"{path}: challenge_purge_seconds out of range",
                        rule="broker.challenge_purge_seconds", expected="1..3600",
                        actual=str(purge))
    health = float(merged["health_check_seconds"])  # type: ignore[arg-type]
    if not 0.1 <= health <= 300:
        raise Malformed(f"{path}: health_check_seconds out of range",
                        rule="broker.health_check_seconds", expected="0.1..300",
                        actual=str(health))
    return {
        "health_check_seconds": health,
        "tls": TlsFiles(cert=server[0], key=server[1], ca=client_ca) if server else None,
        "verifier_tls": (TlsFiles(cert=verifier[1], key=verifier[2], ca=verifier[0])
                         if verifier else None),
        "verifier_server_name": str(merged["verifier_server_name"]),
        "challenge_purge_seconds": purge,
        "intent_grace_seconds": float(grace),
        "replica_id": replica or f"{socket.gethostname()}:{merged['listen']}",
        **limits,
    }


def load_config(path: Path) -> BrokerConfig:
    """Read and validate the broker configuration file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Malformed(f"cannot read broker config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Malformed(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, path.resolve())
