"""A simulated TPM machine on a real swtpm: the TPM manufactured with an EK certificate from
swtpm's local CA, and a simulated UEFI boot measured into its PCRs with the matching TCG event
log. INSECURE: the EK CA is a throwaway test CA; for tests and demos only.

Invariants:
- Everything lives under one directory (``SwtpmLayout``): the TPM state, the local CA, the
  configuration swtpm_setup reads, and the boot event log the agent sends. Nothing is written
  to swtpm's system-wide defaults (/etc, /var/lib/swtpm-localca).
- swtpm listens on loopback only (TCP, an ephemeral port pair by default); ``stop`` shuts the
  TPM down in order, then stops the process (SIGTERM, then SIGKILL); its TPM state survives
  for the next start.
- ``SimulatedBoot.pcrs`` is computed here by extending SHA-256 from zero, independently of the
  verifier's replay code, so tests compare two implementations. The boot log is crypto-agile
  with one SHA-256 bank; every event's digest is SHA-256 of its data except the firmware blob
  and the boot applications (digests of what they measure, as firmware does).
- ``boot`` extends each digest into the running TPM (TPM2_PCR_Extend) in log order, once per
  TPM power cycle (the PCRs must still be zero), and starts an empty IMA log;
  ``measure_file`` then does what IMA does for an executed file (entry + PCR 10 extend).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keybroker.errors import Unavailable
from keybroker.evidence.ima_log import ImaEntry, format_ima_entry
from keybroker.evidence.tcg_log import (
    ALG_SHA256,
    DigestAlgorithm,
    EventLog,
    SpecIdEvent,
    TcgEvent,
    build_event_log,
)
from keybroker.evidence.uefi_event import EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR

EV_POST_CODE = 0x1
EV_S_CRTM_VERSION = 0x8
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x8000_0008
EV_EFI_BOOT_SERVICES_APPLICATION = 0x8000_0003
EV_EFI_ACTION = 0x8000_0007
_GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c").bytes_le
_SECURITY_DB = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f").bytes_le
DEFAULT_KERNEL = hashlib.sha256(b"keybroker simulated kernel v1").digest()
_START_TIMEOUT = 10.0


def variable_data(guid: bytes, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA for ``name`` (UTF-16LE) under ``guid``."""
    encoded = name.encode("utf-16-le")
    return guid + struct.pack("<QQ", len(name), len(data)) + encoded + data


def _event(pcr: int, event_type: int, data: bytes, digest: bytes | None = None) -> TcgEvent:
    return TcgEvent(pcr, event_type, ((ALG_SHA256, digest or hashlib.sha256(data).digest()),),
                    data)


