"""Structured logs through real processes at DEBUG: every line either service writes is one
JSON object; the request id an agent sends names the lines of that request in the broker's
and the verifier's log, its audit records and the result token; and neither log holds the
secret, the result token, the evidence or the report bytes in any common encoding.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import grpc
import jwt
import pytest
from support.demo_stack import prepared_services

from keybroker import binding
from keybroker.v1 import broker_pb2, broker_pb2_grpc, evidence_pb2
from keybroker.wrapping import AgentKeyPair, Suite, release_info
from keybroker_cli.demo import demo_collector, demo_init_data
from keybroker_cli.demo_setup import DEMO_KEY_ID, DemoLayout, agent_channel
from keybroker_cli.launcher import keybroker_command

pytestmark = pytest.mark.integration

REQUEST_ID = "logs-test-7f3a9c"


def _encodings(data: bytes) -> list[str]:
    """How bytes could appear in a text log."""
    return [data.hex(), base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()
            .rstrip("="), *([data.decode()] if data.isascii() else [])]


def _release(layout: DemoLayout, address: str) -> tuple[bytes, str, bytes]:
    """One release as the agent does it, keeping what must never be logged:
    (secret, result token, evidence bytes)."""
    credentials, channel_binding = agent_channel(layout)
    init_data = demo_init_data(layout, "snp")
    metadata = (("x-request-id", REQUEST_ID),)
    with grpc.secure_channel(address, credentials) as channel:
        stub = broker_pb2_grpc.KeyBrokerStub(channel)
        challenge = stub.GetChallenge(broker_pb2.GetChallengeRequest(
            tee=evidence_pb2.TEE_TYPE_SEV_SNP, key_ids=[DEMO_KEY_ID]), metadata=metadata,
            timeout=20)
        suite = Suite.X25519_HKDFSHA256_AES256GCM
        keys = AgentKeyPair.generate(suite)
        report_data = binding.report_data(challenge.nonce, suite.value, keys.public_bytes,
                                          binding.init_data_digest(init_data), channel_binding)
        evidence = demo_collector(layout, "snp").collect(report_data)
        reply = stub.ReleaseKey(broker_pb2.ReleaseKeyRequest(
            challenge_id=challenge.challenge_id, evidence=evidence,
            public_key=keys.public_bytes, suite=suite.wire,
            keys=[broker_pb2.KeyRef(key_id=DEMO_KEY_ID)], init_data=init_data,
            request_id=REQUEST_ID), metadata=metadata, timeout=20)
    (wrapped,) = reply.keys
    secret = keys.open(wrapped.sealed, release_info(wrapped.key_id, wrapped.version,
                                                    challenge.challenge_id))
    return secret, reply.result_token, evidence.SerializeToString()


def _json_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_logs_are_json_name_the_request_and_hold_no_secrets(tmp_path: Path) -> None:
    with prepared_services(tmp_path / "deploy", global_args=("--log-level", "DEBUG")) as running:
        layout = running.layout
        secret, token, evidence = _release(layout, running.broker.address)
    assert secret == running.secret
    logs = {name: layout.root / name / f"{name}.log" for name in ("broker", "verifier")}
    for name, path in logs.items():
        records = _json_lines(path)
        assert {"time", "level", "logger", "message"} <= set(records[0])
        mine = [r for r in records if r.get("request_id") == REQUEST_ID]
        assert mine, f"no {name} log line names the request"
        text = path.read_text()
        report = evidence_pb2.Evidence.FromString(evidence).snp.report
        for what, data in (("secret", secret), ("evidence", evidence), ("report", report),
                           ("token", token.encode())):
            for form in _encodings(data):
                assert form not in text, f"the {name} log holds the {what} ({form[:24]}...)"
        assert token.split(".")[1] not in text and token.split(".")[2] not in text
    assert any("released" in str(r["message"]) for r in _json_lines(logs["broker"])
               if r.get("request_id") == REQUEST_ID)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["keybroker.request-id"] == REQUEST_ID
    audit = subprocess.run(keybroker_command(
        "broker", "audit", "list", "--config", str(layout.broker_config), "--json",
        "--request-id", REQUEST_ID), capture_output=True, text=True, check=True)
    kinds = [json.loads(line)["kind"] for line in audit.stdout.splitlines()]
    assert kinds == ["intent", "released"]
