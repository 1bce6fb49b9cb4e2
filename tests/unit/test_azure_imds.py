"""The agent's instance metadata client (VCEK from THIM, TD quote of a TDREPORT) against a local
HTTP server on loopback: the requests it makes, and a typed error for each bad answer."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from support.imds import Answer, imds_server, json_answer

from attester_agent.collectors.azure_imds import MAX_ANSWER, TD_QUOTE_PATH, THIM_PATH, Imds
from attester_agent.simulator.snp import SnpSimulator, SnpTestCa
from keybroker.errors import Category, KeybrokerError


@pytest.fixture(scope="module")
def vcek_pem() -> str:
    leaf = SnpSimulator(SnpTestCa.generate()).leaf
    return leaf.certificate.public_bytes(Encoding.PEM).decode()


def test_azure_imds_vcek_from_thim(vcek_pem: str) -> None:
    """GET with ``Metadata: true``; the answer's vcekCert is returned as PEM bytes."""
    with imds_server() as imds:
        imds.answers[THIM_PATH] = Answer(json_answer({"vcekCert": vcek_pem, "tcbm": "x",
                                                      "certificateChain": ""}))
        assert Imds(imds.url, timeout=5).vcek() == vcek_pem.encode()
    ((method, path, headers, _),) = imds.seen
    assert (method, path, headers.get("Metadata")) == ("GET", THIM_PATH, "true")


def test_azure_imds_td_quote_of_the_tdreport() -> None:
    """POST {"report": base64url(TDREPORT)}; the answer's base64url quote is decoded."""
    tdreport = bytes(range(256)) * 4
    with imds_server() as imds:
        def quote(body: bytes) -> bytes:
            report = json.loads(body)["report"]
            decoded = base64.urlsafe_b64decode(report + "=" * (-len(report) % 4))
            return json.dumps({"quote": base64.urlsafe_b64encode(b"Q" + decoded[:3])
                               .rstrip(b"=").decode()}).encode()
        imds.answers[TD_QUOTE_PATH] = Answer(quote)
        assert Imds(imds.url, timeout=5).td_quote(tdreport) == b"Q" + tdreport[:3]
    assert imds.seen[0][0] == "POST"


@pytest.mark.parametrize(("answer", "category", "words"), [
    (Answer(json_answer({}), status=503), Category.UNAVAILABLE, "refused"),
    (Answer(lambda _: b"<html>busy</html>"), Category.MALFORMED, "not JSON"),
    (Answer(json_answer(["vcekCert"])), Category.MALFORMED, "not a JSON object"),
    (Answer(json_answer({"tcbm": "x"})), Category.MALFORMED, "lacks vcekCert"),
    (Answer(json_answer({"vcekCert": "-----BEGIN CERTIFICATE-----\nAAAA\n"})),
     Category.MALFORMED, "not a PEM certificate"),
    (Answer(lambda _: b" " * (MAX_ANSWER + 1)), Category.MALFORMED, "too large"),
    (Answer(json_answer({}), delay=1.5), Category.UNAVAILABLE, "cannot reach"),
])
def test_azure_imds_bad_vcek_answers_are_typed(answer: Answer, category: Category,
                                               words: str) -> None:
    """Each bad answer (HTTP error, not JSON, wrong shape, not a certificate, too large, too
    slow) is a typed error naming what was wrong."""
    with imds_server() as imds:
        imds.answers[THIM_PATH] = answer
        with pytest.raises(KeybrokerError) as exc:
            Imds(imds.url, timeout=0.5).vcek()
    assert exc.value.category is category
    assert words in exc.value.reason


def test_azure_imds_bad_td_quote_answers_are_typed() -> None:
    """A quote answer without ``quote``, or not base64url, is MALFORMED; nothing listening is
    UNAVAILABLE."""
    with imds_server() as imds:
        imds.answers[TD_QUOTE_PATH] = Answer(json_answer({"report": "x"}))
        with pytest.raises(KeybrokerError) as missing:
            Imds(imds.url, timeout=5).td_quote(b"\x00" * 1024)
        imds.answers[TD_QUOTE_PATH] = Answer(json_answer({"quote": "!!!"}))
        with pytest.raises(KeybrokerError) as garbled:
            Imds(imds.url, timeout=5).td_quote(b"\x00" * 1024)
        url = imds.url
    assert missing.value.category is Category.MALFORMED and "lacks quote" in missing.value.reason
    assert garbled.value.category is Category.MALFORMED
    with pytest.raises(KeybrokerError) as closed:
        Imds(url, timeout=2).vcek()
    assert closed.value.category is Category.UNAVAILABLE
