"""Real TPM vectors (tests/vectors/tpm, a GCE vTPM and seven boot event logs) through
``keybroker verify --tee tpm`` and ``keybroker eventlog``: the values tests/vectors/README.md
gives, and the categories of what must be refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from support.paths import VECTORS

from keybroker.errors import Category, KeybrokerError
from keybroker.evidence.tcg_log import EV_NO_ACTION, build_event_log, parse_event_log
from keybroker.evidence.tpm_quote import parse_attest
from keybroker_cli.main import main
from verifier.eventlog.pcr import check_pcrs
from verifier.eventlog.secure_boot import secure_boot_claims
from verifier.pki import certificates_in
from verifier.tpm.ak import lenient_names, verify_ak_certificate
from verifier.tpm.verify import boot_claims_in

README = (VECTORS / "README.md").read_text()
GCE = VECTORS / "tpm" / "gce-cos85-vtpm-no-nonce"
LOGS = VECTORS / "tpm" / "eventlogs"
BANKS = ("sha1", "sha256", "sha384")


def expected(subpath: str) -> str:
    """The ``Expected:`` line of a vector in the README."""
    section = README.split(f"#### `{subpath}`", 1)[1].split("\n#### ", 1)[0]
    return section.split("* Expected: ", 1)[1].split("\n", 1)[0]


def verify(capsys: pytest.CaptureFixture[str], bank: str, *extra: str,
           attest: Path | None = None, signature: Path | None = None
           ) -> tuple[int, dict[str, object]]:
    argv = ["verify", str(attest or GCE / f"quote_{bank}.attest"), "--tee", "tpm",
            "--signature", str(signature or GCE / f"quote_{bank}.sig"),
            "--ak", str(GCE / "ak_pub.tpmt"), "--pcrs", str(GCE / f"pcrs_{bank}.json"),
            "--json", *extra]
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("bank", BANKS)
def test_gce_quote_verifies_per_bank_with_readme_values(capsys: pytest.CaptureFixture[str],
                                                        bank: str) -> None:
    """Each bank's quote verifies under the AK with the README's extraData, clock, counters,
    firmware version and selection; the event log replays to the quoted PCRs 0-9."""
    code, out = verify(capsys, bank, "--eventlog", str(GCE / "eventlog.bin"), "--nonce", "")
    assert code == 0, out
    claims = out["claims"]
    assert isinstance(claims, dict)
    want = expected(f"tpm/gce-cos85-vtpm-no-nonce/quote_{bank}.attest")
    fields = dict(re.findall(r"(\w+)=([^;]*)", want))
    assert claims["extra_data"] == "" and fields["extraData"] == "(empty)"
    assert claims["clock"] == int(fields["clock"])
    assert claims["reset_count"] == int(fields["resetCount"]) == 10
    assert claims["restart_count"] == int(fields["restartCount"])
    assert claims["firmware_version"] == fields["firmwareVersion"]
    assert sorted(int(i) for i in claims["pcrs"][bank]) == list(range(24))
    assert claims["signature"] == "RSASSA-SHA256" and claims["ak_key"] == "RSA-2048"
    assert claims["nonce_checked"] is True
    assert claims["eventlog_pcrs"][bank] == list(range(10))
    ak = (GCE / "ak_pub.tpmt").read_bytes()
    assert claims["ak_name"] == "000b" + hashlib.sha256(ak).hexdigest()


def test_gce_pcr_values_match_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    """PCR0/4/7/9 of the SHA-256 bank are the values the README states."""
    code, out = verify(capsys, "sha256")
    assert code == 0
    pcrs = out["claims"]["pcrs"]["sha256"]  # type: ignore[index]
    want = expected("tpm/gce-cos85-vtpm-no-nonce/gce-cos-85-no-nonce.pb")
    for index, value in re.findall(r"PCR(\d+)\(sha256\)=([0-9a-f]{64})", want):
        assert pcrs[index] == value


@pytest.mark.parametrize(("change", "category", "rule"), [
    ("signature", "SIG_INVALID", "tpm.signature"),   # another quote's signature
    ("attest", "SIG_INVALID", "tpm.signature"),      # one byte of the signed bytes changed
    ("nonce", "FRESHNESS", "tpm.nonce"),             # extraData is not the nonce
    ("padded-nonce", "FRESHNESS", "tpm.nonce"),      # row 31: zero-padded nonce forms
    ("pcr", "MEASUREMENT", "tpm.pcr-digest"),        # a reported PCR value changed
    ("missing-pcr", "MEASUREMENT", "tpm.pcrs"),      # a quoted PCR without a value
    ("other-log", "EVENT_LOG", "tpm.eventlog"),      # another machine's boot log
])
def test_gce_quote_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str,
                            category: str, rule: str) -> None:
    extra: list[str] = []
    attest, signature = None, None
    pcrs = json.loads((GCE / "pcrs_sha256.json").read_text())
    if change == "signature":
        signature = GCE / "quote_sha1.sig"
    elif change == "attest":
        raw = bytearray((GCE / "quote_sha256.attest").read_bytes())
        raw[20] ^= 1
        attest = tmp_path / "attest"
        attest.write_bytes(raw)
    elif change == "nonce":
        extra = ["--nonce", "00112233"]
    elif change == "padded-nonce":
        extra = ["--nonce", "00" * 32]
    elif change in ("pcr", "missing-pcr"):
        if change == "pcr":
            pcrs["4"] = "00" * 32
        else:
            del pcrs["4"]
    elif change == "other-log":
        extra = ["--eventlog", str(LOGS / "gotpm-cos-101-amd-sev.bin")]
    edited = tmp_path / "pcrs.json"
    edited.write_text(json.dumps(pcrs))
    argv = ["verify", str(attest or GCE / "quote_sha256.attest"), "--tee", "tpm",
            "--signature", str(signature or GCE / "quote_sha256.sig"), "--ak",
            str(GCE / "ak_pub.tpmt"), "--pcrs", str(edited), "--json", *extra]
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["category"], out["rule"]) == (category, rule), out


def _log_with(events_changed: str) -> bytes:
    """The GCE log with one event's type set to EV_NO_ACTION, or with an event appended."""
    log = parse_event_log((GCE / "eventlog.bin").read_bytes())
    events = list(log.events)
    if events_changed == "no-action":
        victim = next(i for i, ev in enumerate(events) if ev.index == 4)
        events[victim] = type(events[victim])(4, EV_NO_ACTION, events[victim].digests,
                                              events[victim].data)
    else:
        events.append(events[-1])
    return build_event_log(type(log)(log.spec_id, tuple(events), 0))


