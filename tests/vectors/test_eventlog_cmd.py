"""``keybroker eventlog --ccel`` on a real GCE TD's CCEL: the RTMRs it prints are the ones the
TD quote reports (what an operator derives reference values from must be what the verifier
replays), and the JSON form lists every event with its digests."""

from __future__ import annotations

import json

import pytest
from support.paths import VECTORS

from keybroker.evidence.dcap_quote import parse_quote
from keybroker_cli.evidence_input import decode_quote
from keybroker_cli.main import main

GCE = VECTORS / "tdx" / "gotdx-gce-spr-v4-ccel"


def test_eventlog_ccel_prints_the_quoted_rtmrs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eventlog", str(GCE / "ccel_data.dat"), "--ccel", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    quote = parse_quote(decode_quote((GCE / "cos-113-tdx-quote.dat").read_bytes()))
    rtmrs = quote.td_report.rtmrs
    for i in range(3):  # RTMR3 holds runtime measurements, not in the CCEL
        assert out["replayed"]["sha384"][f"RTMR{i}"] == rtmrs[i].hex()
    assert out["banks"] == ["sha384"]
    assert all(set(ev["digests"]) == {"sha384"} for ev in out["events"])
    assert main(["eventlog", str(GCE / "ccel_data.dat"), "--ccel"]) == 0
    text = capsys.readouterr().out
    assert f"RTMR0: {rtmrs[0].hex()}" in text and text.splitlines()[0].lstrip().startswith("0")
