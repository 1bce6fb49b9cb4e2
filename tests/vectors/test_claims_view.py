"""The claims view: exact round trips of real and simulated claims, strict refusal of anything
else (hypothesis), decoded fields authoritative over raw encodings, lookup, the sample."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import VECTORS

from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError, Malformed
from verifier.claims_view import (
    claims_view,
    lookup,
    platform_claims_from_dict,
    sample_activation,
    sample_claims,
)
from verifier.collateral.cache import CollateralStore
from verifier.dcap.claims import SgxClaims, TdxClaims
from verifier.dcap.verify import DcapVerifier
from verifier.eventlog.measured import td_event_claims
from verifier.snp.claims import GuestPolicy, SnpClaims
from verifier.snp.trust import AmdTrustStore
from verifier.snp.verify import SnpVerifier
from verifier.snp.view import sample_snp_claims
from verifier.tee import Claims
from verifier.workload import NO_WORKLOAD, WorkloadClaims

pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning")

V = VECTORS
SNP_VECTORS = [
    ("gosev-milan-v2/attestation.bin", ["gosev-milan-v2/vcek.der"], "2022-09-24T01:00:00Z"),
    ("trustee-aws-milan-vlek-v3/test-vlek-report.bin", ["trustee-aws-milan-vlek-v3/test-vlek.der"],
     "2025-06-01T00:00:00Z"),
    ("teekit-gcp-milan-v5/sev-gcp.bin", ["teekit-gcp-milan-v5/sev-gcp-vcek.pem"],
     "2026-01-01T00:00:00Z"),
    ("trustee-e2e-genoa-v3/report.bin", ["trustee-e2e-genoa-v3/vcek.der"],
     "2026-01-01T00:00:00Z"),
    ("trustee-milan-v2-idblock/test-report.bin", ["trustee-milan-v2-idblock/test-vcek.der"],
     "2024-01-01T00:00:00Z"),
]
ROOTS = V / "tdx/intel-roots"
GOTDX = V / "tdx/gotdx-spr-e4-v4"
CLOUD = V / "tdx/gotdx-gce-spr-v4-ccel"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _snp_vector_claims() -> list[SnpClaims]:
    out = []
    for report, collateral, when in SNP_VECTORS:
        store = CollateralStore.load([V / "sev-snp" / c for c in collateral])
        out.append(SnpVerifier(AmdTrustStore.pinned(), store).verify(
            (V / "sev-snp" / report).read_bytes(), b"", at=at(when), allow_missing_crl=True))
    return out


def _simulated_snp_claims(tmp: Path) -> list[SnpClaims]:
    out = []
    for product in ("Milan", "Genoa", "Turin"):
        ca = SnpTestCa.generate(product)
        ca.save(tmp / product)
        sim = SnpSimulator(ca, measurement=hashlib.sha384(product.encode()).digest(),
                           host_data=hashlib.sha256(b"init").digest())
        report, table = sim.attest(b"\x44" * 64)
        trust = AmdTrustStore.pinned().with_simulator_roots([tmp / product / "ark.pem"])
        crl = ca.write_collateral(tmp / product / "collateral",
                                  now=datetime(2026, 1, 1, tzinfo=UTC))
        out.append(SnpVerifier(trust, CollateralStore.load([crl])).verify(
            report, table, at=datetime(2026, 1, 1, tzinfo=UTC)))
    return out


def _dcap_vector_claims() -> list[TdxClaims | SgxClaims]:
    store = CollateralStore.load([
        GOTDX, ROOTS, V / "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated_collateral.json",
        V / "sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json",
        V / "tdx/gotdx-emr-v5/sample_tcbinfo_response_v5"])
    verifier = DcapVerifier(store)
    spr = verifier.verify_tdx((V / "tdx/trustee-spr-v4/tdx_quote_4.dat").read_bytes(),
                              at=datetime(2023, 7, 1, 1, tzinfo=UTC))
    v5 = verifier.verify_tdx((V / "tdx/gotdx-emr-v5/quote_v5_sample.dat").read_bytes(),
                             at=datetime(2026, 3, 1, tzinfo=UTC))
    sgx = verifier.verify_sgx((V / "sgx/dcapqvl-sgx-v3/sgx_quote").read_bytes(),
                              at=datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC))
    from keybroker.evidence.dcap_quote import parse_tdx_quote  # noqa: PLC0415

    quote = parse_tdx_quote((CLOUD / "cos-113-tdx-quote.dat").read_bytes())
    events = td_event_claims(tuple(quote.td_report.rtmrs),
                             ccel_table=(CLOUD / "ccel_table.dat").read_bytes(),
                             ccel_data=(CLOUD / "ccel_data.dat").read_bytes(), runtime_log=None)
    with_events = dataclasses.replace(spr, events=events)
    missing_crl = dataclasses.replace(
        v5, tcb=dataclasses.replace(v5.tcb, collateral_warnings=("pck-crl missing",)))
    return [spr, v5, sgx, with_events, missing_crl]


@pytest.fixture(scope="module")
def real_claims(tmp_path_factory: pytest.TempPathFactory) -> list[Claims]:
    tmp = tmp_path_factory.mktemp("sim")
    return [*_snp_vector_claims(), *_simulated_snp_claims(tmp), *_dcap_vector_claims(),
            *(sample_claims(p)[0] for p in ("sev-snp", "tdx", "sgx"))]


def test_round_trip_of_real_and_simulated_claims(real_claims: list[Claims]) -> None:
    """from_dict(as_dict()) reproduces every real vector, simulator and sample claims value."""
    platforms = set()
    for claims in real_claims:
        doc = claims.as_dict()
        back = platform_claims_from_dict(doc)
        assert back == claims
        assert back.as_dict() == doc
        platforms.add(doc["platform"])
    assert platforms == {"sev-snp", "tdx", "sgx"}
    turin = [c for c in real_claims if isinstance(c, SnpClaims) and c.product == "Turin"]
    assert turin and turin[0].reported_tcb.fmc is not None


def test_round_trip_survives_json(real_claims: list[Claims]) -> None:
    """The view survives a JSON round trip (what records and `keybroker verify --json` store)."""
    import json  # noqa: PLC0415

    for claims in real_claims:
        doc = json.loads(json.dumps(claims.as_dict()))
        assert platform_claims_from_dict(doc) == claims


def _leaves(value: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    return [path]


def _set(doc: dict[str, object], path: tuple[str, ...], value: object) -> dict[str, object]:
    out = copy.deepcopy(doc)
    target: dict[str, object] = out
    for part in path[:-1]:
        nxt = target[part]
        assert isinstance(nxt, dict)
        target = nxt
    target[path[-1]] = value
    return out


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.sampled_from(["00" * 48, "0x30000", "1.55.21", "UpToDate",
                                               "2025-01-01T00:00:00Z", "sha256:" + "ab" * 32]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_changed_leaf_is_claims_or_malformed(data: st.DataObject) -> None:
    """Replacing any one leaf of a valid view with an arbitrary value gives claims that
    round-trip, or Malformed; never another exception."""
    platform = data.draw(st.sampled_from(["sev-snp", "tdx", "sgx"]))
    doc = sample_claims(platform)[0].as_dict()
    path = data.draw(st.sampled_from(_leaves(doc)))
    changed = _set(doc, path, data.draw(_JSONISH))
    try:
        claims = platform_claims_from_dict(changed)
    except Malformed as exc:
        assert exc.category is Category.MALFORMED and exc.rule == "claims.schema"
        return
    assert platform_claims_from_dict(claims.as_dict()) == claims


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["platform", "version", "tcb", "events", "x"])
                           | st.text(max_size=6), _JSONISH, max_size=6),
       platform=st.sampled_from(["sev-snp", "tdx", "sgx", None]))
def test_arbitrary_dicts_are_malformed(doc: dict[str, object], platform: str | None) -> None:
    """Arbitrary dicts (with or without a platform) are Malformed, never another error."""
    if platform is not None:
        doc["platform"] = platform
    with pytest.raises(Malformed):
        platform_claims_from_dict(doc)


@settings(max_examples=100, deadline=None)
@given(value=_JSONISH)
def test_non_maps_are_malformed(value: object) -> None:
    """A view that is not a map is Malformed."""
    with pytest.raises(Malformed):
        platform_claims_from_dict(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("platform", ["sev-snp", "tdx", "sgx"])
def test_missing_and_unknown_keys_name_the_path(platform: str) -> None:
    """A missing claim and an unknown claim are Malformed naming the dotted path."""
    doc = sample_claims(platform)[0].as_dict()
    del doc["report_data"]
    with pytest.raises(Malformed) as exc:
        platform_claims_from_dict(doc)
    assert "evidence.report_data" in exc.value.reason and exc.value.actual == "absent"
    doc = sample_claims(platform)[0].as_dict()
    tcb = doc["tcb"] if platform != "sev-snp" else doc["reported_tcb"]
    assert isinstance(tcb, dict)
    tcb["extra"] = 1
    with pytest.raises(Malformed) as exc:
        platform_claims_from_dict(doc)
    assert "extra" in exc.value.reason


def test_nothing_is_coerced() -> None:
    """true is not an integer, short hex is refused, a zone-less tcb_date is refused."""
    snp = sample_claims("sev-snp")[0].as_dict()
    for path, value in ((("vmpl",), True), (("measurement",), "ab" * 47),
                        (("current_firmware",), "1.55"), (("policy", "raw"), "30000"),
                        (("reported_tcb", "microcode"), 256), (("cpuid",), [1, 2])):
        with pytest.raises(Malformed):
            platform_claims_from_dict(_set(snp, path, value))
    tdx = sample_claims("tdx")[0].as_dict()
    for path, value in ((("tcb", "tcb_date"), "2025-11-12T00:00:00"),
                        (("tcb", "status"), "Fine"), (("xfam",), "e7"),
                        (("td_attributes", "unknown_bits"), "0000000000000001")):
        with pytest.raises(Malformed):
            platform_claims_from_dict(_set(tdx, path, value))


def test_decoded_fields_win_over_raw() -> None:
    """A fixture may flip a named flag or a TCB component without re-encoding raw."""
    snp = sample_snp_claims()
    doc = snp.as_dict()
    debug = platform_claims_from_dict(_set(doc, ("policy", "debug"), True))
    assert isinstance(debug, SnpClaims)
    assert debug.policy.debug and debug.policy.raw == snp.policy.raw | 1 << 19
    low = platform_claims_from_dict(_set(doc, ("reported_tcb", "microcode"), 200))
    assert isinstance(low, SnpClaims)
    assert low.reported_tcb.microcode == 200 and low.reported_tcb.raw[7] == 200
    assert low.reported_tcb.raw[:7] == snp.reported_tcb.raw[:7]
    reserved = platform_claims_from_dict(_set(doc, ("policy", "raw"), hex(0x30000 | 1 << 30)))
    assert isinstance(reserved, SnpClaims) and reserved.policy.raw >> 30 & 1
    tdx_doc = sample_claims("tdx")[0].as_dict()
    td = platform_claims_from_dict(_set(tdx_doc, ("td_attributes", "debug"), True))
    assert isinstance(td, TdxClaims) and td.td_attributes.debug
    sgx_doc = sample_claims("sgx")[0].as_dict()
    enclave = platform_claims_from_dict(_set(sgx_doc, ("debug",), True))
    assert isinstance(enclave, SgxClaims) and enclave.debug
    assert GuestPolicy(0x30000).as_dict()["smt"] is True


def test_tcb_date_accepts_an_aware_datetime() -> None:
    """A YAML fixture's timestamp (an aware datetime) is accepted for tcb_date."""
    doc = sample_claims("sgx")[0].as_dict()
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    claims = platform_claims_from_dict(_set(doc, ("tcb", "tcb_date"), when))
    assert isinstance(claims, SgxClaims) and claims.tcb.tcb_date == when


