"""The agent side of TPM attestation-key enrolment (credential activation), over the broker.

Invariants:
- The agent sends its EK certificate and AK public area; the verifier answers a credential
  made to the EK for that AK; only this TPM can activate it (``TpmCollector.activate``), and
  the recovered credential goes back once. Nothing else leaves the TPM.
- A failed RPC becomes the typed error from the broker's Denial (``error_from_rpc``), raised
  ``from`` the ``grpc.RpcError``; without a Denial it is UNAVAILABLE.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from attester_agent.collectors.tpm import TpmCollector
from keybroker.logs import REQUEST_ID_METADATA
from keybroker.rpc_errors import error_from_rpc
from keybroker.v1 import broker_pb2_grpc, evidence_pb2

logger = logging.getLogger(__name__)


def enrol_tpm(broker_addr: str, collector: TpmCollector, *, timeout: float,
              credentials: grpc.ChannelCredentials | None,
              request_id: str | None = None) -> evidence_pb2.TpmEnrolment:
    """Enrol this TPM's AK with the broker's verifier; ``credentials`` None is plaintext."""
    request_id = request_id or str(uuid.uuid4())
    metadata = ((REQUEST_ID_METADATA, request_id),)
    material = collector.enrolment_material()
    channel = (grpc.insecure_channel(broker_addr) if credentials is None
               else grpc.secure_channel(broker_addr, credentials))
    with channel:
        stub = broker_pb2_grpc.KeyBrokerStub(channel)
        try:
            challenge = stub.EnrolTpm(evidence_pb2.EnrolTpmRequest(
                ek_certificate=material.ek_certificate, ak_public=material.ak_public,
                request_id=request_id), timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, broker_addr) from exc
        credential = collector.activate(challenge.credential_blob, challenge.encrypted_secret)
        try:
            enrolled: evidence_pb2.TpmEnrolment = stub.ActivateTpm(
                evidence_pb2.ActivateTpmRequest(enrolment_id=challenge.enrolment_id,
                                                credential=credential, request_id=request_id),
                timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, broker_addr) from exc
    logger.info("TPM AK %s enrolled for EK %s", enrolled.ak_name.hex(), enrolled.ek_fingerprint)
    return enrolled
