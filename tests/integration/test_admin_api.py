"""The admin API through real broker and verifier processes: every role against every admin
RPC (allowed, or PERMISSION_DENIED with rule admin.role), with mutual-TLS identities and with
JWT identities; refused JWTs (issuer, audience, expiry, algorithm, unknown key); anonymous
callers; and an audit record with the principal for every call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.admin import free_port
from support.demo_stack import demo_services

from broker.admin import ROLE_OF as BROKER_ROLES
from keybroker.errors import Category, KeybrokerError
from keybroker.rpc_errors import error_from_rpc
from keybroker.tls import client_credentials
from keybroker.v1 import admin_pb2, admin_pb2_grpc
from keybroker_cli.demo_setup import DEMO_KEY_ID, DemoLayout, prepare
from keybroker_cli.tls_cmd import TlsAuthority
from verifier.admin import ROLE_OF as VERIFIER_ROLES

ROLES = {"sa": "secret-admin", "pa": "policy-admin", "ra": "refvalue-admin", "au": "auditor",
         "op": "operator"}
ISSUER, AUDIENCE, KID = "https://idp.example.test", "keybroker-admin", "idp-key-1"
RULES = (b"kind: ReleaseRules\nname: release-rules\nrules:\n  - name: snp-demo-keys\n"
         b"    keys: 'demo/*'\n    policy: snp-demo\n")



@dataclass
class Env:
    mode: str
    layout: DemoLayout
    broker_admin: str
    verifier_admin: str
    idp_key: ec.EllipticCurvePrivateKey

    def token(self, sub: str, **changes: object) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now,
                                     "exp": now + 300}
        claims.update({k: v for k, v in changes.items() if not k.startswith("_")})
        key: object = changes.get("_key", self.idp_key)
        headers = {"kid": changes.get("_kid", KID)}
        return jwt.encode(claims, key, algorithm=str(changes.get("_alg", "ES256")),  # type: ignore[arg-type]
                          headers=headers)

    def channel(self, address: str, who: str | None) -> grpc.Channel:
        tls = self.layout.tls
        if self.mode == "mtls" and who is not None:
            creds = client_credentials(tls.ca, tls.cert(who), tls.key(who))
        else:
            creds = client_credentials(tls.ca)
        return grpc.secure_channel(address, creds)

    def metadata(self, who: str | None, token: str | None = None) -> list[tuple[str, str]]:
        if token is None and (self.mode != "jwt" or who is None):
            return []
        return [("authorization", f"Bearer {token or self.token(str(who))}")]


@pytest.fixture(scope="module", params=["mtls", "jwt"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    mode: str = request.param
    root = tmp_path_factory.mktemp(f"admin-{mode}")
    idp_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(idp_key.public_key()))
    jwks = root / "idp-jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}))
    admins = "admins = { " + ", ".join(f'{n} = ["{r}"]' for n, r in ROLES.items()) + " }\n"
    ports = (free_port(), free_port())

    def admin_lines(port: int, ca: str) -> str:
        if mode == "mtls":
            return f'admin_listen = "127.0.0.1:{port}"\nadmin_client_ca = "{ca}"\n' + admins
        return (f'admin_listen = "127.0.0.1:{port}"\nadmin_jwks = "{jwks}"\n'
                f'admin_jwt_issuer = "{ISSUER}"\nadmin_jwt_audience = "{AUDIENCE}"\n'
                'admin_jwt_alg = "ES256"\n' + admins)

    layout = DemoLayout(root / "demo")
    ca_path = str(layout.root / "tls" / "ca.pem")
    layout = DemoLayout(root / "demo", broker_settings=admin_lines(ports[0], ca_path))
    prepare(layout)
    authority = TlsAuthority.load(layout.tls.root)
    for name in (*ROLES, "nobody"):
        authority.issue(name, client=True)
    with layout.verifier_config.open("a") as out:
        out.write(admin_lines(ports[1], ca_path))
    with demo_services(layout):
        yield Env(mode, layout, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", idp_key)


Call = Callable[[grpc.Channel, list[tuple[str, str]]], object]


def _broker_calls() -> dict[str, Call]:
    def stub(ch: grpc.Channel) -> admin_pb2_grpc.BrokerAdminStub:
        return admin_pb2_grpc.BrokerAdminStub(ch)
    doc = admin_pb2.DocumentRequest(document=RULES, source="rules.yaml", comment="matrix")
    return {
        "Status": lambda c, m: stub(c).Status(admin_pb2.StatusRequest(), metadata=m),
        "PutSecret": lambda c, m: stub(c).PutSecret(admin_pb2.PutSecretRequest(
            key_id="matrix/put", value=b"v"), metadata=m),
        "GenerateSecret": lambda c, m: stub(c).GenerateSecret(admin_pb2.GenerateSecretRequest(
            key_id="matrix/gen", length=32), metadata=m),
        "ListSecrets": lambda c, m: stub(c).ListSecrets(admin_pb2.ListSecretsRequest(),
                                                        metadata=m),
        "SetSecretState": lambda c, m: stub(c).SetSecretState(admin_pb2.SetSecretStateRequest(
            key_id="matrix/none", version=1, state="disabled"), metadata=m),
        "ValidateRules": lambda c, m: stub(c).ValidateRules(doc, metadata=m),
        "ApplyRules": lambda c, m: stub(c).ApplyRules(doc, metadata=m),
        "RulesHistory": lambda c, m: stub(c).RulesHistory(admin_pb2.NameRequest(
            name="release-rules"), metadata=m),
        "RollbackRules": lambda c, m: stub(c).RollbackRules(admin_pb2.RollbackRequest(
            name="release-rules", to_version=1, comment="matrix"), metadata=m),
        "ListAudit": lambda c, m: stub(c).ListAudit(admin_pb2.ListAuditRequest(limit=5),
                                                    metadata=m),
        "VerifyAudit": lambda c, m: stub(c).VerifyAudit(admin_pb2.VerifyAuditRequest(),
                                                        metadata=m),
        "ExportAudit": lambda c, m: stub(c).ExportAudit(admin_pb2.ListAuditRequest(),
                                                        metadata=m),
    }


def _verifier_calls(env_layout: DemoLayout) -> dict[str, Call]:
    def stub(ch: grpc.Channel) -> admin_pb2_grpc.VerifierAdminStub:
        return admin_pb2_grpc.VerifierAdminStub(ch)
    policy = (env_layout.verifier / "policies" / "snp-demo.yaml").read_bytes()
    doc = admin_pb2.DocumentRequest(document=policy, source="snp-demo.yaml", comment="matrix")
    refs = admin_pb2.DocumentRequest(document=(
        b"kind: ReferenceValues\nname: matrix\nvalues:\n  - name: v\n    value: '"
        + b"ab" * 48 + b"'\n    not_before: 2020-01-01T00:00:00Z\n"
        b"    not_after: 2099-01-01T00:00:00Z\n"), source="refs.yaml", comment="matrix")
    return {
        "Status": lambda c, m: stub(c).Status(admin_pb2.StatusRequest(), metadata=m),
        "TcbReport": lambda c, m: stub(c).TcbReport(admin_pb2.TcbReportRequest(), metadata=m),
        "ValidatePolicy": lambda c, m: stub(c).ValidatePolicy(doc, metadata=m),
        "ApplyPolicy": lambda c, m: stub(c).ApplyPolicy(doc, metadata=m),
        "PolicyHistory": lambda c, m: stub(c).PolicyHistory(admin_pb2.NameRequest(
            name="snp-demo"), metadata=m),
        "RollbackPolicy": lambda c, m: stub(c).RollbackPolicy(admin_pb2.RollbackRequest(
            name="snp-demo", to_version=1, comment="matrix"), metadata=m),
        "DryRunPolicy": lambda c, m: stub(c).DryRunPolicy(admin_pb2.DryRunRequest(
            document=doc.document, source="snp-demo.yaml"), metadata=m),
        "ImportReferenceValues": lambda c, m: stub(c).ImportReferenceValues(refs, metadata=m),
        "SetReferenceState": lambda c, m: stub(c).SetReferenceState(
            admin_pb2.ReferenceStateRequest(name="matrix", version=1, state="active",
                                            comment="matrix"), metadata=m),
        "ListReferenceValues": lambda c, m: stub(c).ListReferenceValues(admin_pb2.NameRequest(),
                                                                        metadata=m),
        "ListAudit": lambda c, m: stub(c).ListAudit(admin_pb2.ListAuditRequest(), metadata=m),
        "VerifyAudit": lambda c, m: stub(c).VerifyAudit(admin_pb2.VerifyAuditRequest(),
                                                        metadata=m),
        "ListTpmEnrolments": lambda c, m: stub(c).ListTpmEnrolments(
            admin_pb2.TpmEnrolmentRequest(), metadata=m),
        "RevokeTpmEnrolment": lambda c, m: stub(c).RevokeTpmEnrolment(
            admin_pb2.TpmEnrolmentRequest(ek_fingerprint="ab" * 32, comment="matrix"),
            metadata=m),
    }


def _outcome(call: Call, channel: grpc.Channel,
             metadata: list[tuple[str, str]]) -> KeybrokerError | None:
    try:
        call(channel, metadata)
    except grpc.RpcError as exc:
        return error_from_rpc(exc, "admin")
    return None


def _matrix(env: Env, address: str, calls: dict[str, Call], roles: dict[str, str]) -> None:
    assert set(calls) == set(roles)  # every RPC of the service is exercised
    for who, role in ROLES.items():
        with env.channel(address, who) as channel:
            for rpc, call in calls.items():
                err = _outcome(call, channel, env.metadata(who))
                if roles[rpc] == role:
                    assert err is None or err.rule != "admin.role", (who, rpc, err)
                else:
                    assert err is not None, (who, rpc)
                    assert (err.category, err.rule) == (Category.PLATFORM_POLICY,
                                                         "admin.role"), (who, rpc, err)


def test_admin_api_broker_role_matrix(env: Env) -> None:
    """Each role x each BrokerAdmin RPC: the role's own RPCs run, every other is refused."""
    _matrix(env, env.broker_admin, _broker_calls(), BROKER_ROLES)


