"""What an Azure confidential VM's hardware report needs from the host, through the instance
metadata service (IMDS, link-local, never the internet): the VCEK of an SEV-SNP VM (THIM,
``GET /metadata/THIM/amd/certification``) and the TD quote of a TDX VM's TDREPORT
(``POST /acc/tdquote``).

Invariants:
- Plain HTTP to the configured base URL (default the link-local IMDS address), the
  ``Metadata: true`` header, a timeout on every call and answers read up to ``MAX_ANSWER``
  bytes; anything else is UNAVAILABLE (cannot reach, HTTP error) or MALFORMED (an answer of the
  wrong shape), naming the URL.
- Nothing here is trusted: the VCEK and the TD quote are verified by the verifier (AMD chain,
  DCAP); a wrong one fails there.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from keybroker.errors import Malformed, Unavailable

DEFAULT_IMDS = "http://169.254.169.254"
THIM_PATH = "/metadata/THIM/amd/certification"
TD_QUOTE_PATH = "/acc/tdquote"
MAX_ANSWER = 64 * 1024
DEFAULT_TIMEOUT = 10.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str, what: str) -> bytes:
    standard = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Malformed(f"IMDS {what} is not base64url", actual=text[:40]) from None


@dataclass(frozen=True)
class Imds:
    """The instance metadata service at ``base`` (module invariants)."""

    base: str = DEFAULT_IMDS
    timeout: float = DEFAULT_TIMEOUT

    def _call(self, path: str, body: dict[str, str] | None = None) -> dict[str, Any]:
        url = self.base.rstrip("/") + path
        request = urllib.request.Request(  # noqa: S310 - http(s) base URL from configuration
            url, headers={"Metadata": "true", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                raw = answer.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise Unavailable("the instance metadata service refused the request",
                              expected=f"HTTP 200 from {url}", actual=f"HTTP {exc.code}"
                              ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable("cannot reach the instance metadata service", expected=url,
                              actual=str(reason)[:200]) from None
        if len(raw) > MAX_ANSWER:
            raise Malformed("instance metadata answer too large",
                            expected=f"<= {MAX_ANSWER} bytes", actual=url)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise Malformed("instance metadata answer is not JSON", expected=url,
                            actual=raw[:40].decode("latin-1")) from None
        if not isinstance(doc, dict):
            raise Malformed("instance metadata answer is not a JSON object", expected=url,
                            actual=type(doc).__name__)
        return doc

    def vcek(self) -> bytes:
        """The VM's VCEK (PEM) from THIM."""
        doc = self._call(THIM_PATH)
        pem = doc.get("vcekCert")
        if not isinstance(pem, str):
            raise Malformed("THIM answer lacks vcekCert", expected="vcekCert (PEM)",
                            actual=", ".join(sorted(doc))[:200])
        try:
            x509.load_pem_x509_certificate(pem.encode())
        except ValueError as exc:
            raise Malformed("THIM vcekCert is not a PEM certificate",
                            actual=str(exc)[:120]) from None
        return pem.encode()

    def td_quote(self, tdreport: bytes) -> bytes:
        """The TD quote of ``tdreport`` from the host's quoting enclave."""
        doc = self._call(TD_QUOTE_PATH, {"report": _b64url(tdreport)})
        quote = doc.get("quote")
        if not isinstance(quote, str) or not quote:
            raise Malformed("TD quote answer lacks quote", expected="quote (base64url)",
                            actual=", ".join(sorted(doc))[:200])
        return _unb64url(quote, "TD quote")
