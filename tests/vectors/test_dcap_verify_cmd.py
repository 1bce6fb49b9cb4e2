"""``keybroker verify --tee tdx|sgx`` on every real TDX/SGX quote of the vector set: claims
and TCB status as the vector README states, collateral recognised by content, missing CRLs and
QE identities, event-log replay, policy appraisal and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import VECTORS
from support.policy_docs import policy_yaml

from keybroker.evidence.ccel import parse_ccel_log
from keybroker_cli.main import main
from keybroker_cli.verify import decode_quote, split_simulator_roots
from verifier.eventlog.rtmr import rtmr_events

V = VECTORS
README = (V / "README.md").read_text()
ROOTS = V / "tdx/intel-roots"
EMR_BUNDLE = V / "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated_collateral.json"
SGX_BUNDLE = V / "sgx/dcapqvl-sgx-v3/sgx_quote_collateral.json"
SPR_TCB = V / "tdx/teekit-tcbinfo/tcbInfo-tdx-00806f050000.json"
TD_QE = V / "tdx/trustee-gnr-v4/enclaveIdentity.json"
SGX_TCB = V / "sgx/teekit-tcbinfo/tcbInfo-sgx-00906ed50000.json"
GCE = V / "tdx/gotdx-gce-spr-v4-ccel"
SA = ["INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"]
T_2025 = "2025-10-28T12:00:00Z"

# name: (tee, quote, time, collateral, needs --allow-missing-crl, status, advisories)
VERIFIED = {
    "trustee-spr": ("tdx", "tdx/trustee-spr-v4/tdx_quote_4.dat", "2023-07-01T01:00:00Z",
                    [V / "tdx/gotdx-spr-e4-v4", ROOTS], False, "UpToDate", []),
    "gotdx-emr-v5": ("tdx", "tdx/gotdx-emr-v5/quote_v5_sample.dat", "2026-03-01T00:00:00Z",
                     [V / "tdx/gotdx-emr-v5/sample_tcbinfo_response_v5", EMR_BUNDLE, ROOTS],
                     False, "UpToDate", []),
    "dcapqvl-sgx": ("sgx", "sgx/dcapqvl-sgx-v3/sgx_quote", "2025-07-19T10:01:17Z", [SGX_BUNDLE],
                    False, "ConfigurationAndSWHardeningNeeded",
                    ["INTEL-SA-00289", "INTEL-SA-00615"]),
    "trustee-gnr": ("tdx", "tdx/trustee-gnr-v4/tdx_quote_6.dat", "2025-11-01T00:00:00Z",
                    [V / "tdx/trustee-gnr-v4", ROOTS], True, "OutOfDate", []),
    "teekit-azure": ("tdx", "tdx/teekit-azure-spr-v4/tdx-v4-azure", T_2025,
                     [SPR_TCB, TD_QE, ROOTS], True, "UpToDate", []),
    "gotdx-gce": ("tdx", "tdx/gotdx-gce-spr-v4-ccel/cos-113-tdx-quote.dat", T_2025,
                  [SPR_TCB, TD_QE, ROOTS], True, "UpToDate", []),
    "teekit-edgeless": ("tdx", "tdx/teekit-edgeless-spr-v4/tdx-v4-edgeless.dat", T_2025,
                        [SPR_TCB, TD_QE, ROOTS], True, "OutOfDate", ["INTEL-SA-00837", *SA]),
    "teekit-zkdcap": ("tdx", "tdx/teekit-zkdcap-spr-v4/tdx-v4-zkdcap.dat", T_2025,
                      [SPR_TCB, TD_QE, ROOTS], True, "OutOfDate", SA),
}
# name: (tee, quote, time, collateral, --allow-missing-crl, category)
REJECTED = {
    "dcapqvl-tdx-no-level": ("tdx", "tdx/dcapqvl-emr-v5-tcb-unsupported/tdx_quote_outdated",
                             "2026-03-20T10:41:14Z", [EMR_BUNDLE], False, "TCB_POLICY"),
    "teekit-tappd-no-level": ("tdx", "tdx/teekit-tappd-gnr-v4/tdx-v4-tappd.hex", T_2025,
                              [V / "tdx/teekit-tcbinfo/tcbInfo-tdx-b0c06f000000.json", TD_QE,
                               ROOTS], True, "TCB_POLICY"),
    "gotdx-spr-e4-trailer": ("tdx", "tdx/gotdx-spr-e4-v4/tdx_prod_quote_SPR_E4.dat",
                             "2023-07-01T01:00:00Z", [V / "tdx/gotdx-spr-e4-v4", ROOTS], False,
                             "MALFORMED"),
    "tlsn-no-qe-identity": ("sgx", "sgx/teekit-tlsn-v3/sgx-tlsn-quote9.dat",
                            "2025-10-01T00:00:00Z", [SGX_TCB, SGX_BUNDLE, ROOTS], True,
                            "COLLATERAL_STALE"),
    "maa-no-qe-identity": ("sgx", "sgx/maa-signer-embedded-v3/maa_sharedeus_sgx_quote.bin",
                           "2025-10-01T00:00:00Z", [SGX_TCB, ROOTS], True, "COLLATERAL_STALE"),
    "trustee-occlum-no-collateral": ("sgx", "sgx/trustee-occlum-v3/occlum_quote.dat",
                                     "2025-10-01T00:00:00Z", [V / "sgx", ROOTS], True,
                                     "COLLATERAL_STALE"),
    "teekit-occlum-no-collateral": ("sgx", "sgx/teekit-occlum-v3/sgx-occlum.dat",
                                    "2025-10-01T00:00:00Z", [V / "sgx", ROOTS], True,
                                    "COLLATERAL_STALE"),
}


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, object]]:
    """Run ``keybroker verify ... --json`` in-process; returns the exit code and the result."""
    code = main(["verify", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def argv_for(tee: str, quote: str, at: str, collateral: list[Path], allow: bool) -> list[str]:
    """The command line for one case."""
    out = [str(V / quote), "--tee", tee, "--at", at]
    for path in collateral:
        out += ["--collateral", str(path)]
    return out + (["--allow-missing-crl"] if allow else [])


def readme_expected(subpath: str) -> dict[str, str]:
    """key=value pairs of the README 'Expected:' line of ``subpath`` (before the QE part)."""
    section = README.split(f"#### `{subpath}`", 1)[1].split("\n#### ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("* Expected: quote v"))
    body = line.split("; QE:")[0]
    return dict(re.findall(r"(\w+)=([0-9a-fx]+)", body))


def le_hex(value: str, width: int) -> str:
    """README little-endian byte hex of an integer field as the claims render it."""
    return f"{int.from_bytes(bytes.fromhex(value), 'little'):0{width}x}"


def check_claims(subpath: str, claims: dict[str, object]) -> None:
    """Every value the README states for a quote is in its claims."""
    want = readme_expected(subpath)
    checked = 0
    for key, value in want.items():
        if key in ("tee_type", "att_key_type", "qe_vendor_id", "body_type", "size"):
            continue
        if key == "td_attributes":
            td = claims["td_attributes"]
            assert isinstance(td, dict)
            assert td["raw"] == le_hex(value, 16)
        elif key == "xfam":
            assert claims["xfam"] == le_hex(value, 16)
        elif key == "misc_select":
            assert claims["misc_select"] == le_hex(value, 8)
        elif key in ("isv_prod_id", "isv_svn"):
            assert claims[key] == int(value)
        else:
            assert claims[key] == value, key
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("name", sorted(VERIFIED))
def test_quotes_verify_with_readme_claims_and_status(name: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Each quote with collateral verifies at its time with the README's claims, TCB status
    and advisories (exit 0 for every status Intel defines)."""
    tee, quote, at, collateral, allow, status, advisories = VERIFIED[name]
    code, out = run_json(capsys, argv_for(tee, quote, at, collateral, allow))
    assert code == 0, out
    assert out["verdict"] == "verified"
    claims = out["claims"]
    assert isinstance(claims, dict)
    check_claims(quote, claims)
    tcb = claims["tcb"]
    assert isinstance(tcb, dict)
    assert (tcb["status"], tcb["advisory_ids"]) == (status, advisories)
    assert claims["insecure_root"] is False
    if allow:
        assert tcb["collateral_warnings"], "a CRL was missing, so the claims must say so"
    else:
        assert tcb["collateral_warnings"] == []


