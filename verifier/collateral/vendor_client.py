"""HTTP GET against vendor collateral services (AMD KDS, Intel PCS or a PCCS) with the manners
they ask for: bounded retries, Retry-After honoured, one request per item at a time.

Invariants:
- Every request has a socket timeout and the whole call a deadline; a body over
  ``max_bytes`` or shorter than its Content-Length is refused, never returned.
- 429 and 503 are retried after the server's Retry-After (seconds or an HTTP date), plus
  jitter, when that wait is within ``max_retry_after``; a longer wait, or running out of
  attempts, is ``Unavailable`` naming the URL and the wait asked for. Connection errors,
  timeouts and truncated bodies are retried with jittered exponential backoff.
- 404 is ``CollateralStale`` (the vendor does not publish that item); any other 4xx is
  ``Malformed`` (the request was wrong). Neither is retried.
- Single flight: concurrent calls for the same URL share one request and its outcome.
- ``requests`` counts requests sent, so callers and tests can see what was asked for.
- Proxies come from the environment, except for loopback hosts.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

from keybroker.errors import CollateralStale, KeybrokerError, Malformed, Unavailable

_log = logging.getLogger(__name__)

USER_AGENT = "keybroker-collateral/1"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class Response:
    """A complete 200 response: its body and its headers (names lower-cased)."""

    url: str
    body: bytes
    headers: Mapping[str, str]

    def header(self, *names: str) -> str | None:
        """The first of ``names`` present (case-insensitive)."""
        for name in names:
            value = self.headers.get(name.lower())
            if value is not None:
                return value
        return None


@dataclass
class RetryPolicy:
    """How hard to try: attempts per call, backoff, the longest Retry-After obeyed."""

    attempts: int = 4
    timeout_seconds: float = 10.0
    deadline_seconds: float = 60.0
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    max_retry_after: float = 30.0
    max_bytes: int = 8 * 1024 * 1024
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)


class _Retry(Exception):
    """A transient failure: ``wait`` seconds asked for (None: use backoff)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def _retry_after(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class VendorClient:
    """GETs with retries and single flight; one client per process is enough."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.requests = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Response]] = {}
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._proxied = urllib.request.build_opener()

    def get(self, url: str) -> Response:
        """The body and headers of ``url`` (see the module invariants)."""
        with self._lock:
            pending = self._inflight.get(url)
            leader = pending is None
            if pending is None:
                pending = Future()
                self._inflight[url] = pending
        if not leader:
            try:
                return pending.result(timeout=self.policy.deadline_seconds
                                      + self.policy.timeout_seconds)
            except TimeoutError:
                raise Unavailable(f"{url}: the fetch in flight did not finish",
                                  rule="collateral.fetch", expected="an answer within "
                                  f"{self.policy.deadline_seconds:.0f} s",
                                  actual="still waiting") from None
        try:
            response = self._get(url)
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(response)
            return response
        finally:
            with self._lock:
                self._inflight.pop(url, None)

    def _get(self, url: str) -> Response:
        policy = self.policy
        start = time.monotonic()
        last = ""
        for attempt in range(policy.attempts):
            try:
                return self._once(url)
            except _Retry as exc:
                last = exc.reason
                if exc.wait is not None and exc.wait > policy.max_retry_after:
                    raise Unavailable(f"{url}: the server asks to retry after {exc.wait:.0f} s",
                                      rule="collateral.retry-after",
                                      expected=f"at most {policy.max_retry_after:.0f} s",
                                      actual=exc.reason) from None
                backoff = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** attempt)
                wait = (exc.wait if exc.wait is not None else backoff) + random.uniform(
                    0, backoff / 2)
                if attempt + 1 == policy.attempts:
                    break
                if time.monotonic() - start + wait > policy.deadline_seconds:
                    last += f" (deadline {policy.deadline_seconds:.0f} s)"
                    break
                _log.info("collateral fetch %s: %s; retrying in %.1f s", url, exc.reason, wait)
                policy.sleep(wait)
        raise Unavailable(f"{url}: fetch failed", rule="collateral.fetch",
                          expected="HTTP 200 with a complete body",
                          actual=f"{last} after {policy.attempts} attempt(s)")

    def _once(self, url: str) -> Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise Malformed("collateral URL must be http or https", rule="collateral.url",
                            expected="https://host/...", actual=url)
        opener = self._direct if parts.hostname in _LOOPBACK else self._proxied
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            url, headers={"User-Agent": USER_AGENT})
        with self._lock:
            self.requests += 1
        try:
            with opener.open(request, timeout=self.policy.timeout_seconds) as reply:
                body = reply.read(self.policy.max_bytes + 1)
                headers = {k.lower(): v for k, v in reply.headers.items()}
        except urllib.error.HTTPError as exc:
            raise self._status(url, exc) from None
        except http.client.IncompleteRead as exc:
            raise _Retry(f"truncated body ({len(exc.partial)} bytes before the connection "
                         "closed)") from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        if len(body) > self.policy.max_bytes:
            raise Malformed(f"{url}: body over the size limit", rule="collateral.size",
                            expected=f"at most {self.policy.max_bytes} bytes",
                            actual=f"more than {self.policy.max_bytes}")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != len(body):
            raise _Retry(f"truncated body ({len(body)} of {declared} bytes)")
        return Response(url=url, body=body, headers=headers)

    @staticmethod
    def _status(url: str, exc: urllib.error.HTTPError) -> KeybrokerError | _Retry:
        code = exc.code
        if code in (429, 503) or code >= 500:
            wait = _retry_after(exc.headers.get("Retry-After"), time.time())
            return _Retry(f"HTTP {code}" + (f", Retry-After {wait:.0f} s"
                                            if wait is not None else ""), wait)
        if code == 404:
            return CollateralStale(f"{url}: the vendor publishes no such item",
                                   rule="collateral.not-found", expected="HTTP 200",
                                   actual="HTTP 404")
        return Malformed(f"{url}: the server refused the request", rule="collateral.request",
                         expected="HTTP 200", actual=f"HTTP {code}")
