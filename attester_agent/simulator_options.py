"""The agent's table of simulated TEEs: the ``--sim-*`` options of ``get-secret`` and, for each
``--sim-tee``, which of them apply and how its simulator collector is built. Adding a
simulated TEE is one entry in ``SIMULATORS`` (and its options).

Invariants:
- Simulators are INSECURE: they are built only here, only after the caller checked the
  ``--insecure-simulator`` switch (``attester_agent.cli``), and each collector is built with
  ``insecure=True``. Their modules are imported only when a simulator is built, so
  hardware-only use never loads them.
- An option that does not apply to the chosen ``--sim-tee`` is an error, never ignored.
- Every problem is a ``ValueError`` whose text is the operator's message (the CLI turns it
  into a usage error, exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from attester_agent.collectors.base import Collector

DEFAULT_SIM_TEE = "snp"


@dataclass(frozen=True)
class SimulatedTee:
    """One ``--sim-tee``: the ``--sim-*`` options (argparse dests) it takes and its
    collector, built from the parsed arguments and the presented init-data."""

    options: frozenset[str]
    build: Callable[[argparse.Namespace, bytes], Collector]


def add_simulator_options(sim: argparse._ArgumentGroup) -> None:
    """Add every ``--sim-*`` option (each applies to the TEEs its help names)."""
    sim.add_argument("--sim-measurement",
                     help="launch MEASUREMENT (SEV-SNP) or enclave image PCR0 (Nitro), 96 hex "
                          "digits")
    sim.add_argument("--sim-policy", help="guest POLICY (hex)")
    sim.add_argument("--sim-vmpl", type=int, choices=range(4), help="VMPL (0..3)")
    sim.add_argument("--sim-version", type=int,
                     help="report/quote version (snp: 3 or 5, tdx: 4 or 5)")
    sim.add_argument("--sim-tee", choices=tuple(SIMULATORS),
                     help="simulated TEE: snp (default), tdx, sgx, nitro, or on a swtpm given by "
                          "--tpm-tcti: tpm, az-snp-vtpm or az-tdx-vtpm (an Azure CVM whose "
                          "paravisor is simulated)")
    sim.add_argument("--sim-tcb", help="TDX/SGX platform TCB status: UpToDate (default), "
                                       "SWHardeningNeeded, OutOfDate, Revoked, unsupported")
    sim.add_argument("--sim-debug", action="store_true",
                     help="TDX/SGX/Nitro: a debug TD / debug enclave")
    sim.add_argument("--sim-mrtd", help="TDX MRTD (96 hex digits)")
    sim.add_argument("--sim-td-attributes", help="TDX TD attributes (hex u64)")
    sim.add_argument("--sim-mr-config-id", help="TDX MRCONFIGID (96 hex digits; default "
                                                "SHA-384 of --init-data, else zero)")
    sim.add_argument("--sim-mrenclave", help="SGX MRENCLAVE (64 hex digits)")
    sim.add_argument("--sim-mrsigner", help="SGX MRSIGNER (64 hex digits)")
    sim.add_argument("--sim-isv-prod-id", type=int, help="SGX ISVPRODID")
    sim.add_argument("--sim-isv-svn", type=int, help="SGX ISVSVN")


def _given(args: argparse.Namespace, dest: str) -> bool:
    value = getattr(args, dest)
    return value is not None and value is not False


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def simulator_options_given(args: argparse.Namespace) -> bool:
    """Whether any ``--sim-*`` option (``--sim-tee`` included) was given."""
    return any(_given(args, dest) for dest in (*_ALL_OPTIONS, "sim_tee"))


def check_simulator_options(args: argparse.Namespace) -> None:
    """Refuse ``--sim-*`` options that do not apply to the chosen ``--sim-tee``."""
    tee = args.sim_tee or DEFAULT_SIM_TEE
    for dest in _ALL_OPTIONS:
        if _given(args, dest) and dest not in SIMULATORS[tee].options:
            raise ValueError(f"{_flag(dest)} does not apply to --sim-tee {tee}")


def simulated_collector(args: argparse.Namespace, init_data: bytes) -> Collector:
    """The INSECURE simulator collector of ``--sim-tee`` (options checked first)."""
    return SIMULATORS[args.sim_tee or DEFAULT_SIM_TEE].build(args, init_data)


def _hex(value: str | None, flag: str, size: int) -> bytes | None:
    """``value`` as exactly ``size`` bytes of hex (None stays None)."""
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ValueError(f"{flag} must be hexadecimal") from exc
    if len(raw) != size:
        raise ValueError(f"{flag} must be {size} bytes ({2 * size} hex digits)")
    return raw


def _hex_int(value: str | None, flag: str) -> int | None:
    """``value`` as a non-negative 64-bit hexadecimal integer (``0x`` optional)."""
    if value is None:
        return None
    try:
        number = int(value.removeprefix("0x"), 16)
    except ValueError as exc:
        raise ValueError(f"{flag} must be hexadecimal") from exc
    if not 0 <= number < 1 << 64:
        raise ValueError(f"{flag} must fit in 64 bits")
    return number


def _snp_simulator(args: argparse.Namespace, init_data: bytes) -> Collector:
    measurement = _hex(args.sim_measurement, "--sim-measurement", 48)
    policy = _hex_int(args.sim_policy, "--sim-policy")
    if args.sim_version not in (None, 3, 5):
        raise ValueError("--sim-version for snp must be 3 or 5")
    # Imported here so that hardware-only use never loads the simulator.
    from attester_agent.collectors.simulator import SimulatorCollector  # noqa: PLC0415

    return SimulatorCollector(
        args.simulator_dir,
        insecure=True,
        measurement=measurement,
        policy=policy if policy is not None else 0x30000,
        vmpl=args.sim_vmpl if args.sim_vmpl is not None else 0,
        version=args.sim_version if args.sim_version is not None else 3,
        init_data=init_data,
    )


def _tdx_simulator(args: argparse.Namespace, init_data: bytes) -> Collector:
    if args.sim_version not in (None, 4, 5):
        raise ValueError("--sim-version for tdx must be 4 or 5")
    from attester_agent.collectors.simulator_dcap import TdxSimulatorCollector  # noqa: PLC0415

    return TdxSimulatorCollector(
        args.simulator_dir,
        insecure=True,
        version=args.sim_version if args.sim_version is not None else 4,
        mr_td=_hex(args.sim_mrtd, "--sim-mrtd", 48),
        td_attributes=_hex_int(args.sim_td_attributes, "--sim-td-attributes"),
        debug=args.sim_debug,
        mr_config_id=_hex(args.sim_mr_config_id, "--sim-mr-config-id", 48),
        init_data=init_data,
        tcb=args.sim_tcb or "UpToDate",
        runtime_log=args.runtime_log,
    )


def _sgx_simulator(args: argparse.Namespace, init_data: bytes) -> Collector:
    del init_data  # an enclave has no init-data register
    from attester_agent.collectors.simulator_dcap import SgxSimulatorCollector  # noqa: PLC0415

    return SgxSimulatorCollector(
        args.simulator_dir,
        insecure=True,
        mr_enclave=_hex(args.sim_mrenclave, "--sim-mrenclave", 32),
        mr_signer=_hex(args.sim_mrsigner, "--sim-mrsigner", 32),
        isv_prod_id=args.sim_isv_prod_id if args.sim_isv_prod_id is not None else 1,
        isv_svn=args.sim_isv_svn if args.sim_isv_svn is not None else 1,
        debug=args.sim_debug,
        tcb=args.sim_tcb or "UpToDate",
    )


def _tpm_simulator(args: argparse.Namespace, init_data: bytes) -> Collector:
    del init_data  # a TPM quote does not bind init-data (PCR 8 is not interpreted)
    from attester_agent.tpm_options import tpm_collector  # noqa: PLC0415

    return tpm_collector(args, simulated=True)


def _azure_simulator(platform: str) -> Callable[[argparse.Namespace, bytes], Collector]:
    def build(args: argparse.Namespace, init_data: bytes) -> Collector:
        del init_data  # an Azure CVM binds no init-data
        from attester_agent.tpm_options import simulated_azure  # noqa: PLC0415

        return simulated_azure(
            args, platform, measurement=_hex(args.sim_measurement, "--sim-measurement", 48),
            vmpl=args.sim_vmpl if args.sim_vmpl is not None else 0,
            mr_td=_hex(args.sim_mrtd, "--sim-mrtd", 48))
    return build


def _nitro_simulator(args: argparse.Namespace, init_data: bytes) -> Collector:
    from attester_agent.simulator.nitro import simulated_nitro_collector  # noqa: PLC0415

    return simulated_nitro_collector(
        args.simulator_dir, image=_hex(args.sim_measurement, "--sim-measurement", 48),
        debug=args.sim_debug, init_data=init_data)


SIMULATORS: Mapping[str, SimulatedTee] = {
    "snp": SimulatedTee(frozenset({"sim_measurement", "sim_policy", "sim_vmpl", "sim_version"}),
                        _snp_simulator),
    "tdx": SimulatedTee(frozenset({"sim_version", "sim_tcb", "sim_debug", "sim_mrtd",
                                   "sim_td_attributes", "sim_mr_config_id"}), _tdx_simulator),
    "sgx": SimulatedTee(frozenset({"sim_tcb", "sim_debug", "sim_mrenclave", "sim_mrsigner",
                                   "sim_isv_prod_id", "sim_isv_svn"}), _sgx_simulator),
    "tpm": SimulatedTee(frozenset(), _tpm_simulator),
    "az-snp-vtpm": SimulatedTee(frozenset({"sim_measurement", "sim_vmpl"}),
                                _azure_simulator("az-snp-vtpm")),
    "az-tdx-vtpm": SimulatedTee(frozenset({"sim_mrtd"}), _azure_simulator("az-tdx-vtpm")),
    "nitro": SimulatedTee(frozenset({"sim_measurement", "sim_debug"}), _nitro_simulator),
}
# Every TEE-specific option, in the order their errors are reported.
_ALL_OPTIONS = (
    "sim_measurement", "sim_policy", "sim_vmpl", "sim_version", "sim_tcb", "sim_debug",
    "sim_mrtd", "sim_td_attributes", "sim_mr_config_id", "sim_mrenclave", "sim_mrsigner",
    "sim_isv_prod_id", "sim_isv_svn",
)
