"""Who is calling the admin API, and may they: identity from the channel, roles from the config.

Invariants:
- The principal comes from the channel only: the verified mutual-TLS client certificate (its
  CN or a subjectAltName that is a configured identity) or, without a client certificate, a
  bearer JWT in the ``authorization`` metadata. Nothing in a request body names the caller.
- A JWT counts only if its header algorithm is the configured one, its ``kid`` is in the
  configured JWKS, its signature verifies, ``iss`` and ``aud`` are the configured values and
  ``exp``, ``iat`` and ``sub`` are present with ``exp`` in the future (bounded leeway). Each
  failure is TOKEN_INVALID with its own rule (``admin.jwt.alg|key|signature|iss|aud|exp``).
- No certificate and no token, or an identity with no configured roles, is PLATFORM_POLICY
  (rule ``admin.identity``); a known principal without the RPC's role is PLATFORM_POLICY
  (rule ``admin.role``, expected the role, actual the roles held).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jwt

from keybroker.errors import Malformed, PlatformPolicyViolation, TokenInvalid
from keybroker.roles import Admins
from keybroker.tls import AuthContext, certificate_names, peer_certificate

JWT_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")


class CallContext(AuthContext, Protocol):
    """The parts of a servicer context the authenticator reads."""

    def invocation_metadata(self) -> Iterable[tuple[str, str | bytes]] | None:
        """Request metadata (headers)."""
        ...


@dataclass(frozen=True)
class JwtSettings:
    """How bearer tokens are checked (all required together)."""

    jwks: Path
    issuer: str
    audience: str
    algorithm: str
    leeway_seconds: int = 30


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and the roles the configuration gives it."""

    name: str
    roles: frozenset[str]
    method: str  # "mtls" | "jwt"