@pytest.mark.parametrize("name", sorted(n for n, case in VERIFIED.items() if case[4]))
def test_missing_crls_are_stale_without_the_flag(name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A quote whose PCK CRL is not available for its time is COLLATERAL_STALE unless
    --allow-missing-crl is given."""
    tee, quote, at, collateral, _, _, _ = VERIFIED[name]
    code, out = run_json(capsys, argv_for(tee, quote, at, collateral, False))
    assert code == 1
    assert out["category"] == "COLLATERAL_STALE"


def test_missing_crl_warning_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """With --allow-missing-crl the missing CRLs are named on stderr and in the claims."""
    tee, quote, at, collateral, _, _, _ = VERIFIED["trustee-gnr"]
    assert main(["verify", *argv_for(tee, quote, at, collateral, True)]) == 0
    captured = capsys.readouterr()
    assert "pck-crl missing" in captured.err
    assert "root-ca-crl missing" in captured.err
    assert "collateral_warnings: ['root-ca-crl missing', 'pck-crl missing']" in captured.out
    assert "TCB status: OutOfDate (advisories: none)" in captured.out
    assert "verdict: verified" in captured.out


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_quotes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Quotes matching no TCB level, without a current QE identity or any collateral, or with
    non-zero trailing bytes are rejected (exit 1) with the right category."""
    tee, quote, at, collateral, allow, category = REJECTED[name]
    code, out = run_json(capsys, argv_for(tee, quote, at, collateral, allow))
    assert code == 1
    assert (out["verdict"], out["category"]) == ("rejected", category)


def test_trailer_free_spr_e4_matches_no_tcb_level(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The go-tdx-guest SPR E4 quote without its test trailer verifies cryptographically with
    full 2023 collateral and then matches no TCB level (TCB_POLICY)."""
    raw = (V / "tdx/gotdx-spr-e4-v4/tdx_prod_quote_SPR_E4.dat").read_bytes()
    trailer = b"\nextra bytes(only for testing purpose)\n"
    assert raw.endswith(trailer)
    (tmp_path / "q.dat").write_bytes(raw[:-len(trailer)])
    code, out = run_json(capsys, [str(tmp_path / "q.dat"), "--tee", "tdx", "--at",
                                  "2023-07-01T01:00:00Z", "--collateral",
                                  str(V / "tdx/gotdx-spr-e4-v4"), "--collateral", str(ROOTS)])
    assert (code, out["category"], out["rule"]) == (1, "TCB_POLICY", "tcb-level")


def test_wrong_tee_for_the_quote_is_malformed(capsys: pytest.CaptureFixture[str]) -> None:
    """An SGX quote given as TDX (and vice versa) is MALFORMED (hostile row 8)."""
    code, out = run_json(capsys, argv_for("tdx", "sgx/dcapqvl-sgx-v3/sgx_quote",
                                          "2025-07-19T10:01:17Z", [SGX_BUNDLE], False))
    assert (code, out["category"]) == (1, "MALFORMED")
    code, out = run_json(capsys, argv_for("sgx", "tdx/trustee-spr-v4/tdx_quote_4.dat",
                                          "2023-07-01T01:00:00Z", [ROOTS], False))
    assert (code, out["category"]) == (1, "MALFORMED")


def test_gce_ccel_replays_to_the_rtmrs(capsys: pytest.CaptureFixture[str]) -> None:
    """The GCP quote with its CCEL table and data replays to its RTMRs; events become claims."""
    tee, quote, at, collateral, allow, _, _ = VERIFIED["gotdx-gce"]
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--ccel-table", str(GCE / "ccel_table.dat"),
                                  "--ccel-data", str(GCE / "ccel_data.dat")])
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    events = claims["events"]
    assert isinstance(events, dict)
    assert events["event_count"] > 0
    assert events["firmware"]
    assert events["images"] == []


def test_tampered_ccel_is_event_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One changed byte of event data in the GCP CCEL no longer replays: EVENT_LOG (row 47)."""
    raw = (GCE / "ccel_data.dat").read_bytes()
    events = rtmr_events(parse_ccel_log(raw).events)
    digest = events[3].digest  # an RTMR0 event early in the log
    assert raw.count(digest) == 1
    data = bytearray(raw)
    data[raw.index(digest)] ^= 0x01
    (tmp_path / "ccel").write_bytes(bytes(data))
    tee, quote, at, collateral, allow, _, _ = VERIFIED["gotdx-gce"]
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--ccel-table", str(GCE / "ccel_table.dat"),
                                  "--ccel-data", str(tmp_path / "ccel")])
    assert (code, out["category"]) == (1, "EVENT_LOG"), out