def test_admin_api_verifier_role_matrix(env: Env) -> None:
    """Each role x each VerifierAdmin RPC: the role's own RPCs run, every other is refused."""
    _matrix(env, env.verifier_admin, _verifier_calls(env.layout), VERIFIER_ROLES)


def test_admin_api_secrets_lifecycle_as_secret_admin(env: Env) -> None:
    """secret-admin generates, lists (metadata only, no value), disables and re-enables."""
    stub = admin_pb2_grpc.BrokerAdminStub
    with env.channel(env.broker_admin, "sa") as channel:
        meta = env.metadata("sa")
        made = json.loads(stub(channel).GenerateSecret(admin_pb2.GenerateSecretRequest(
            key_id=f"life/{env.mode}", length=48, expect_version=0), metadata=meta).json)
        assert made["version"] == 1
        listing = stub(channel).ListSecrets(admin_pb2.ListSecretsRequest(key_id=DEMO_KEY_ID),
                                            metadata=meta).json
        assert "value" not in listing and json.loads(listing)[0]["state"] == "enabled"
        for state in ("disabled", "enabled"):
            moved = json.loads(stub(channel).SetSecretState(admin_pb2.SetSecretStateRequest(
                key_id=f"life/{env.mode}", version=1, state=state), metadata=meta).json)
            assert moved["state"] == state