@pytest.mark.parametrize("changed", ["no-action", "extra-event"])
def test_smuggled_or_extra_events_do_not_replay(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                changed: str) -> None:
    """Row 49: an extend event relabelled EV_NO_ACTION (never extended), or an event after
    the last replayed one, no longer replays to the quoted PCRs: EVENT_LOG."""
    path = tmp_path / "log.bin"
    path.write_bytes(_log_with(changed))
    code, out = verify(capsys, "sha256", "--eventlog", str(path))
    assert code == 1 and out["category"] == "EVENT_LOG", out


def test_log_for_unquoted_pcrs_is_measurement(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Row 51: the quote covers fewer PCRs than the log extends (here PCR 4 dropped from the
    reported values): the quote does not prove the log, MEASUREMENT."""
    pcrs = {int(k): bytes.fromhex(v)
            for k, v in json.loads((GCE / "pcrs_sha256.json").read_text()).items() if k != "4"}
    with pytest.raises(KeybrokerError) as exc:
        check_pcrs(parse_event_log((GCE / "eventlog.bin").read_bytes()), {0x000B: pcrs})
    assert (exc.value.category, exc.value.rule) == (Category.MEASUREMENT, "tpm.pcr-selection")


@pytest.mark.parametrize("name", sorted(p.name for p in LOGS.iterdir()))
def test_event_logs_replay_to_the_readme_values(name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every boot log parses with the README's event count and replays, per bank, to the
    PCR values the README lists (``keybroker eventlog --json``)."""
    assert main(["eventlog", str(LOGS / name), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = expected(f"tpm/eventlogs/{name}")
    count = int(re.match(r"(\d+) events", want).group(1))  # type: ignore[union-attr]
    assert len(out["events"]) == count
    banks = re.search(r"banks=(\[[^\]]*\])", want).group(1)  # type: ignore[union-attr]
    assert out["banks"] == json.loads(banks.replace("'", '"'))
    pcrs = json.loads(want.split("no quote available to confirm): ", 1)[1])
    for bank, values in pcrs.items():
        for index, value in values.items():
            assert out["replayed"][bank][f"PCR{index}"] == value, (bank, index)


def test_tpm_options_and_eventlog_errors(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """TPM-only options with another TEE, a PCR file of mixed sizes and a missing --ak are
    usage errors (2); a file that is not an event log is MALFORMED (1); a missing one is 2."""
    snp = VECTORS / "sev-snp" / "gosev-milan-v2" / "attestation.bin"
    assert main(["verify", str(snp), "--tee", "snp", "--signature", "x"]) == 2
    assert "--signature apply to --tee tpm only" in capsys.readouterr().err
    mixed = tmp_path / "pcrs.json"
    mixed.write_text(json.dumps({"0": "00" * 32, "1": "00" * 20}))
    assert main(["verify", str(GCE / "quote_sha256.attest"), "--tee", "tpm", "--signature",
                 str(GCE / "quote_sha256.sig"), "--ak", str(GCE / "ak_pub.tpmt"),
                 "--pcrs", str(mixed)]) == 2
    assert "one bank's size" in capsys.readouterr().err
    assert main(["verify", str(GCE / "quote_sha256.attest"), "--tee", "tpm",
                 "--signature", str(GCE / "quote_sha256.sig")]) == 2
    assert "needs --signature and --ak" in capsys.readouterr().err
    assert main(["eventlog", str(GCE / "ak_cert.der")]) == 1
    assert capsys.readouterr().err.startswith("error MALFORMED: ")
    assert main(["eventlog", str(tmp_path / "absent")]) == 2


CA = VECTORS / "tpm" / "gce-ek-ak-ca"
CERTS = VECTORS / "tpm" / "gce-ek-ak-certs"


@pytest.mark.parametrize(("extra", "category", "rule"), [
    ([], None, None),                                               # the README's chain
    (["--at", "2060-01-01T00:00:00Z"], "CHAIN_UNTRUSTED", "tpm.ak-cert"),   # AK cert expired
    (["--ak-cert-from", "pca_tpm_rsa_sign_cert.pem"], "SIG_INVALID", "tpm.ak-cert-key"),
    (["--roots-only", "gcp_ek_ak_ca_root.crt"], "CHAIN_UNTRUSTED", "tpm.ak-cert"),
])
def test_ak_certificate_chain(capsys: pytest.CaptureFixture[str], extra: list[str],
                              category: str | None, rule: str | None) -> None:
    """ak_cert.der chains ak <- tpm_ek_intermediate_2 <- tpm_ek_root_1 (README) and certifies
    ak_pub.tpmt; refused when expired, when it certifies another key, or when only the other
    Google hierarchy is configured."""
    cert, ca, at = GCE / "ak_cert.der", CA, "2024-01-01T00:00:00Z"
    if extra[:1] == ["--ak-cert-from"]:
        cert, extra = CERTS / extra[1], []
    elif extra[:1] == ["--roots-only"]:
        ca, extra = CA / extra[1], []
    elif extra:
        at, extra = extra[1], []
    code, out = verify(capsys, "sha256", "--ak-cert", str(cert), "--ak-ca", str(ca),
                       "--at", at)
    if category is None:
        assert code == 0, out
        chain = out["claims"]["ak_chain"]  # type: ignore[index]
        assert "tpm_ek_v1_cloud_host-signer-0-2020-10-22" in chain[0]
        assert "tpm_ek_v1_cloud_host_root-signer" in chain[1]
    else:
        assert (code, out["category"], out["rule"]) == (1, category, rule), out


@pytest.mark.parametrize("name", ["pca_tpm_rsa_sign_cert.pem", "pca_tpm_ecc_sign_cert.pem",
                                  "uca_tpm_rsa_enc_cert.pem", "uca_tpm_ecc_enc_cert.pem"])
def test_gce_ek_and_ak_certificates_chain_to_their_roots(name: str) -> None:
    """Every real GCE EK/AK certificate chains to the hierarchy the README names (pca_* to
    the EK/AK CA Root through its intermediate, uca_* to tpm_ek_root_1)."""
    pool = [c for p in sorted(CA.iterdir()) for c in certificates_in(p.read_bytes())]
    with lenient_names():
        roots = [c for c in pool if c.issuer == c.subject]
        (leaf,) = certificates_in((CERTS / name).read_bytes())
        chain = verify_ak_certificate(leaf, [c for c in pool if c not in roots], roots,
                                      at=datetime(2024, 1, 1, tzinfo=UTC))
        root = chain[-1].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert ("EK/AK CA Root" in str(root)) == name.startswith("pca_")


def test_ima_log_against_the_quoted_pcr10(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The GCE quote's PCR 10 holds that VM's IMA measurements: a log of another machine (here
    the real boot_aggregate line alone) does not replay to it, EVENT_LOG; an entry whose
    template hash does not cover its data is refused before any replay."""
    pcr10 = json.loads((GCE / "pcrs_sha256.json").read_text())["10"]
    assert pcr10 != "00" * 32
    line = ("10 0adefe762c149c7cec19da62f0da1297fcfbffff ima-ng sha256:" + "00" * 32
            + " boot_aggregate\n")
    log = tmp_path / "ima.txt"
    log.write_text(line)
    code, out = verify(capsys, "sha256", "--ima-log", str(log))
    assert (code, out["category"], out["rule"]) == (1, "EVENT_LOG", "ima.replay")
    assert out["expected"] == pcr10
    log.write_text(line.replace("sha256:00", "sha256:11"))
    code, out = verify(capsys, "sha256", "--ima-log", str(log))
    assert (code, out["category"], out["rule"]) == (1, "EVENT_LOG", "ima.template-hash")


def test_row_4_lying_tpm2b_length_is_malformed() -> None:
    """Row 4: a TPM2B whose size exceeds the buffer (extraData claiming 0xFFFF bytes)."""
    raw = bytearray((GCE / "quote_sha256.attest").read_bytes())
    signer_len = int.from_bytes(raw[6:8], "big")
    offset = 8 + signer_len  # extraData's size field
    raw[offset:offset + 2] = b"\xff\xff"
    with pytest.raises(KeybrokerError) as exc:
        parse_attest(bytes(raw))
    assert exc.value.category is Category.MALFORMED


def test_row_52_bank_at_reset_value_with_events_is_event_log() -> None:
    """Row 52: the SHA-256 bank reported at its reset value while the log extends it."""
    pcrs = {i: bytes(32) for i in range(24)}
    with pytest.raises(KeybrokerError) as exc:
        check_pcrs(parse_event_log((GCE / "eventlog.bin").read_bytes()), {0x000B: pcrs})
    assert (exc.value.category, exc.value.rule) == (Category.EVENT_LOG, "tpm.eventlog")


def test_secure_boot_claims_from_the_replayed_log(capsys: pytest.CaptureFixture[str]) -> None:
    """The GCE log, replayed to the quote, proves secure boot on and the key databases'
    digests; the two Shielded VM logs named "no_secure_boot" say it was off."""
    code, out = verify(capsys, "sha256", "--eventlog", str(GCE / "eventlog.bin"))
    assert code == 0, out
    secure = out["claims"]["secure_boot"]  # type: ignore[index]
    assert secure["enabled"] is True and sorted(secure["variables"]) == ["KEK", "PK", "db",
                                                                         "dbx"]
    for name in ("goatt-coreos_36_shielded_vm_no_secure_boot_eventlog",
                 "goatt-ubuntu_2104_shielded_vm_no_secure_boot_eventlog"):
        claims = secure_boot_claims(parse_event_log((LOGS / name).read_bytes()))
        assert claims is not None and claims.enabled is False


def test_variable_data_not_covered_by_its_digest_is_event_log() -> None:
    """The SecureBoot byte flipped while the event keeps its digests: the replay still
    matches, but the data a claim would use is not what was measured (EVENT_LOG)."""
    log = parse_event_log((LOGS / "goatt-coreos_36_shielded_vm_no_secure_boot_eventlog")
                          .read_bytes())
    events = list(log.events)
    position = next(i for i, ev in enumerate(events)
                    if ev.event_type == 0x8000_0001 and ev.data.endswith(b"\x00")
                    and "SecureBoot".encode("utf-16-le") in ev.data)
    victim = events[position]
    events[position] = type(victim)(victim.index, victim.event_type, victim.digests,
                                    victim.data[:-1] + b"\x01")
    with pytest.raises(KeybrokerError) as exc:
        secure_boot_claims(type(log)(log.spec_id, tuple(events), log.length))
    assert (exc.value.category, exc.value.rule) == (Category.EVENT_LOG, "tpm.secure-boot")


def test_boot_chain_claims_from_real_tpm_logs() -> None:
    """A GCE Ubuntu log (SHA-256 bank): the GRUB command line recomputes and is claimed; the
    kernel is the digest of the EV_IPL event GRUB labelled with the kernel's path; a command
    line whose text no longer recomputes is not claimed."""
    raw = (LOGS / "goatt-ubuntu_2104_shielded_vm_no_secure_boot_eventlog").read_bytes()
    log = parse_event_log(raw)
    boot = boot_claims_in(log, 0x000B)
    assert boot.kernel_cmdline is not None
    assert boot.kernel_cmdline.startswith(
        "/boot/vmlinuz-5.11.0-1006-gcp root=PARTUUID=6443a6ae-e5e9-4df7-9a06-d1329e50f33c")
    labelled = [ev for ev in log.events
                if ev.data.rstrip(b"\0") == b"/boot/vmlinuz-5.11.0-1006-gcp"]
    assert boot.kernel == labelled[0].digest(0x000B).hex()  # type: ignore[union-attr]
    events = [dataclasses.replace(ev, data=ev.data.replace(b"root=PARTUUID", b"root=PARTUUIX"))
              for ev in log.events]
    forged = boot_claims_in(dataclasses.replace(log, events=tuple(events)), 0x000B)
    assert forged.kernel_cmdline is None
