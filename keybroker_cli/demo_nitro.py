"""The demo's Nitro enclave: a simulated NSM under the demo's Nitro test CA (``<sim>/nitro``).
INSECURE: the verifier trusts that CA only with its insecure switch
(``simulator_nitro_roots``).

Invariants:
- The demo policy pins the enclave image's PCR0, PCR1 and PCR2 (``image_pcrs`` of the demo
  image) and binds init-data through PCR16; a tampered image changes all three.
- The enclave's PCRs derive from its image measurement only, so the agent process and the
  in-process collectors produce the same values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from attester_agent.collectors.base import Collector
from attester_agent.simulator.nitro import DEFAULT_IMAGE, image_pcrs, simulated_nitro_collector

DEMO_IMAGE_PCR0 = DEFAULT_IMAGE
WRONG_IMAGE_PCR0 = hashlib.sha384(b"keybroker demo enclave image v1 (tampered)").digest()
POLICY_PCRS = (0, 1, 2)


def nitro_section(image: bytes) -> dict[str, object]:
    """The demo policy's ``nitro:`` section accepting the enclave of ``image``."""
    pcrs = image_pcrs(image)
    return {"pcrs": [{"pcr": pcr, "values": [pcrs[pcr].hex()]} for pcr in POLICY_PCRS]}


def nitro_collector(sim: Path, image: bytes, init_data: bytes) -> Collector:
    """An in-process collector on a simulated NSM running ``image``."""
    return simulated_nitro_collector(sim, image=image, init_data=init_data)