def test_subprocess_run_prints_status_and_exit_code() -> None:
    """The installed entry point verifies the SGX sample in a separate process (exit 0) and
    prints the TCB status with its advisories."""
    tee, quote, at, collateral, allow, _, _ = VERIFIED["dcapqvl-sgx"]
    proc = subprocess.run([sys.executable, "-m", "keybroker_cli.main", "verify",
                           *argv_for(tee, quote, at, collateral, allow)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ("TCB status: ConfigurationAndSWHardeningNeeded (advisories: INTEL-SA-00289, "
            "INTEL-SA-00615)") in proc.stdout
    assert "verdict: verified" in proc.stdout


def test_quote_text_encodings_are_recognised(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Binary, hex and base64 files of one quote decode to the same bytes and verify alike."""
    raw = (V / "sgx/dcapqvl-sgx-v3/sgx_quote").read_bytes()
    assert decode_quote(raw) == raw
    assert decode_quote(raw.hex().encode() + b"\n") == raw
    import base64  # noqa: PLC0415

    encoded = base64.b64encode(raw)
    wrapped = b"\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    assert decode_quote(wrapped) == raw
    (tmp_path / "q.b64").write_bytes(wrapped)
    code, out = run_json(capsys, [str(tmp_path / "q.b64"), "--tee", "sgx", "--at",
                                  "2025-07-19T10:01:17Z", "--collateral", str(SGX_BUNDLE)])
    assert (code, out["verdict"]) == (0, "verified")


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unsupported TEEs, options of another TEE, missing files and a policy for another
    platform are usage errors (--allow-missing-crl applies to every TEE)."""
    quote = str(V / "sgx/dcapqvl-sgx-v3/sgx_quote")
    assert main(["verify", quote, "--tee", "keystone"]) == 2
    assert main(["verify", quote, "--tee", "sgx", "--ccel-data", quote]) == 2
    assert main(["verify", quote, "--tee", "snp", "--runtime-log", quote]) == 2
    assert main(["verify", quote, "--tee", "tdx", "--cert-table", quote]) == 2
    assert main(["verify", str(tmp_path / "missing"), "--tee", "sgx"]) == 2
    assert main(["verify", quote, "--tee", "sgx", "--collateral", str(tmp_path / "no")]) == 2
    policy = write_policy(tmp_path / "p.yaml", "tdx", {"mrtd": []})
    assert main(["verify", quote, "--tee", "sgx", "--policy", str(policy)]) == 2
    assert "invalid choice: 'keystone'" in capsys.readouterr().err


def test_simulator_roots_are_routed_by_content(tmp_path: Path) -> None:
    """AMD ARK files go to the SNP trust store, a self-signed P-256 "Intel SGX Root CA" to the
    DCAP one (marked insecure); the pinned Intel root itself is not insecure."""
    amd = V / "sev-snp/amd-roots/ask_ark_milan.pem"
    intel = ROOTS / "IntelSGXRootCA.der"
    amd_paths, stores = split_simulator_roots([amd, intel])
    assert amd_paths == [amd]
    assert len(stores) == 1
    assert stores[0].insecure is False
    from attester_agent.simulator.dcap import DcapTestCa  # noqa: PLC0415

    ca = DcapTestCa.generate()
    (tmp_path / "sim.pem").write_bytes(ca.root_pem())
    amd_paths, stores = split_simulator_roots([tmp_path / "sim.pem"])
    assert amd_paths == []
    assert [s.insecure for s in stores] == [True]


def write_policy(path: Path, platform: str, section: dict[str, object]) -> Path:
    """A minimal appraisal policy file for ``platform``."""
    path.write_bytes(policy_yaml(platform, section, name=f"t-{platform}"))
    return path


def test_policy_appraisal_of_a_real_td(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """With --policy the v5 TD is appraised: its MRTD passes, another MRTD is MEASUREMENT."""
    tee, quote, at, collateral, allow, _, _ = VERIFIED["gotdx-emr-v5"]
    mr_td = readme_expected(quote)["mr_td"]
    good = write_policy(tmp_path / "good.yaml", "tdx", {"mrtd": [mr_td]})
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--policy", str(good)])
    assert code == 0, out
    appraisal = out["appraisal"]
    assert isinstance(appraisal, dict)
    assert appraisal["policy_id"]
    workload = out["workload"]
    assert isinstance(workload, dict) and workload["name"] is None
    assert workload["measured_register"] is None
    bad = write_policy(tmp_path / "bad.yaml", "tdx", {"mrtd": ["00" * 48]})
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--policy", str(bad)])
    assert (code, out["category"]) == (1, "MEASUREMENT")


def test_policy_denies_debug_td_and_unaccepted_status(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The trustee SPR TD has TDATTRIBUTES.DEBUG set (PLATFORM_POLICY under a policy), and an
    OutOfDate platform is TCB_POLICY under the default accepted statuses."""
    tee, quote, at, collateral, allow, _, _ = VERIFIED["trustee-spr"]
    policy = write_policy(tmp_path / "p.yaml", "tdx", {"mrtd": [readme_expected(quote)["mr_td"]]})
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--policy", str(policy)])
    assert (code, out["category"]) == (1, "PLATFORM_POLICY")
    tee, quote, at, collateral, allow, _, _ = VERIFIED["teekit-edgeless"]
    policy = write_policy(tmp_path / "q.yaml", "tdx",
                          {"mrtd": [readme_expected(quote)["mr_td"]], "allow_missing_crl": True})
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--policy", str(policy)])
    assert (code, out["category"]) == (1, "TCB_POLICY")


def test_policy_appraisal_of_a_real_enclave(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The SGX sample passes a policy naming its MRENCLAVE and accepting its status and
    advisories, and fails one that accepts only UpToDate."""
    tee, quote, at, collateral, allow, status, advisories = VERIFIED["dcapqvl-sgx"]
    mr_enclave = readme_expected(quote)["mr_enclave"]
    accepting = write_policy(tmp_path / "a.yaml", "sgx",
                             {"mrenclave": [mr_enclave],
                              "accepted_tcb_statuses": ["UpToDate", status],
                              "allowed_advisories": list(advisories)})
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--policy", str(accepting)])
    assert code == 0, out
    appraisal = out["appraisal"]
    assert isinstance(appraisal, dict) and appraisal["status"] == "warning"
    assert appraisal["warnings"] == [f"TCB status {status} accepted by the policy"]
    strict = write_policy(tmp_path / "s.yaml", "sgx", {"mrenclave": [mr_enclave]})
    code, out = run_json(capsys, [*argv_for(tee, quote, at, collateral, allow),
                                  "--policy", str(strict)])
    assert (code, out["category"]) == (1, "TCB_POLICY")


def test_simulator_quote_needs_the_insecure_root(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A simulated TDX quote is CHAIN_UNTRUSTED under the pinned root alone and verifies,
    marked insecure and announced on stderr, with --insecure-simulator-root."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from attester_agent.simulator.dcap import DcapTestCa, TdxSimulator  # noqa: PLC0415

    now = datetime.now(UTC).replace(microsecond=0)
    ca = DcapTestCa.generate()
    ca.write_collateral(tmp_path / "collateral", now=now)
    (tmp_path / "root.der").write_bytes(ca.root_der)
    (tmp_path / "q.dat").write_bytes(TdxSimulator(ca).quote(bytes(range(64))))
    base = [str(tmp_path / "q.dat"), "--tee", "tdx", "--collateral",
            str(tmp_path / "collateral")]
    code, out = run_json(capsys, base)
    assert (code, out["category"]) == (1, "CHAIN_UNTRUSTED")
    code = main(["verify", *base, "--insecure-simulator-root", str(tmp_path / "root.der"),
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "INSECURE" in captured.err
    claims = json.loads(captured.out)["claims"]
    assert claims["insecure_root"] is True
    assert claims["report_data"] == bytes(range(64)).hex()
    assert claims["tcb"]["collateral_warnings"] == []


def test_simulated_td_runtime_log_replays_into_rtmr3(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A simulated TD's CCEL plus the agent's runtime log replay to RTMR0-3: the measured image
    digest is a claim; a runtime log naming another image is EVENT_LOG."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from attester_agent.simulator.dcap import DcapTestCa, TdxSimulator  # noqa: PLC0415
    from keybroker.evidence.runtime_log import encode_log, image_event  # noqa: PLC0415

    now = datetime.now(UTC).replace(microsecond=0)
    ca = DcapTestCa.generate()
    ca.write_collateral(tmp_path / "collateral", now=now)
    (tmp_path / "root.pem").write_bytes(ca.root_pem())
    sim = TdxSimulator(ca)
    image = "sha256:" + "ab" * 32
    sim.extend_rtmr3(image_event(image))
    (tmp_path / "q.dat").write_bytes(sim.quote(bytes(64)))
    table, data = sim.ccel()
    (tmp_path / "table").write_bytes(table)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "runtime.log").write_bytes(encode_log([image_event(image)]))
    (tmp_path / "other.log").write_bytes(encode_log([image_event("sha256:" + "cd" * 32)]))
    base = [str(tmp_path / "q.dat"), "--tee", "tdx", "--collateral",
            str(tmp_path / "collateral"), "--insecure-simulator-root", str(tmp_path / "root.pem"),
            "--ccel-table", str(tmp_path / "table"), "--ccel-data", str(tmp_path / "data")]
    code, out = run_json(capsys, [*base, "--runtime-log", str(tmp_path / "runtime.log")])
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    assert claims["events"]["images"] == [image]  # type: ignore[index]
    code, out = run_json(capsys, [*base, "--runtime-log", str(tmp_path / "other.log")])
    assert (code, out["category"]) == (1, "EVENT_LOG")
