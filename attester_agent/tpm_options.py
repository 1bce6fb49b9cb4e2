"""The agent's TPM options (``--tpm-*``) and the TPM collectors they build: the machine's TPM
(``--collector tpm``) or, with ``--insecure-simulator --sim-tee tpm``, a swtpm.

Invariants:
- A simulator TCTI (swtpm, mssim) is accepted only on the insecure simulator path; the
  hardware path takes a device TCTI (default the kernel's resource manager).
- On the hardware path without ``--tpm-event-log`` / ``--tpm-ima-log`` the kernel's
  securityfs logs are sent when present; a log named on the command line must be readable.
- Every problem is a ``ValueError`` whose text is the operator's message (usage error).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attester_agent.collectors.tpm import (
    DEFAULT_EVENT_LOG,
    DEFAULT_IMA_LOG,
    DEFAULT_PCRS,
    DEFAULT_TCTI,
    TpmCollector,
)

SIMULATOR_TCTIS = ("swtpm", "mssim")


def add_tpm_options(parser: argparse.ArgumentParser) -> None:
    """The ``--tpm-*`` options of ``get-secret`` and ``enrol-tpm``."""
    group = parser.add_argument_group("TPM (--collector tpm, or --sim-tee tpm with a swtpm)")
    group.add_argument("--tpm-tcti", metavar="TCTI",
                       help=f"how to reach the TPM (default {DEFAULT_TCTI}; a swtpm, for "
                            "example swtpm:host=127.0.0.1,port=2321, only with "
                            "--insecure-simulator)")
    group.add_argument("--tpm-event-log", type=Path, metavar="FILE",
                       help=f"boot event log to send (default {DEFAULT_EVENT_LOG} when "
                            "present; simulator: DIR/tpm/binary_bios_measurements)")
    group.add_argument("--tpm-ima-log", type=Path, metavar="FILE",
                       help=f"IMA log to send (default {DEFAULT_IMA_LOG} when present)")
    group.add_argument("--tpm-pcrs", metavar="LIST",
                       help="SHA-256 PCRs to quote, comma-separated (default "
                            + ",".join(str(p) for p in DEFAULT_PCRS) + ")")


def _pcrs(value: str | None) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_PCRS
    try:
        pcrs = tuple(int(p) for p in value.split(","))
    except ValueError:
        raise ValueError(f"--tpm-pcrs: expected comma-separated PCR indices, got {value!r}"
                         ) from None
    if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
        raise ValueError(f"--tpm-pcrs: PCR indices are 0..23, got {value!r}")
    return pcrs


def tpm_collector(args: argparse.Namespace, *, simulated: bool) -> TpmCollector:
    """The TPM collector the options describe (module invariants)."""
    tcti = args.tpm_tcti or DEFAULT_TCTI
    kind = tcti.partition(":")[0]
    if kind in SIMULATOR_TCTIS and not simulated:
        raise ValueError(f"--tpm-tcti {kind}: a TPM simulator needs --insecure-simulator "
                         "--sim-tee tpm")
    if simulated:
        if args.tpm_tcti is None:
            raise ValueError("--sim-tee tpm needs --tpm-tcti (the swtpm to use)")
        event_log = args.tpm_event_log or args.simulator_dir / "tpm" / "binary_bios_measurements"
        return TpmCollector(tcti, event_log=event_log, ima_log=args.tpm_ima_log,
                            pcrs=_pcrs(args.tpm_pcrs), name="tpm-simulator")
    given = args.tpm_event_log is not None or args.tpm_ima_log is not None
    return TpmCollector(tcti, event_log=args.tpm_event_log or DEFAULT_EVENT_LOG,
                        ima_log=args.tpm_ima_log or (None if given else DEFAULT_IMA_LOG),
                        pcrs=_pcrs(args.tpm_pcrs), logs_optional=not given)