def load_jwks(settings: JwtSettings) -> dict[str, jwt.PyJWK]:
    """kid -> key of the configured JWKS file (every key must carry a kid)."""
    try:
        data = json.loads(settings.jwks.read_text(encoding="utf-8"))
        keys = jwt.PyJWKSet.from_dict(data).keys
    except (OSError, ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
        raise Malformed(f"unusable admin JWKS {settings.jwks}", rule="admin.jwks",
                        expected="a JWKS with at least one key", actual=str(exc)[:200]) from None
    out = {str(k.key_id): k for k in keys if k.key_id}
    if not out or len(out) != len(keys):
        raise Malformed(f"admin JWKS {settings.jwks} has keys without kid",
                        rule="admin.jwks", expected="a kid on every key",
                        actual=f"{len(keys)} keys, {len(out)} with kid")
    return out


def _bearer(context: CallContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Authenticator:
    """Principals and roles for one admin service."""

    def __init__(self, admins: Admins, jwt_settings: JwtSettings | None) -> None:
        self.admins = admins
        self._jwt = jwt_settings
        self._keys = load_jwks(jwt_settings) if jwt_settings is not None else {}

    def principal(self, context: CallContext) -> Principal:
        """The caller, from its client certificate or bearer token (module invariants)."""
        cert = peer_certificate(context)
        if cert is not None:
            names = certificate_names(cert)
            for name in names:
                if name in self.admins:
                    return Principal(name, self.admins[name], "mtls")
            raise PlatformPolicyViolation("client certificate names no admin principal",
                                          rule="admin.identity",
                                          expected="a configured identity",
                                          actual=", ".join(names) or "no name")
        token = _bearer(context)
        if token is None:
            raise PlatformPolicyViolation("no client certificate and no bearer token",
                                          rule="admin.identity",
                                          expected="mutual TLS or authorization: Bearer <JWT>",
                                          actual="anonymous")
        subject = self.verify_jwt(token)
        roles = self.admins.get(subject)
        if roles is None:
            raise PlatformPolicyViolation("token subject is not an admin principal",
                                          rule="admin.identity",
                                          expected="a configured identity", actual=subject)
        return Principal(subject, roles, "jwt")

    def verify_jwt(self, token: str) -> str:
        """The ``sub`` of a valid token (module invariants); TOKEN_INVALID otherwise."""
        settings = self._jwt
        if settings is None:
            raise TokenInvalid("bearer tokens are not accepted here", rule="admin.jwt",
                               expected="a client certificate", actual="bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid("bearer token is not a JWT", rule="admin.jwt",
                               actual=str(exc)[:120]) from None
        if header.get("alg") != settings.algorithm:
            raise TokenInvalid("bearer token algorithm not accepted", rule="admin.jwt.alg",
                               expected=settings.algorithm, actual=str(header.get("alg")))
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise TokenInvalid("bearer token signed by an unknown key", rule="admin.jwt.key",
                               expected="a kid of the configured JWKS",
                               actual=str(header.get("kid")))
        try:
            claims = jwt.decode(token, key=key, algorithms=[settings.algorithm],
                                audience=settings.audience, issuer=settings.issuer,
                                leeway=settings.leeway_seconds,
                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("bearer token expired", rule="admin.jwt.exp",
                               expected="exp in the future", actual="expired") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid("bearer token issuer not accepted", rule="admin.jwt.iss",
                               expected=settings.issuer, actual="another issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid("bearer token audience not accepted", rule="admin.jwt.aud",
                               expected=settings.audience, actual="another audience") from None
        except jwt.PyJWTError as exc:
            raise TokenInvalid("bearer token does not verify", rule="admin.jwt.signature",
                               actual=type(exc).__name__) from None
        return str(claims["sub"])

    @staticmethod
    def authorize(principal: Principal, role: str) -> None:
        """PLATFORM_POLICY (rule ``admin.role``) unless ``principal`` holds ``role``."""
        if role not in principal.roles:
            raise PlatformPolicyViolation(f"'{principal.name}' may not do this",
                                          rule="admin.role", expected=f"role {role}",
                                          actual=", ".join(sorted(principal.roles)) or "no role")


def jwt_settings(table: Mapping[str, object], base: Path, where: str) -> JwtSettings | None:
    """``admin_jwks``/``admin_jwt_issuer``/``admin_jwt_audience``/``admin_jwt_alg`` from a
    config table: all four or none."""
    keys = ("admin_jwks", "admin_jwt_issuer", "admin_jwt_audience", "admin_jwt_alg")
    given = [k for k in keys if table.get(k)]
    if not given:
        return None
    if len(given) != len(keys) or not all(isinstance(table[k], str) for k in keys):
        missing = [k for k in keys if not isinstance(table.get(k), str) or not table.get(k)]
        raise Malformed(f"{where}: admin JWT settings are incomplete", rule="config.admin_jwt",
                        expected=", ".join(keys) + " together (strings)",
                        actual="missing or wrong: " + ", ".join(missing))
    alg = str(table["admin_jwt_alg"])
    if alg not in JWT_ALGORITHMS:
        raise Malformed(f"{where}: admin_jwt_alg not supported", rule="config.admin_jwt",
                        expected=" | ".join(JWT_ALGORITHMS), actual=alg)
    return JwtSettings(jwks=base / str(table["admin_jwks"]), issuer=str(table["admin_jwt_issuer"]),
                       audience=str(table["admin_jwt_audience"]), algorithm=alg)


@dataclass(frozen=True)
class AdminSettings:
    """Where the admin API listens and how callers authenticate (``listen`` empty: off)."""

    listen: str = ""
    client_ca: Path | None = None
    jwt: JwtSettings | None = None


ADMIN_KEYS = ("admin_listen", "admin_client_ca", "admin_jwks", "admin_jwt_issuer",
              "admin_jwt_audience", "admin_jwt_alg")


def admin_settings(table: Mapping[str, object], base: Path, where: str) -> AdminSettings:
    """The admin keys of a service config table (strings; paths relative to ``base``)."""
    for key in ADMIN_KEYS:
        value = table.get(key, "")
        if not isinstance(value, str):
            raise Malformed(f"{where}: {key} has the wrong type", rule="config.admin",
                            expected="string", actual=type(value).__name__)
    listen = str(table.get("admin_listen", ""))
    if listen and ":" not in listen:
        raise Malformed(f"{where}: invalid admin_listen", rule="config.admin",
                        expected="HOST:PORT", actual=listen)
    ca = str(table.get("admin_client_ca", ""))
    return AdminSettings(listen=listen, client_ca=base / ca if ca else None,
                         jwt=jwt_settings(table, base, where))
