"""TPM2_MakeCredential done by the verifier (TPM 2.0 Library Part 1, sections 24 and 11.4.9-10):
a credential only the TPM holding a given EK can recover, and only for a given AK Name.

Invariants:
- The EK is an RSA key of the TCG default template (EK Credential Profile, template L-1:
  nameAlg SHA-256, AES-128-CFB symmetric): the seed is RSA-OAEP(SHA-256, label "IDENTITY\\0")
  encrypted; other EK types are refused (``Malformed``), never approximated.
- symKey = KDFa(SHA-256, seed, "STORAGE", Name(AK), "", 128); HMACkey = KDFa(SHA-256, seed,
  "INTEGRITY", "", "", 256); encIdentity = AES-128-CFB(symKey, IV 0, TPM2B(credential));
  integrity = HMAC-SHA256(HMACkey, encIdentity || Name(AK)). A TPM releases the credential
  only when the integrity verifies for the AK it is given, so a proof names exactly this AK.
- The seed and the credential come from the OS's CSPRNG, one per enrolment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from keybroker.errors import Malformed

CREDENTIAL_SIZE = 32
_SEED_SIZE = 32  # SHA-256, the EK's nameAlg
_SYM_BITS = 128  # AES-128 (the EK template's symmetric)


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa with HMAC-SHA256 (SP 800-108 counter mode, TPM 2.0 Part 1 section 11.4.10.2)."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\x00" + context_u
                        + context_v + struct.pack(">I", bits), hashlib.sha256).digest()
        counter += 1
    return out[:bits // 8]


@dataclass(frozen=True)
class Credential:
    """A made credential: what the TPM is given and what it must give back."""

    credential: bytes  # the secret the TPM recovers
    blob: bytes  # TPM2B_ID_OBJECT contents: TPM2B integrity HMAC || encIdentity
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET contents: the OAEP-encrypted seed


def make_credential(ek_key: object, ak_name: bytes, *,
                    credential: bytes | None = None) -> Credential:
    """A credential for the AK named ``ak_name`` that only ``ek_key``'s TPM can activate."""
    if not isinstance(ek_key, rsa.RSAPublicKey) or ek_key.key_size != 2048:
        raise Malformed("EK key type not supported for credential activation",
                        rule="tpm.ek", expected="RSA-2048 EK (TCG default template)",
                        actual=type(ek_key).__name__)
    secret = credential if credential is not None else os.urandom(CREDENTIAL_SIZE)
    seed = os.urandom(_SEED_SIZE)
    encrypted_seed = ek_key.encrypt(seed, padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\x00"))
    sym_key = kdfa(seed, b"STORAGE", ak_name, b"", _SYM_BITS)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(struct.pack(">H", len(secret)) + secret)
    enc_identity += encryptor.finalize()
    hmac_key = kdfa(seed, b"INTEGRITY", b"", b"", 256)
    integrity = hmac.new(hmac_key, enc_identity + ak_name, hashlib.sha256).digest()
    return Credential(credential=secret,
                      blob=struct.pack(">H", len(integrity)) + integrity + enc_identity,
                      encrypted_secret=encrypted_seed)
