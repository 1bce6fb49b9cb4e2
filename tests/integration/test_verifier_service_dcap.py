"""The Verifier gRPC service on loopback appraising simulator TDX and SGX quotes end to end:
affirm (with a CCEL and a runtime log replayed into RTMR3), and deny a debug TD
(PLATFORM_POLICY), OutOfDate without grace (TCB_POLICY), an unknown MRTD (MEASUREMENT), a
tampered CCEL (EVENT_LOG), a missing required image, a debug enclave, missing CRLs, a policy of
another platform and the simulator root in secure mode."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from support.policy_docs import sgx_policy_yaml, tdx_policy_yaml

from attester_agent.simulator.dcap import (
    DEFAULT_MR_ENCLAVE,
    DcapTestCa,
    SgxSimulator,
    TdxSimulator,
)
from attester_agent.simulator.dcap_ca import PCK_CRL_FILE, ROOT_CRL_FILE
from keybroker.errors import Category, KeybrokerError, Malformed
from keybroker.evidence.ccel import parse_ccel_log
from keybroker.evidence.runtime_log import encode_log, image_event
from keybroker.evidence.tcg_log import ALG_SHA384
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import evidence_pb2, verifier_pb2, verifier_pb2_grpc
from keybroker_cli.verifier_cmd import JWKS_FILE, KEY_FILE
from verifier.collateral.cache import CollateralStore
from verifier.config import load_config
from verifier.dcap.tee import DcapEvidence
from verifier.dcap.trust import IntelTrustStore
from verifier.dcap.verify import DcapVerifier
from verifier.policy.compile import parse_policy
from verifier.result import ResultSigner
from verifier.server import VerifierServer, build_servicer
from verifier.service import VerifierServicer
from verifier.snp.tee import SnpEvidence
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
NONCE = os.urandom(32)
REPORT_DATA = hashlib.sha512(b"binding" + NONCE).digest()
IMAGE = "sha256:" + hashlib.sha256(b"registry.example/app:1.0").hexdigest()
OTHER_IMAGE = "sha256:" + hashlib.sha256(b"registry.example/miner:6.6").hexdigest()
INIT_DATA = b'[workload]\nname = "demo"\n'
MAX_BYTES = 1 << 20


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


@dataclass
class Env:
    ca: DcapTestCa
    tdx: TdxSimulator
    sgx: SgxSimulator
    collateral: Path
    no_crls: Path
    signer: ResultSigner

    def policies(self) -> dict[str, bytes]:
        mrtd = [self.tdx.mr_td.hex()]
        advisories = ["INTEL-SA-00828", "INTEL-SA-00615"]
        return {
            "tdx-demo": tdx_policy_yaml("tdx-demo", mrtd=mrtd, required_images=[IMAGE],
                                        allowed_images=[IMAGE]),
            "tdx-boot": tdx_policy_yaml("tdx-boot", mrtd=mrtd),
            "tdx-grace": tdx_policy_yaml("tdx-grace", mrtd=mrtd,
                                         out_of_date_grace_until=NOW + timedelta(days=1),
                                         allowed_advisories=advisories),
            "tdx-expired-grace": tdx_policy_yaml(
                "tdx-expired-grace", mrtd=mrtd, out_of_date_grace_until=NOW - timedelta(days=1),
                allowed_advisories=advisories),
            "tdx-no-crl": tdx_policy_yaml("tdx-no-crl", mrtd=mrtd, allow_missing_crl=True),
            "tdx-init": tdx_policy_yaml("tdx-init", mrtd=mrtd,
                                        workload={"require_init_data": True}),
            "sgx-demo": sgx_policy_yaml("sgx-demo", mrenclave=[DEFAULT_MR_ENCLAVE.hex()]),
            "sgx-signer": sgx_policy_yaml("sgx-signer", mrenclave=None, mrsigner=["00" * 32],
                                          isv_prod_id=1, min_isv_svn=1),
        }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    ca = DcapTestCa.generate()
    collateral = tmp_path_factory.mktemp("dcap-collateral")
    ca.write_collateral(collateral, now=NOW)
    no_crls = tmp_path_factory.mktemp("dcap-collateral-no-crls")
    ca.write_collateral(no_crls, now=NOW)
    (no_crls / PCK_CRL_FILE).unlink()
    (no_crls / ROOT_CRL_FILE).unlink()
    tdx = TdxSimulator(ca)
    tdx.extend_rtmr3(image_event(IMAGE))
    return Env(ca=ca, tdx=tdx, sgx=SgxSimulator(ca), collateral=collateral, no_crls=no_crls,
               signer=ResultSigner.generate("ES256"))


def _servicer(env: Env, *, insecure: bool = True, collateral: Path | None = None,
              roots: bool = True) -> VerifierServicer:
    policies = {name: parse_policy(raw, f"{name}.yaml", 1) for name, raw in env.policies().items()}
    store = CollateralStore.load([collateral or env.collateral])
    dcap = DcapEvidence(DcapVerifier(
        store, simulator_roots=[IntelTrustStore.from_der(env.ca.root_der)] if roots else []))
    snp = SnpEvidence(SnpVerifier(AmdTrustStore.pinned(), CollateralStore.empty()))
    return VerifierServicer(verifiers={"snp": snp, "tdx": dcap, "sgx": dcap},
                            policies=policies, signer=env.signer, insecure=insecure,
                            max_request_bytes=MAX_BYTES, clock=lambda: NOW)


@asynccontextmanager
async def serving(servicer: VerifierServicer) -> AsyncIterator[grpc.aio.Channel]:
    server = await VerifierServer.start(servicer, "127.0.0.1:0", tls=None,
                                        max_request_bytes=MAX_BYTES)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield channel
    finally:
        await server.stop(0)


def _tdx_request(sim: TdxSimulator, *, policies: tuple[str, ...] = ("tdx-demo",),
                 ccel: tuple[bytes, bytes] | None = None, runtime_log: bytes | None = None,
                 report_data: bytes = REPORT_DATA,
                 init_data: bytes = b"") -> verifier_pb2.AppraiseRequest:
    table, data = ccel if ccel is not None else sim.ccel()
    log = runtime_log if runtime_log is not None else encode_log([image_event(IMAGE)])
    evidence = evidence_pb2.TdxEvidence(quote=sim.quote(report_data), ccel_table=table,
                                        ccel_data=data, runtime_log=log)
    return verifier_pb2.AppraiseRequest(
        evidence=evidence_pb2.Evidence(tdx=evidence), expected_report_data=REPORT_DATA,
        nonce=NONCE, policy_ids=list(policies), request_id="req-tdx", init_data=init_data)


def _sgx_request(sim: SgxSimulator, *, policies: tuple[str, ...] = ("sgx-demo",)
                 ) -> verifier_pb2.AppraiseRequest:
    return verifier_pb2.AppraiseRequest(
        evidence=evidence_pb2.Evidence(sgx=evidence_pb2.SgxEvidence(
            quote=sim.quote(REPORT_DATA))),
        expected_report_data=REPORT_DATA, nonce=NONCE, policy_ids=list(policies),
        request_id="req-sgx")


async def _appraise(channel: grpc.aio.Channel, request: verifier_pb2.AppraiseRequest) -> str:
    stub = verifier_pb2_grpc.VerifierStub(channel)
    response: verifier_pb2.AppraiseResponse = await stub.Appraise(request, timeout=20)
    return response.result_token


async def _denied(channel: grpc.aio.Channel,
                  request: verifier_pb2.AppraiseRequest) -> KeybrokerError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _appraise(channel, request)
    return error_from_rpc(exc.value, "verifier")


def _claims(env: Env, token: str) -> dict[str, object]:
    key = jwt.PyJWKSet.from_dict(env.signer.jwks()).keys[0]
    decoded: dict[str, object] = jwt.decode(token, key.key, algorithms=["ES256"],
                                            audience="keybroker-broker",
                                            options={"verify_iat": False, "verify_nbf": False,
                                                     "verify_exp": False})
    return decoded


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_tdx_affirmed_with_ccel_and_measured_image(env: Env) -> None:
    """A simulator TD with its CCEL and an image measured into RTMR3 gets an affirming token
    whose annotated evidence carries the replayed boot and image claims."""
    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            token = await _appraise(channel, _tdx_request(env.tdx,
                                                          policies=("tdx-demo", "tdx-boot")))
        claims = _claims(env, token)
        assert claims["keybroker.insecure"] is True
        assert claims["keybroker.report-data"] == REPORT_DATA.hex()
        submods = claims["submods"]
        assert isinstance(submods, dict) and set(submods) == {"tdx-demo", "tdx-boot"}
        demo = submods["tdx-demo"]
        assert demo["ear.status"] == "affirming"
        assert demo["ear.trustworthiness-vector"]["executables"] == 2
        assert submods["tdx-boot"]["ear.trustworthiness-vector"]["executables"] == 3
        evidence = demo["ear.veraison.annotated-evidence"]
        assert evidence["platform"] == "tdx" and evidence["mr_td"] == env.tdx.mr_td.hex()
        assert evidence["tcb"]["status"] == "UpToDate"
        events = evidence["events"]
        assert events["images"] == [IMAGE]
        assert events["kernel"] == env.tdx.boot.kernel_digest.hex()
        assert events["initrd"] == env.tdx.boot.initrd_digest.hex()
        assert events["firmware"] == [env.tdx.boot.firmware_digest.hex()]

    run(go())


def test_tdx_debug_td_is_platform_policy(env: Env) -> None:
    """A debug TD (TDATTRIBUTES bit 0) is denied PLATFORM_POLICY (row 38)."""
    sim = TdxSimulator(env.ca, td_attributes=(1 << 28) | 1)
    sim.extend_rtmr3(image_event(IMAGE))

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            err = await _denied(channel, _tdx_request(sim))
        assert err.category is Category.PLATFORM_POLICY and err.rule == "tdx.debug"

    run(go())


def test_tdx_out_of_date_needs_grace(env: Env) -> None:
    """OutOfDate is TCB_POLICY without grace and after the grace date; before it the token
    says warning (row 39)."""
    sim = TdxSimulator(env.ca, tcb="OutOfDate")

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            err = await _denied(channel, _tdx_request(sim, policies=("tdx-boot",),
                                                      runtime_log=b""))
            assert err.category is Category.TCB_POLICY and err.actual == "OutOfDate"
            late = await _denied(channel, _tdx_request(sim, policies=("tdx-expired-grace",),
                                                       runtime_log=b""))
            assert late.category is Category.TCB_POLICY
            assert late.rule == "tdx.out_of_date_grace_until"
            token = await _appraise(channel, _tdx_request(sim, policies=("tdx-grace",),
                                                          runtime_log=b""))
        submod = _claims(env, token)["submods"]["tdx-grace"]  # type: ignore[index]
        assert submod["ear.status"] == "warning"
        assert submod["ear.trustworthiness-vector"]["hardware"] == 32

    run(go())


def test_tdx_unknown_mrtd_is_measurement(env: Env) -> None:
    """A TD whose MRTD is not in the policy is MEASUREMENT (row 44)."""
    changed = bytearray(env.tdx.mr_td)
    changed[0] ^= 1
    sim = TdxSimulator(env.ca, mr_td=bytes(changed))
    sim.extend_rtmr3(image_event(IMAGE))

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            err = await _denied(channel, _tdx_request(sim))
        assert err.category is Category.MEASUREMENT and err.rule == "tdx.mrtd"
        assert err.actual == bytes(changed).hex()

    run(go())


def test_tdx_tampered_ccel_is_event_log(env: Env) -> None:
    """A CCEL edited after the quote (one byte of one digest) is EVENT_LOG (row 47)."""
    table, data = env.tdx.ccel()
    kernel = next(e for e in parse_ccel_log(data).events if e.index == 2
                  and e.digest(ALG_SHA384) == env.tdx.boot.kernel_digest)
    at = data.index(env.tdx.boot.kernel_digest)
    tampered = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
    assert kernel.event_type == 0x80000003

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            err = await _denied(channel, _tdx_request(env.tdx, ccel=(table, tampered)))
        assert err.category is Category.EVENT_LOG and "RTMR1" in err.reason

    run(go())


def test_tdx_runtime_log_must_replay_and_required_image_present(env: Env) -> None:
    """A runtime log with an extra image is EVENT_LOG (row 49); without any runtime log the
    required image is MEASUREMENT (row 46); a TD that measured a forbidden image but replays
    correctly is MEASUREMENT (row 48)."""
    other = TdxSimulator(env.ca)
    other.extend_rtmr3(image_event(IMAGE))
    other.extend_rtmr3(image_event(OTHER_IMAGE))
    both = encode_log([image_event(IMAGE), image_event(OTHER_IMAGE)])

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            extra = await _denied(channel, _tdx_request(env.tdx, runtime_log=both))
            assert extra.category is Category.EVENT_LOG and "RTMR3" in extra.reason
            fresh = TdxSimulator(env.ca)
            missing = await _denied(channel, _tdx_request(fresh, runtime_log=b""))
            assert missing.category is Category.MEASUREMENT
            assert missing.rule == "tdx.required_images"
            forbidden = await _denied(channel, _tdx_request(other, runtime_log=both))
            assert forbidden.category is Category.MEASUREMENT
            assert forbidden.rule == "tdx.allowed_images" and forbidden.actual == OTHER_IMAGE

    run(go())


def test_tdx_init_data_bound_in_mrconfigid(env: Env) -> None:
    """Init-data whose SHA-384 is MRCONFIGID passes; another document is MEASUREMENT (row 45)."""
    sim = TdxSimulator(env.ca, mr_config_id=hashlib.sha384(INIT_DATA).digest())

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            assert await _appraise(channel, _tdx_request(sim, policies=("tdx-init",),
                                                         runtime_log=b"", init_data=INIT_DATA))
            err = await _denied(channel, _tdx_request(sim, policies=("tdx-init",),
                                                      runtime_log=b"", init_data=b"other"))
        assert err.category is Category.MEASUREMENT

    run(go())


def test_tdx_workload_claims_in_token(env: Env) -> None:
    """Bound init-data content becomes the token's workload claims (name, register, digest)."""
    sim = TdxSimulator(env.ca, mr_config_id=hashlib.sha384(INIT_DATA).digest())

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            token = await _appraise(channel, _tdx_request(sim, policies=("tdx-init",),
                                                          runtime_log=b"", init_data=INIT_DATA))
        claims = jwt.decode(token, options={"verify_signature": False})
        workload = claims["submods"]["tdx-init"]["keybroker.workload"]
        assert workload["name"] == "demo"
        assert workload["init_data_register"] == "MRCONFIGID"
        assert workload["init_data_digest"] == hashlib.sha384(INIT_DATA).hexdigest()

    run(go())


