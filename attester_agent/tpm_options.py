"""The agent's TPM options (``--tpm-*``, ``--azure-imds``) and the collectors they build: the
machine's TPM (``--collector tpm``), an Azure confidential VM's vTPM (``--collector
azure-vtpm``) or, with ``--insecure-simulator --sim-tee tpm|az-snp-vtpm|az-tdx-vtpm``, a swtpm.

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

from attester_agent.collectors.azure_imds import DEFAULT_IMDS, Imds
from attester_agent.collectors.azure_vtpm import AzureVtpmCollector
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
    group.add_argument("--azure-imds", metavar="URL",
                       help="Azure confidential VMs (--collector azure-vtpm): the instance "
                            "metadata service that gives the VCEK or the TD quote (default "
                            f"{DEFAULT_IMDS})")


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


def _tcti(args: argparse.Namespace, *, simulated: bool, sim_tee: str) -> str:
    tcti: str = args.tpm_tcti or DEFAULT_TCTI
    kind = tcti.partition(":")[0]
    if kind in SIMULATOR_TCTIS and not simulated:
        raise ValueError(f"--tpm-tcti {kind}: a TPM simulator needs --insecure-simulator "
                         f"--sim-tee {sim_tee}")
    if simulated and args.tpm_tcti is None:
        raise ValueError(f"--sim-tee {sim_tee} needs --tpm-tcti (the swtpm to use)")
    return tcti


def _refuse_tpm_only(args: argparse.Namespace, what: str) -> None:
    for option in ("tpm_event_log", "tpm_ima_log", "tpm_pcrs"):
        if getattr(args, option) is not None:
            raise ValueError(f"--{option.replace('_', '-')} does not apply to {what} (an "
                             "Azure vTPM quotes PCRs 0..23 and sends no logs)")


def azure_collector(args: argparse.Namespace) -> AzureVtpmCollector:
    """The Azure vTPM collector of this VM (``--collector azure-vtpm``)."""
    _refuse_tpm_only(args, "--collector azure-vtpm")
    tcti = _tcti(args, simulated=False, sim_tee="az-snp-vtpm")
    return AzureVtpmCollector(tcti, imds=Imds(args.azure_imds) if args.azure_imds else None)


def simulated_azure(args: argparse.Namespace, platform: str, *, measurement: bytes | None,
                    vmpl: int, mr_td: bytes | None) -> AzureVtpmCollector:
    """INSECURE: ``--sim-tee az-snp-vtpm|az-tdx-vtpm``, the paravisor simulated on a swtpm."""
    if args.azure_imds is not None:
        raise ValueError("--azure-imds does not apply to a simulated paravisor")
    _refuse_tpm_only(args, f"--sim-tee {platform}")
    tcti = _tcti(args, simulated=True, sim_tee=platform)
    from attester_agent.simulator.azure import simulated_azure_collector  # noqa: PLC0415

    return simulated_azure_collector(tcti, platform, args.simulator_dir,
                                     measurement=measurement, vmpl=vmpl, mr_td=mr_td)


def tpm_collector(args: argparse.Namespace, *, simulated: bool) -> TpmCollector:
    """The TPM collector the options describe (module invariants)."""
    if args.azure_imds is not None:
        raise ValueError("--azure-imds applies to --collector azure-vtpm only")
    tcti = _tcti(args, simulated=simulated, sim_tee="tpm")
    if simulated:
        event_log = args.tpm_event_log or args.simulator_dir / "tpm" / "binary_bios_measurements"
        return TpmCollector(tcti, event_log=event_log, ima_log=args.tpm_ima_log,
                            pcrs=_pcrs(args.tpm_pcrs), name="tpm-simulator")
    given = args.tpm_event_log is not None or args.tpm_ima_log is not None
    return TpmCollector(tcti, event_log=args.tpm_event_log or DEFAULT_EVENT_LOG,
                        ima_log=args.tpm_ima_log or (None if given else DEFAULT_IMA_LOG),
                        pcrs=_pcrs(args.tpm_pcrs), logs_optional=not given)