@dataclass(frozen=True)
class SimulatedBoot:
    """A UEFI boot: firmware, secure boot configuration, boot loader and kernel."""

    kernel_digest: bytes = DEFAULT_KERNEL
    secure_boot: bool = True

    def events(self) -> tuple[TcgEvent, ...]:
        """The measured events, in order."""
        firmware = hashlib.sha256(b"keybroker simulated firmware volume").digest()
        bootloader = hashlib.sha256(b"keybroker simulated boot loader").digest()
        out = [
            _event(0, EV_S_CRTM_VERSION, "1.0".encode("utf-16-le") + b"\x00\x00"),
            _event(0, EV_EFI_PLATFORM_FIRMWARE_BLOB,
                   struct.pack("<QQ", 0xFFC0_0000, 0x40_0000), firmware),
            _event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
                   variable_data(_GLOBAL, "SecureBoot", b"\x01" if self.secure_boot else b"\x00")),
            _event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
                   variable_data(_GLOBAL, "PK", b"simulated platform key")),
            _event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
                   variable_data(_GLOBAL, "KEK", b"simulated key exchange key")),
            _event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
                   variable_data(_SECURITY_DB, "db", b"simulated signature database")),
            _event(7, EV_EFI_VARIABLE_DRIVER_CONFIG,
                   variable_data(_SECURITY_DB, "dbx", b"simulated forbidden signatures")),
        ]
        out += [_event(pcr, EV_SEPARATOR, bytes(4)) for pcr in range(8)]
        out += [
            _event(4, EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
            _event(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"\x00" * 32, bootloader),
            _event(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"\x01" * 32, self.kernel_digest),
        ]
        return tuple(out)

    def log(self) -> bytes:
        """The TCG crypto-agile event log of ``events``."""
        spec = SpecIdEvent(0, 0, 0, 2, 0, 2, (DigestAlgorithm(ALG_SHA256, 32),), b"")
        return build_event_log(EventLog(spec, self.events(), 0))

    def pcrs(self) -> dict[int, bytes]:
        """The SHA-256 PCR values this boot leaves (extended here from zero)."""
        values: dict[int, bytes] = {}
        for ev in self.events():
            digest = dict(ev.digests)[ALG_SHA256]
            values[ev.index] = hashlib.sha256(values.get(ev.index, bytes(32)) + digest).digest()
        return values


@dataclass(frozen=True)
class SwtpmLayout:
    """Where one simulated TPM machine keeps its files."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def ek_roots(self) -> tuple[Path, Path]:
        """The local CA's root and issuer certificates (the EK certificate's chain)."""
        return (self.ca / "swtpm-localca-rootca-cert.pem", self.ca / "issuercert.pem")

    @property
    def event_log(self) -> Path:
        return self.root / "binary_bios_measurements"

    @property
    def ima_log(self) -> Path:
        return self.root / "ascii_runtime_measurements"


def manufacture(layout: SwtpmLayout) -> None:
    """Create the TPM state with an RSA-2048 EK and its certificate (swtpm_setup), under a
    local CA of this layout; does nothing when the state exists."""
    if (layout.state / "tpm2-00.permall").exists():
        return
    for path in (layout.state, layout.ca):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    localca = layout.root / "swtpm-localca.conf"
    localca.write_text(f"statedir = {layout.ca}\nsigningkey = {layout.ca}/signkey.pem\n"
                       f"issuercert = {layout.ca}/issuercert.pem\n"
                       f"certserial = {layout.ca}/certserial\n")
    options = layout.root / "swtpm-localca.options"
    options.write_text("--platform-manufacturer keybroker-simulator\n--platform-version 2.1\n"
                       "--platform-model swtpm\n")
    setup = layout.root / "swtpm_setup.conf"
    setup.write_text(f"create_certs_tool = {shutil.which('swtpm_localca') or 'swtpm_localca'}\n"
                     f"create_certs_tool_config = {localca}\n"
                     f"create_certs_tool_options = {options}\n")
    done = subprocess.run(
        ["swtpm_setup", "--tpm2", "--tpmstate", str(layout.state), "--create-ek-cert",
         "--create-platform-cert", "--lock-nvram", "--config", str(setup), "--overwrite"],
        capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise Unavailable("swtpm_setup failed", expected="an EK and its certificate",
                          actual=(done.stderr or done.stdout)[-300:])


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise Unavailable("no free loopback port pair for swtpm")


@dataclass
class Swtpm:
    """A running swtpm on loopback (server port, control port = port + 1)."""

    layout: SwtpmLayout
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tcti(self) -> str:
        """The TCTI string of this TPM (``swtpm:host=...,port=...``)."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> Swtpm:
        """Start swtpm on the layout's state (manufactured first if needed)."""
        manufacture(self.layout)
        self.port = self.port or _free_port_pair()
        log = (self.layout.root / "swtpm.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.layout.state}",
                 "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable("swtpm exited at start", actual=f"exit {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable("swtpm did not start listening", expected=f"127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Shut the TPM down in order (TPM2_Shutdown(CLEAR), as an OS does at power-off, so
        its clock stays ``safe``), then stop swtpm (its state stays on disk)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(Exception):  # a TPM that no longer answers is stopped anyway
            self._esys(lambda esys: esys.shutdown(_su_clear()))
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def boot(self, boot: SimulatedBoot) -> None:
        """Measure ``boot`` into the TPM's PCRs and write its event log (once per power-on)."""
        self._extend([(ev.index, dict(ev.digests)[ALG_SHA256]) for ev in boot.events()])
        self.layout.event_log.write_bytes(boot.log())
        self.layout.ima_log.write_text("")  # a new boot: IMA starts a new list

    def measure_init_data(self, init_data: bytes) -> None:
        """What the host does before the workload starts: extend PCR 8 (SHA-256 bank) with the
        SHA-256 of the init-data document."""
        self._extend([(8, hashlib.sha256(init_data).digest())])

    def measure_file(self, path: str, content: bytes) -> ImaEntry:
        """What IMA does when a file is executed: an ima-ng entry (SHA-256 of ``content``)
        appended to the IMA log, and PCR 10's SHA-256 bank extended with SHA-256 of the
        entry's template data."""
        draft = ImaEntry(10, bytes(20), "ima-ng", "sha256", hashlib.sha256(content).digest(),
                         path)
        entry = dataclasses.replace(
            draft, template_hash=hashlib.sha1(draft.template_data).digest())  # noqa: S324
        self._extend([(10, hashlib.sha256(entry.template_data).digest())])
        with self.layout.ima_log.open("a") as log:
            log.write(format_ima_entry(entry) + "\n")
        return entry

    def _extend(self, extends: list[tuple[int, bytes]]) -> None:
        """TPM2_PCR_Extend of each (PCR, SHA-256 digest), in order, in one ESAPI context."""
        from tpm2_pytss.types import TPML_DIGEST_VALUES  # noqa: PLC0415

        def run(esys: Any) -> None:
            for pcr, digest in extends:
                values, _ = TPML_DIGEST_VALUES.unmarshal(
                    struct.pack(">IH", 1, ALG_SHA256) + digest)
                esys.pcr_extend(_pcr_handle(pcr), values)
        self._esys(run)

    def _esys(self, body: Callable[[Any], object]) -> None:
        """Run ``body`` on an ESAPI context of this TPM."""
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        from tpm2_pytss import ESAPI, TCTILdr  # noqa: PLC0415 - only for the simulator

        tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={self.port}")
        esys: Any = ESAPI(tcti)
        try:
            body(esys)
        finally:
            esys.close()
            tcti.close()


def _su_clear() -> Any:
    from tpm2_pytss.constants import TPM2_SU  # noqa: PLC0415

    return TPM2_SU.CLEAR


def _pcr_handle(index: int) -> Any:
    from tpm2_pytss.constants import ESYS_TR  # noqa: PLC0415

    return ESYS_TR.PCR0 + index