def test_tdx_binding_platform_and_root(env: Env) -> None:
    """Wrong report_data is BINDING; an SGX policy for TDX evidence is MALFORMED naming both;
    the simulator root without the insecure switch is CHAIN_UNTRUSTED."""
    other = hashlib.sha512(b"another challenge").digest()

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            err = await _denied(channel, _tdx_request(env.tdx, report_data=other))
            assert err.category is Category.BINDING and err.actual == other.hex()
            mixed = await _denied(channel, _tdx_request(env.tdx, policies=("tdx-demo",
                                                                           "sgx-demo")))
            assert mixed.category is Category.MALFORMED
            assert "sgx" in mixed.reason and "tdx" in mixed.reason
        async with serving(_servicer(env, insecure=False)) as channel:
            err = await _denied(channel, _tdx_request(env.tdx))
            assert err.category is Category.CHAIN_UNTRUSTED
        async with serving(_servicer(env, roots=False)) as channel:
            err = await _denied(channel, _tdx_request(env.tdx))
            assert err.category is Category.CHAIN_UNTRUSTED

    run(go())


def test_tdx_missing_crls_follow_the_policy(env: Env) -> None:
    """Without CRLs the default policy is COLLATERAL_STALE; allow_missing_crl gives warning."""
    async def go() -> None:
        async with serving(_servicer(env, collateral=env.no_crls)) as channel:
            err = await _denied(channel, _tdx_request(env.tdx, policies=("tdx-boot",)))
            assert err.category is Category.COLLATERAL_STALE
            assert err.rule == "tdx.allow_missing_crl"
            token = await _appraise(channel, _tdx_request(env.tdx, policies=("tdx-no-crl",)))
        submod = _claims(env, token)["submods"]["tdx-no-crl"]  # type: ignore[index]
        assert submod["ear.status"] == "warning"
        warnings = submod["ear.veraison.annotated-evidence"]["tcb"]["collateral_warnings"]
        assert warnings

    run(go())


