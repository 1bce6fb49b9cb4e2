"""Verifier configuration: one TOML file read once at start-up into frozen dataclasses.

Invariants:
- Unknown keys and wrong types are refused (``Malformed`` naming the file and key).
- Relative paths are resolved against the directory of the config file, never the CWD.
- Test anchors never in production (hostile-evidence row 58): ``ensure_secure`` refuses a
  configuration with ``simulator_roots`` (AMD), ``simulator_intel_roots`` (DCAP),
  ``simulator_tpm_roots`` (swtpm's EK/AK CA), ``simulator_nitro_roots`` or with any
  simulator certificate (subject or issuer O containing "INSECURE TEST ROOT") among the
  collateral unless the process was started with the explicit insecure switch.
- ``state_db`` (policy versions, reference-value sets, recorded appraisals) defaults to
  ``verifier-state.db`` beside the config; ``database`` (or ``state_db``) may instead be
  a ``postgresql://`` URL shared by replicas (schema ``verifier``; ``audit_database``
  then defaults to the same database, schema ``verifier_audit``); ``record_days`` 0..90
  (0: record nothing), ``policy_poll_seconds`` 0.1..60, ``health_check_seconds`` 0.1..300
  (dependency probes). ``admins`` maps identities to roles (``keybroker.roles``); each
  ``[[verifier.reference_providers]]`` names a provider, its PEM public key (path) and the
  fnmatch patterns of the reference-value sets it may publish.
- Transport: ``tls_cert``, ``tls_key`` and ``tls_client_ca`` come together (mutual TLS: the
  broker must present a certificate under ``tls_client_ca``); ``allowed_clients`` (CN or SAN
  values) narrows which of those certificates are served. Without them the config describes a
  plaintext verifier, which ``keybroker verifier serve`` runs only with
  ``--insecure-plaintext`` on loopback.
- Metrics: ``metrics_listen`` and ``metrics_client_ca`` (``keybroker.metrics``; off unless
  ``metrics_listen`` is set). Tracing: ``tracing`` and ``tracing_file`` (``keybroker.tracing``;
  off by default).
- Admin API: ``admin_listen`` and the ``admin_*`` keys as for the broker
  (``keybroker.admin_auth.admin_settings``); admin calls are recorded in ``audit_database``.
- TPM: ``tpm_ek_roots`` (EK manufacturer or cloud roots, for enrolment by credential
  activation) and ``tpm_ak_roots`` (roots of AK certificates); both empty by default, so no
  TPM AK is trusted until an operator names its roots. MAA: ``maa_instances``, a list of
  ``{issuer, jwks}`` (an https issuer URL and the instance's JWKS file); empty by default.
- ``workers``: appraisal processes, 0..64, default the number of cores (0: appraisals run on
  one thread of the serving process).
- Nitro: the AWS root G1 is pinned in code and trusted unless ``nitro_roots`` names the root
  files to trust instead (another AWS partition's root); ``nitro_max_age_seconds`` (1..86400,
  default 300) and ``nitro_max_skew_seconds`` (0..600, default 30) bound a document's
  timestamp.
- The configuration only names trust-anchor files; each TEE folder loads its own
  (``verifier.dcap.trust.load_simulator_roots`` for ``simulator_intel_roots``).
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from keybroker.admin_auth import ADMIN_KEYS, AdminSettings, admin_settings
from keybroker.database import DatabaseTarget, PostgresTarget, database_target
from keybroker.errors import Malformed
from keybroker.metrics import METRICS_KEYS, MetricsSettings, metrics_settings
from keybroker.roles import NO_ADMINS, Admins, parse_admins
from keybroker.tls import TlsFiles
from keybroker.tracing import TRACING_KEYS, TracingSettings, tracing_settings
from verifier.collateral.settings import FETCH_KEYS, FetchSettings, fetch_settings
from verifier.pki import certificates_in

DEFAULT_LISTEN = "127.0.0.1:50061"
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
INSECURE_MARKER = "INSECURE TEST ROOT"
DEFAULT_STATE_DB = "verifier-state.db"
DEFAULT_WORKERS = os.cpu_count() or 1
_KEYS: dict[str, type | tuple[type, ...]] = {
    "listen": str, "policies": list, "collateral": list, "result_key": str,
    "result_ttl_seconds": int, "audience": str, "simulator_roots": list,
    "simulator_intel_roots": list, "max_request_bytes": int,
    "tpm_ek_roots": list, "tpm_ak_roots": list, "simulator_tpm_roots": list,
    "maa_instances": list, "simulator_nitro_roots": list, "nitro_roots": list,
    "nitro_max_age_seconds": int, "nitro_max_skew_seconds": int, "workers": int,
    "state_db": str, "database": str, "record_days": int, "policy_poll_seconds": (int, float),
    "health_check_seconds": (int, float),
    "admins": dict, "reference_providers": list,
    "tls_cert": str, "tls_key": str, "tls_client_ca": str, "allowed_clients": list,
    "audit_database": str, **{key: str for key in ADMIN_KEYS},
    **{key: str for key in METRICS_KEYS}, **{key: str for key in TRACING_KEYS}, **FETCH_KEYS}
_TLS_KEYS = ("tls_cert", "tls_key", "tls_client_ca")
_PROVIDER_KEYS = ("name", "key", "sets")
_PROVIDER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REQUIRED = ("policies", "result_key")


@dataclass(frozen=True)
class ReferenceProvider:
    """A reference-value provider whose signed (JWS) manifests may be imported."""

    name: str
    key: Path  # PEM public key (EC P-256 or P-384)
    sets: tuple[str, ...]  # fnmatch patterns of the set names it may publish

    def covers(self, set_name: str) -> bool:
        """Whether this provider may publish the set ``set_name``."""
        return any(fnmatch.fnmatchcase(set_name, pattern) for pattern in self.sets)


@dataclass(frozen=True)
class MaaInstanceConfig:
    """A Microsoft Azure Attestation instance whose tokens are accepted: its issuer URL and
    the JWKS file of its signing keys (never fetched)."""

    issuer: str
    jwks: Path


def _maa_instances(path: Path, value: object) -> tuple[MaaInstanceConfig, ...]:
    assert isinstance(value, list)
    out = []
    for index, item in enumerate(value):
        key = f"maa_instances[{index}]"
        if not isinstance(item, dict) or set(item) != {"issuer", "jwks"}:
            raise _fail(path, key, "wrong entry", "{issuer = \"https://...\", jwks = \"file\"}",
                        repr(item)[:120])
        issuer, jwks = item["issuer"], item["jwks"]
        if not isinstance(issuer, str) or not issuer.startswith("https://"):
            raise _fail(path, key, "invalid issuer", "an https:// MAA instance URL",
                        repr(issuer)[:120])
        out.append(MaaInstanceConfig(issuer, _paths(path, key, [jwks])[0]))
    return tuple(out)


@dataclass(frozen=True)
class VerifierConfig:
    """The ``[verifier]`` table with paths resolved."""

    source: Path
    listen: str
    policies: tuple[Path, ...]
    collateral: tuple[Path, ...]
    result_key: Path
    result_ttl_seconds: int = 60
    audience: str = "keybroker-broker"
    simulator_roots: tuple[Path, ...] = ()
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    simulator_intel_roots: tuple[Path, ...] = ()
    tpm_ek_roots: tuple[Path, ...] = ()  # TPM manufacturer / cloud EK roots (enrolment)
    tpm_ak_roots: tuple[Path, ...] = ()  # roots of AK certificates (no enrolment needed)
    simulator_tpm_roots: tuple[Path, ...] = ()  # swtpm's CA: EK and AK roots, insecure
    maa_instances: tuple[MaaInstanceConfig, ...] = ()  # trusted MAA instances (issuer, JWKS)
    nitro_roots: tuple[Path, ...] = ()  # empty: the pinned AWS root G1
    simulator_nitro_roots: tuple[Path, ...] = ()  # Nitro simulator roots, insecure
    nitro_max_age_seconds: int = 300
    nitro_max_skew_seconds: int = 30
    workers: int = DEFAULT_WORKERS  # appraisal processes; 0: one thread of the front process
    state_db: DatabaseTarget = Path(DEFAULT_STATE_DB)
    record_days: int = 7
    policy_poll_seconds: float = 1.0
    health_check_seconds: float = 2.0
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    admins: Admins = field(default_factory=lambda: NO_ADMINS)
    reference_providers: tuple[ReferenceProvider, ...] = ()
    tls: TlsFiles | None = None  # None: plaintext, only with --insecure-plaintext on loopback
    allowed_clients: frozenset[str] = frozenset()
    admin: AdminSettings = field(default_factory=AdminSettings)
    audit_database: DatabaseTarget = Path("verifier-audit.db")
    fetch: FetchSettings = field(default_factory=FetchSettings)


def _fail(path: Path, key: str, what: str, expected: str, actual: str) -> Malformed:
    return Malformed(f"{path}: {what} at key 'verifier.{key}'", rule="config.schema",
                     expected=expected, actual=actual)


def _int_range(path: Path, table: dict[str, object], key: str, *, default: int, low: int,
               high: int) -> int:
    value = table.get(key, default)
    assert isinstance(value, int)  # types were checked against _KEYS
    if not low <= value <= high:
        raise _fail(path, key, "value out of range", f"{low}..{high}", str(value))
    return value


def _database(path: Path, table: dict[str, object], key: str, schema: str,
              default: str) -> DatabaseTarget:
    if not isinstance(value := table.get(key, default), str) or not value:
        raise _fail(path, key, "wrong value", "a path or postgresql:// URL", repr(value))
    target = database_target(value, path.parent, schema)
    return target if isinstance(target, PostgresTarget) else target.resolve()


def _paths(path: Path, key: str, value: object) -> tuple[Path, ...]:
    assert isinstance(value, list)
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise _fail(path, key, "wrong element type", "non-empty string path",
                        f"{type(item).__name__} {item!r}")
        out.append((path.parent / item).resolve())
    return tuple(out)


def load_config(path: Path) -> VerifierConfig:
    """Read and validate the verifier config file."""
    path = path.resolve()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Malformed(f"{path}: cannot read config", rule="config.file",
                        expected="a readable file", actual=exc.strerror or str(exc)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Malformed(f"{path}: not a valid TOML document", rule="config.file",
                        expected="UTF-8 TOML", actual=str(exc)[:200]) from None
    if set(doc) != {"verifier"} or not isinstance(doc["verifier"], dict):
        raise Malformed(f"{path}: expected exactly one [verifier] table", rule="config.schema",
                        expected="[verifier]", actual=", ".join(sorted(doc)) or "empty")
    table: dict[str, object] = doc["verifier"]
    for key, value in table.items():
        kind = _KEYS.get(key)
        if kind is None:
            raise _fail(path, key, "unknown key", "one of " + ", ".join(sorted(_KEYS)), key)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            kinds = (kind,) if isinstance(kind, type) else kind
            raise _fail(path, key, "wrong type", " or ".join(k.__name__ for k in kinds),
                        f"{type(value).__name__} {value!r}"[:120])
    for key in _REQUIRED:
        if key not in table:
            raise _fail(path, key, "missing key", "present", "absent")
    ttl = table.get("result_ttl_seconds", 60)
    assert isinstance(ttl, int)
    if not 1 <= ttl <= 3600:
        raise _fail(path, "result_ttl_seconds", "value out of range", "1..3600", str(ttl))
    max_bytes = table.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)
    assert isinstance(max_bytes, int)
    if not 4096 <= max_bytes <= 64 << 20:
        raise _fail(path, "max_request_bytes", "value out of range", "4096..67108864",
                    str(max_bytes))
    policies = _paths(path, "policies", table["policies"])
    if not policies:
        raise _fail(path, "policies", "no appraisal policy configured", ">= 1 path", "[]")
    poll = table.get("policy_poll_seconds", 1.0)
    assert isinstance(poll, int | float)
    if not 0.1 <= poll <= 60:
        raise _fail(path, "policy_poll_seconds", "value out of range", "0.1..60", str(poll))
    health = table.get("health_check_seconds", 2.0)
    assert isinstance(health, int | float)
    if not 0.1 <= health <= 300:
        raise _fail(path, "health_check_seconds", "value out of range", "0.1..300", str(health))
    listen = str(table.get("listen", DEFAULT_LISTEN))
    if ":" not in listen:
        raise _fail(path, "listen", "invalid listen address", "HOST:PORT", listen)
    if "database" in table and "state_db" in table:
        raise _fail(path, "database", "database and state_db", "one of them", "both")
    state = _database(path, table, "database" if "database" in table else "state_db",
                      "verifier", DEFAULT_STATE_DB)
    return VerifierConfig(
        source=path,
        listen=listen,
        policies=policies,
        collateral=_paths(path, "collateral", table.get("collateral", [])),
        result_key=_paths(path, "result_key", [table["result_key"]])[0],
        result_ttl_seconds=ttl,
        audience=str(table.get("audience", "keybroker-broker")),
        simulator_roots=_paths(path, "simulator_roots", table.get("simulator_roots", [])),
        max_request_bytes=max_bytes,
        simulator_intel_roots=_paths(path, "simulator_intel_roots",
                                     table.get("simulator_intel_roots", [])),
        **{key: _paths(path, key, table.get(key, []))
           for key in ("tpm_ek_roots", "tpm_ak_roots", "simulator_tpm_roots",
                       "simulator_nitro_roots", "nitro_roots")},
        nitro_max_age_seconds=_int_range(path, table, "nitro_max_age_seconds", default=300,
                                         low=1, high=86400),
        nitro_max_skew_seconds=_int_range(path, table, "nitro_max_skew_seconds", default=30,
                                          low=0, high=600),
        workers=_int_range(path, table, "workers", default=DEFAULT_WORKERS, low=0, high=64),
        maa_instances=_maa_instances(path, table.get("maa_instances", [])),
        state_db=state,
        record_days=_int_range(path, table, "record_days", default=7, low=0, high=90),
        fetch=fetch_settings(table, f"{path} [verifier]"),
        policy_poll_seconds=float(poll),
        health_check_seconds=float(health),
        admins=parse_admins(table.get("admins", {}), path, "verifier.admins"),
        reference_providers=_providers(path, table.get("reference_providers", [])),
        tls=_tls(path, table),
        admin=admin_settings(table, path.parent, f"{path} [verifier]"),
        metrics=metrics_settings(table, path.parent, f"{path} [verifier]"),
        tracing=tracing_settings(table, path.parent, f"{path} [verifier]"),
        audit_database=_database(path, table, "audit_database", "verifier_audit",
                                 state.url if isinstance(state, PostgresTarget)
                                 else "verifier-audit.db"),
        allowed_clients=_allowed_clients(path, table, table.get("allowed_clients", [])),
    )


def _tls(path: Path, table: dict[str, object]) -> TlsFiles | None:
    given = [k for k in _TLS_KEYS if k in table]
    if not given:
        return None
    if len(given) != len(_TLS_KEYS):
        missing = next(k for k in _TLS_KEYS if k not in given)
        raise _fail(path, missing, "missing key (mutual TLS needs all three)",
                    ", ".join(_TLS_KEYS), "absent")
    cert, key, ca = (_paths(path, k, [table[k]])[0] for k in _TLS_KEYS)
    return TlsFiles(cert=cert, key=key, ca=ca)


def _allowed_clients(path: Path, table: dict[str, object], value: object) -> frozenset[str]:
    assert isinstance(value, list)
    if "allowed_clients" in table and not value:
        raise _fail(path, "allowed_clients", "empty list",
                    "at least one name (leave the key out to accept every certificate under "
                    "tls_client_ca)", "[]")
    if not all(isinstance(v, str) and v for v in value):
        raise _fail(path, "allowed_clients", "wrong element type",
                    "non-empty strings (certificate CN or SAN)", repr(value)[:120])
    return frozenset(str(v) for v in value)


def _providers(path: Path, value: object) -> tuple[ReferenceProvider, ...]:
    key = "reference_providers"
    assert isinstance(value, list)
    out: list[ReferenceProvider] = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise _fail(path, where, "wrong element type", "table {name, key, sets}",
                        f"{type(item).__name__} {item!r}"[:120])
        unknown = sorted(set(item) - set(_PROVIDER_KEYS))
        missing = [k for k in _PROVIDER_KEYS if k not in item]
        if unknown:
            raise _fail(path, f"{where}.{unknown[0]}", "unknown key",
                        "one of " + ", ".join(_PROVIDER_KEYS), unknown[0])
        if missing:
            raise _fail(path, f"{where}.{missing[0]}", "missing key", "present", "absent")
        name, pem, sets = item["name"], item["key"], item["sets"]
        if not isinstance(name, str) or not _PROVIDER_NAME_RE.fullmatch(name):
            raise _fail(path, f"{where}.name", "invalid provider name",
                        "1-64 of [A-Za-z0-9._-]", repr(name)[:120])
        if any(p.name == name for p in out):
            raise _fail(path, f"{where}.name", "duplicate provider name", "unique names", name)
        if not isinstance(pem, str) or not pem:
            raise _fail(path, f"{where}.key", "wrong type", "non-empty string path",
                        repr(pem)[:120])
        if (not isinstance(sets, list) or not sets
                or not all(isinstance(s, str) and s for s in sets)):
            raise _fail(path, f"{where}.sets", "wrong type",
                        "non-empty list of set-name patterns", repr(sets)[:120])
        out.append(ReferenceProvider(name=name, key=(path.parent / pem).resolve(),
                                     sets=tuple(str(s) for s in sets)))
    return tuple(out)


def _files(paths: tuple[Path, ...]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            yield p


def _is_simulator(cert: x509.Certificate) -> bool:
    for name in (cert.subject, cert.issuer):
        for attr in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
            if INSECURE_MARKER in value:
                return True
    return False


def simulator_certificates(config: VerifierConfig) -> list[Path]:
    """Collateral and Nitro root files holding a simulator (test CA) certificate."""
    found = []
    for f in (*_files(config.collateral), *config.nitro_roots):
        try:
            raw = f.read_bytes()
        except OSError:
            continue
        if any(_is_simulator(c) for c in certificates_in(raw)):
            found.append(f)
    return found


def ensure_secure(config: VerifierConfig, *, insecure: bool) -> None:
    """Refuse test anchors unless ``insecure`` (the --insecure-simulator switch) is set."""
    if insecure:
        return
    for key, roots in (("simulator_roots", config.simulator_roots),
                       ("simulator_intel_roots", config.simulator_intel_roots),
                       ("simulator_tpm_roots", config.simulator_tpm_roots),
                       ("simulator_nitro_roots", config.simulator_nitro_roots)):
        if roots:
            raise Malformed(
                f"{config.source}: {key} is set but the verifier was not started with "
                "--insecure-simulator; refusing to start", rule="startup.insecure_guard",
                expected=f"{key} = []", actual=", ".join(map(str, roots)))
    found = simulator_certificates(config)
    if found:
        raise Malformed(
            f"{config.source}: collateral contains simulator (INSECURE TEST ROOT) "
            "certificates but the verifier was not started with --insecure-simulator; "
            "refusing to start", rule="startup.insecure_guard",
            expected="no test certificates", actual=", ".join(map(str, found)))
