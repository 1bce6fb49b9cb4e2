"""What ``keybroker demo`` prints: numbered steps, timings kept apart from them, the audit
rows of the demo's own requests and the services' metrics.

Invariants:
- Output goes to stdout, flushed line by line; nothing printed here holds secret bytes (audit
  rows and metrics never contain them).
"""

from __future__ import annotations

import json
import ssl
import statistics
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from keybroker_cli.demo_setup import DemoLayout, run_cli


class Steps:
    """Numbered demo output: one line per step."""

    def __init__(self) -> None:
        self._n = 0

    def say(self, text: str) -> None:
        self._n += 1
        say(f"{self._n:2d}. {text}")

    def more(self, text: str) -> None:
        """A continuation line under the current step."""
        say(f"    {text}")


class Timings:
    """What the steps took, printed after them."""

    def __init__(self) -> None:
        self._items: list[tuple[str, int]] = []

    def add(self, what: str, millis: int) -> None:
        self._items.append((what, millis))

    def lines(self, timed: list[float]) -> list[str]:
        out = [f"{what}: {millis} ms" for what, millis in self._items]
        if timed:
            out.append(f"{len(timed)} more releases in-process (challenge + simulated evidence "
                       f"+ appraisal + sealing): p50 {statistics.median(timed):.1f} ms, "
                       f"max {max(timed):.1f} ms")
        return out


def say(text: str) -> None:
    """Demo output goes to stdout, flushed at once."""
    print(text, flush=True)


def ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def show_audit(layout: DemoLayout, steps: Steps, request_ids: tuple[str, ...], *,
               keep: bool) -> None:
    """Print the broker's audit records of ``request_ids`` (they never hold secret bytes)."""
    args = ["broker", "audit", "list", "--config", str(layout.broker_config), "--json"]
    for request_id in request_ids:
        args += ["--request-id", request_id]
    rows = [json.loads(line) for line in run_cli(*args).splitlines() if line.strip()]
    hint = (f" (all of them: keybroker broker audit list --config {layout.broker_config})"
            if keep else "")
    steps.say(f"the broker's audit records of these two requests{hint}")
    table = [("seq", "outcome", "category", "request", "keys", "policies")]
    for row in rows:
        table.append((str(row["seq"]), str(row["kind"]), str(row["category"] or "-"),
                      str(row["request_id"]), ",".join(row["keys"]) or "-",
                      ",".join(row["policy_ids"]) or "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        steps.more("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True))
                   .rstrip())


def scrape(url: str, ca: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a metrics endpoint (HTTPS under ``ca``), by name and sorted labels."""
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=context, timeout=10) as reply:  # noqa: S310
        text = reply.read().decode("utf-8")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def show_metrics(steps: Steps, layout: DemoLayout, urls: dict[str, str], timed: int) -> None:
    """One step: the release, denial and appraisal counters the services export (they also
    count the ``timed`` releases that follow the steps)."""
    broker = scrape(urls["broker"], layout.tls.ca)
    verifier = scrape(urls["verifier"], layout.tls.ca)

    def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              **labels: str) -> int:
        return int(sum(v for (n, ls), v in samples.items() if n == name
                       and all(dict(ls).get(k) == want for k, want in labels.items())))

    steps.say(f"metrics (Prometheus): broker {urls['broker']}, verifier {urls['verifier']}; "
              f"they count the release above and the {timed} timed ones below")
    steps.more(f"broker: keybroker_releases_total {total(broker, 'keybroker_releases_total')}, "
               "keybroker_denials_total{category=\"MEASUREMENT\"} "
               f"{total(broker, 'keybroker_denials_total', category='MEASUREMENT')}")
    steps.more("verifier: keybroker_appraisals_total{outcome=\"affirmed\"} "
               f"{total(verifier, 'keybroker_appraisals_total', outcome='affirmed')}, "
               "{outcome=\"denied\"} "
               f"{total(verifier, 'keybroker_appraisals_total', outcome='denied')}")