def test_admin_api_anonymous_and_unknown_principals_refused(env: Env) -> None:
    """No identity, or an identity without roles, is refused (PERMISSION_DENIED)."""
    calls = _broker_calls()
    with env.channel(env.broker_admin, "nobody") as channel:
        meta = env.metadata("nobody")
        err = _outcome(calls["Status"], channel, meta)
        assert err is not None and err.category is Category.PLATFORM_POLICY
    if env.mode == "jwt":
        with env.channel(env.broker_admin, None) as channel:
            err = _outcome(calls["Status"], channel, [])
            assert err is not None and err.category is Category.PLATFORM_POLICY
    else:  # mutual TLS: no certificate, no connection
        with env.channel(env.broker_admin, None) as channel:
            err = _outcome(calls["Status"], channel, [])
            assert err is not None and err.category is Category.UNAVAILABLE


def test_admin_api_bad_jwts_refused(env: Env) -> None:
    """Wrong issuer, wrong audience, expired, another algorithm, an unknown key: each is
    TOKEN_INVALID (PERMISSION_DENIED); the well-formed token of the same subject works. On a
    mutual-TLS admin port even a good token without a certificate gets no connection."""
    status = _broker_calls()["Status"]
    if env.mode == "mtls":
        with env.channel(env.broker_admin, None) as channel:
            err = _outcome(status, channel, env.metadata(None, env.token("op")))
        assert err is not None and err.category is Category.UNAVAILABLE
        return
    other = ec.generate_private_key(ec.SECP384R1())
    bad = {
        "issuer": env.token("op", iss="https://evil.example"),
        "audience": env.token("op", aud="someone-else"),
        "expiry": env.token("op", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "algorithm": env.token("op", _alg="ES384", _key=other),
        "unknown key": env.token("op", _kid="not-in-jwks",
                                 _key=ec.generate_private_key(ec.SECP256R1())),
        "forged signature": env.token("op", _key=ec.generate_private_key(ec.SECP256R1())),
    }
    with env.channel(env.broker_admin, None) as channel:
        assert _outcome(status, channel, env.metadata(None, env.token("op"))) is None
        for what, token in bad.items():
            err = _outcome(status, channel, env.metadata(None, token))
            assert err is not None and err.category is Category.TOKEN_INVALID, what


def test_admin_api_every_call_is_audited_with_its_principal(env: Env) -> None:
    """The auditor sees admin records for every principal, refused and allowed, each naming
    the principal; the audit chain of both services verifies."""
    with env.channel(env.broker_admin, "au") as channel:
        stub = admin_pb2_grpc.BrokerAdminStub(channel)
        lines = stub.ExportAudit(admin_pb2.ListAuditRequest(),
                                 metadata=env.metadata("au")).json.splitlines()
        verified = stub.VerifyAudit(admin_pb2.VerifyAuditRequest(), metadata=env.metadata("au"))
    admin = [json.loads(x) for x in lines if json.loads(x).get("kind") == "admin"]
    for who, role in ROLES.items():
        mine = [r for r in admin if r["principal"] == who]
        assert any("refused" in r["reason"] for r in mine), who
        has_rpc = role in BROKER_ROLES.values()  # refvalue-admin has only verifier RPCs
        assert any("allowed" in r["reason"] for r in mine) is has_rpc, who
    assert all(r["category"] == "PLATFORM_POLICY" for r in admin
               if " refused" in r["reason"] and r["principal"])
    assert verified.records >= len(admin)
    with env.channel(env.verifier_admin, "au") as channel:
        stub2 = admin_pb2_grpc.VerifierAdminStub(channel)
        vlines = stub2.ListAudit(admin_pb2.ListAuditRequest(),
                                 metadata=env.metadata("au")).json.splitlines()
        # VerifyAudit is itself recorded (before it runs): one record more than listed.
        assert stub2.VerifyAudit(admin_pb2.VerifyAuditRequest(),
                                 metadata=env.metadata("au")).records == len(vlines) + 1
    assert {json.loads(x)["principal"] for x in vlines} >= set(ROLES)


def test_admin_api_applied_rules_carry_the_principal(env: Env) -> None:
    """A rules version applied through the API records the authenticated principal as its
    author (no author argument exists)."""
    with env.channel(env.broker_admin, "pa") as channel:
        history = admin_pb2_grpc.BrokerAdminStub(channel).RulesHistory(
            admin_pb2.NameRequest(name="release-rules"), metadata=env.metadata("pa"))
    assert any(v.author == "pa" and v.action == "apply" for v in history.versions)


def _cli_identity(env: Env, who: str) -> list[str]:
    tls = env.layout.tls
    if env.mode == "mtls":
        return ["--ca", str(tls.ca), "--cert", str(tls.cert(who)), "--key", str(tls.key(who))]
    return ["--ca", str(tls.ca), "--token", env.token(who)]


def test_admin_api_cli_is_a_client_of_the_api(env: Env, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    """`keybroker admin ... --server` drives the API with the channel's identity: generate a
    secret, apply and list policy history (author = principal), verify the audit, status;
    --author next to --server is a usage error; a wrong role is exit 1 naming admin.role."""
    from keybroker_cli.main import main  # noqa: PLC0415 - the operator's command

    broker = ["--server", env.broker_admin]
    verifier = ["--server", env.verifier_admin]
    assert main(["admin", "secret", "generate", f"cli/{env.mode}", "--length", "24",
                 *broker, *_cli_identity(env, "sa")]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    policy = tmp_path / "snp-demo.yaml"
    policy.write_bytes((env.layout.verifier / "policies" / "snp-demo.yaml").read_bytes()
                       + b"description: applied through the admin API\n")
    assert main(["admin", "policy", "apply", str(policy), "--comment", "via the API",
                 *verifier, *_cli_identity(env, "pa")]) == 0
    assert capsys.readouterr().out.startswith("applied AppraisalPolicy snp-demo@")
    assert main(["admin", "policy", "history", "snp-demo", "--service", "verifier",
                 *verifier, *_cli_identity(env, "pa")]) == 0
    assert " pa apply " in capsys.readouterr().out
    assert main(["admin", "audit", "verify", "--service", "broker", *broker,
                 *_cli_identity(env, "au")]) == 0
    assert "audit chain OK" in capsys.readouterr().out
    assert main(["admin", "status", "--service", "verifier", *verifier,
                 *_cli_identity(env, "op")]) == 0
    assert "you are op: operator" in capsys.readouterr().out
    assert main(["admin", "policy", "apply", str(policy), "--comment", "x",  # no --author
                 "--author", "pa", *verifier, *_cli_identity(env, "pa")]) == 2
    assert main(["admin", "secret", "list", *broker, *_cli_identity(env, "op")]) == 1
    assert "expected role secret-admin, actual operator" in capsys.readouterr().err