def test_sgx_affirmed_and_denied(env: Env) -> None:
    """A production enclave with the accepted MRENCLAVE is affirmed; a debug enclave is
    PLATFORM_POLICY and a wrong signer is PLATFORM_POLICY (row 41)."""
    debug = SgxSimulator(env.ca, attributes=bytes.fromhex("0700000000000000e700000000000000"))

    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            token = await _appraise(channel, _sgx_request(env.sgx))
            err = await _denied(channel, _sgx_request(debug))
            assert err.category is Category.PLATFORM_POLICY and err.rule == "sgx.debug"
            signer = await _denied(channel, _sgx_request(env.sgx, policies=("sgx-signer",)))
            assert signer.category is Category.PLATFORM_POLICY
            assert signer.rule == "sgx.mrsigner"
        submod = _claims(env, token)["submods"]["sgx-demo"]  # type: ignore[index]
        assert submod["ear.status"] == "affirming"
        assert submod["ear.veraison.annotated-evidence"]["platform"] == "sgx"

    run(go())


def test_sgx_out_of_date_is_tcb_policy(env: Env) -> None:
    """An SGX platform at an OutOfDate TCB level is TCB_POLICY under the default policy."""
    async def go() -> None:
        async with serving(_servicer(env)) as channel:
            err = await _denied(channel, _sgx_request(SgxSimulator(env.ca, tcb="OutOfDate")))
        assert err.category is Category.TCB_POLICY

    run(go())