def test_unknown_platform_is_malformed() -> None:
    """A view without a known platform is Malformed naming evidence.platform."""
    with pytest.raises(Malformed) as exc:
        platform_claims_from_dict({"platform": "keystone"})
    assert "evidence.platform" in exc.value.reason


def test_claims_view_shape_and_lookup() -> None:
    """The view has exactly platform, evidence, workload; lookup walks maps and lists."""
    claims, workload = sample_claims("tdx")
    view = claims_view(claims, workload)
    assert set(view) == {"platform", "evidence", "workload"}
    assert view["platform"] == "tdx" and view["evidence"] == claims.as_dict()
    assert lookup(view, "evidence.tcb.status") == "UpToDate"
    assert lookup(view, "evidence.events.images.0") == workload.images[0]
    assert lookup(view, "workload.name") == "demo"
    for bad in ("evidence.nope", "evidence.events.images.7", "evidence.tcb.status.x", "",
                "evidence.events.images.-1", "evidence.events.images.\u0661"):
        with pytest.raises(Malformed) as exc:
            lookup(view, bad)
        assert exc.value.rule == "claims.path"


@pytest.mark.parametrize("platform", ["sev-snp", "tdx", "sgx"])
def test_sample_activation_is_fully_populated(platform: str) -> None:
    """The sample has no null and no empty list anywhere, and round-trips."""
    view = sample_activation(platform)
    assert set(view) == {"platform", "evidence", "workload"} and view["platform"] == platform

    def empties(value: object, path: str) -> list[str]:
        if value is None or value == []:
            return [path]
        if isinstance(value, Mapping):
            return [p for k, v in value.items() for p in empties(v, f"{path}.{k}")]
        return []

    assert empties(view, "") == []
    evidence = view["evidence"]
    assert isinstance(evidence, dict)
    assert platform_claims_from_dict(evidence).as_dict() == evidence
    workload = view["workload"]
    assert isinstance(workload, dict)
    assert WorkloadClaims.from_dict(workload).as_dict() == workload


def test_sample_activation_unknown_platform() -> None:
    """An unknown platform has no sample (Malformed)."""
    with pytest.raises(KeybrokerError):
        sample_activation("keystone")


def test_sample_activation_is_fresh() -> None:
    """Each call returns a new dict (callers may not corrupt later samples)."""
    first = sample_activation("sev-snp")
    first["platform"] = "changed"
    assert sample_activation("sev-snp")["platform"] == "sev-snp"
    assert claims_view(sample_claims("sgx")[0], NO_WORKLOAD)["workload"] == NO_WORKLOAD.as_dict()


def test_snp_claims_recorded_before_collateral_warnings_still_load() -> None:
    """SNP claims recorded before ``collateral_warnings`` existed load with no warning; an
    unknown key is still refused."""
    doc = sample_snp_claims().as_dict()
    del doc["collateral_warnings"]
    assert platform_claims_from_dict(doc).collateral_warnings == ()  # type: ignore[union-attr]
    with pytest.raises(Malformed, match="unknown claim"):
        platform_claims_from_dict({**doc, "collateral_warning": []})
