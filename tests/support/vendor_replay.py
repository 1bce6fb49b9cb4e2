"""A local HTTP server replaying recorded AMD KDS and Intel PCS v4 responses (the real bodies
and issuer-chain headers of ``tests/vectors``), with faults on demand: 429 with Retry-After,
404, slow answers, truncated bodies and substituted bodies."""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from support.paths import VECTORS

PCS = VECTORS / "crl/intel-pcs"
SNP = VECTORS / "sev-snp"
GCP_REPORT = SNP / "teekit-gcp-milan-v5/sev-gcp.bin"
GNR_QUOTE = VECTORS / "tdx/trustee-gnr-v4/tdx_quote_6.dat"
GCP_AT = "2026-07-01T00:00:00Z"  # inside the Milan CRL's window and the VCEK's validity
PCS_AT = "2026-01-20T00:00:00Z"  # inside every recorded PCS response's window
GCP_HWID = ("980cf7b61876cb37fd517cd44ce11c72d43c5408e66ab39138370ec59bc195e0"
            "63254cb501d87d82f0b8b8dc774bcfe28019447711598f007390e4accc405361")
GCP_VCEK_PATH = f"/vcek/v1/Milan/{GCP_HWID}?blSPL=4&teeSPL=0&snpSPL=27&ucodeSPL=222"
ROOT_CRL_PATH = "/IntelSGXRootCA.der"


@dataclass
class Reply:
    """One recorded response."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """A misbehaviour for one request: ``kind`` 429 | 404 | 500 | slow | truncate | body."""

    kind: str
    retry_after: str = ""
    seconds: float = 0.0
    body: bytes = b""


def _chain(name: str) -> str:
    return (PCS / name).read_text().strip()


def recorded() -> dict[str, Reply]:
    """Path (with query) -> the vendor's recorded reply."""
    with warnings.catch_warnings():  # AMD VCEKs have serial number 0
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        vcek = x509.load_pem_x509_certificate(
            (SNP / "teekit-gcp-milan-v5/sev-gcp-vcek.pem").read_bytes()).public_bytes(
                Encoding.DER)
    return {
        GCP_VCEK_PATH: Reply(vcek),
        "/vcek/v1/Milan/cert_chain": Reply((SNP / "amd-roots/ask_ark_milan.pem").read_bytes()),
        "/vcek/v1/Milan/crl": Reply((SNP / "amd-crl/milan_vcek_crl_2026-06-22.der").read_bytes()),
        "/vcek/v1/Genoa/crl": Reply((SNP / "amd-crl/genoa_vcek_crl_2026-07-28.der").read_bytes()),
        "/tdx/certification/v4/tcb?fmspc=00a06d080000": Reply(
            (PCS / "tcb_info_00a06d080000.json").read_bytes(),
            {"TCB-Info-Issuer-Chain": _chain("tcb_info_00a06d080000_chain.txt")}),
        "/tdx/certification/v4/tcb?fmspc=90c06f000000": Reply(
            (PCS / "tcb_info_90c06f000000.json").read_bytes(),
            {"TCB-Info-Issuer-Chain": _chain("tcb_info_90c06f000000_chain.txt")}),
        "/tdx/certification/v4/qe/identity": Reply(
            (PCS / "qe_identity.json").read_bytes(),
            {"SGX-Enclave-Identity-Issuer-Chain": _chain("qe_identity_chain.txt")}),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Reply(
            (PCS / "pck_crl_platform.crl").read_bytes(),
            {"SGX-PCK-CRL-Issuer-Chain": _chain("pck_crl_platform_chain.txt")}),
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der": Reply(
            (PCS / "pck_crl_processor.crl").read_bytes(),
            {"SGX-PCK-CRL-Issuer-Chain": _chain("pck_crl_processor_chain.txt")}),
        ROOT_CRL_PATH: Reply((PCS / "root_ca.crl").read_bytes()),
    }


class VendorReplay:
    """The running server: ``url``, per-path request ``counts`` and queued ``faults``."""

    def __init__(self) -> None:
        self.replies = recorded()
        self.counts: Counter[str] = Counter()
        self.faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                replay._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fault(self, path: str, *faults: Fault) -> None:
        """Answer the next requests for ``path`` with ``faults``, in order."""
        with self._lock:
            self.faults.setdefault(path, []).extend(faults)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self._lock:
            self.counts[path] += 1
            queued = self.faults.get(path)
            fault = queued.pop(0) if queued else None
        reply = self.replies.get(path)
        if fault is not None and fault.kind in ("429", "404", "500"):
            handler.send_response(int(fault.kind))
            if fault.retry_after:
                handler.send_header("Retry-After", fault.retry_after)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if reply is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = fault.body if fault is not None and fault.kind == "body" else reply.body
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        handler.send_response(200)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if fault is not None and fault.kind == "truncate":
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def vendor_replay() -> Iterator[VendorReplay]:
    """A started replay server, stopped afterwards."""
    server = VendorReplay()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def at(text: str) -> datetime:
    """An RFC 3339 time as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def only(path: Path) -> list[str]:
    """File names in a folder, sorted (for assertions)."""
    return sorted(p.name for p in path.iterdir())