def test_build_servicer_with_simulator_intel_roots(env: Env, tmp_path: Path) -> None:
    """simulator_intel_roots builds a DCAP verifier trusting the simulator root, and is refused
    at start-up without the insecure switch (row 58)."""
    (tmp_path / "root.pem").write_bytes(env.ca.root_pem())
    for name, raw in env.policies().items():
        (tmp_path / f"{name}.yaml").write_bytes(raw)
    signer = ResultSigner.generate()
    signer.write_private_key(tmp_path / KEY_FILE)
    signer.write_jwks(tmp_path / JWKS_FILE)
    (tmp_path / "verifier.toml").write_text(
        "[verifier]\npolicies = [\"tdx-demo.yaml\", \"sgx-demo.yaml\"]\n"
        f'result_key = "{KEY_FILE}"\ncollateral = ["{env.collateral}"]\n'
        'simulator_intel_roots = ["root.pem"]\n')
    config = load_config(tmp_path / "verifier.toml")
    with pytest.raises(Malformed) as exc:
        build_servicer(config, insecure=False)
    assert exc.value.rule == "startup.insecure_guard"
    servicer = build_servicer(config, insecure=True, clock=lambda: NOW, plaintext=True)

    async def go() -> None:
        async with serving(servicer) as channel:
            assert await _appraise(channel, _tdx_request(env.tdx))
            assert await _appraise(channel, _sgx_request(env.sgx))

    run(go())
