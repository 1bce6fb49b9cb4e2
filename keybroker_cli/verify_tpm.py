"""``keybroker verify QUOTE --tee tpm``: a TPM2_Quote checked offline against an AK the
operator trusts, with the PCR values reported beside it and, optionally, the boot event log.

Invariants:
- The AK is given by the operator (``--ak``: a TPMT_PUBLIC / TPM2B_PUBLIC, or a PEM/DER public
  key): trusting it is the operator's decision here. A PEM key has no TPM Name, so the claims
  show none and no scheme restriction applies.
- ``--pcrs`` files are JSON maps of PCR index to hex value, one file per bank, the bank told
  by the value length (20 SHA-1, 32 SHA-256, 48 SHA-384, 64 SHA-512). Unreadable or
  inconsistent files are usage errors (exit 2), never a verdict.
- Without ``--nonce`` extraData is not checked, and the output says so.
- ``--eventlog`` must replay to the quoted PCRs (EVENT_LOG otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keybroker.errors import KeybrokerError
from keybroker.evidence.tcg_log import HASH_NAMES, KNOWN_DIGEST_SIZES
from keybroker_cli.evidence_input import UsageError, read_input

_SIZES = {KNOWN_DIGEST_SIZES[alg]: alg for alg in HASH_NAMES}  # value length -> bank
TPM_ONLY = ("signature", "ak", "ak_cert", "ak_ca", "pcrs", "eventlog", "ima_log", "nonce")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--tee tpm`` options of ``keybroker verify``."""
    group = parser.add_argument_group("TPM (--tee tpm; the positional file is the TPMS_ATTEST)")
    group.add_argument("--signature", type=Path, metavar="FILE",
                       help="the quote's TPMT_SIGNATURE")
    group.add_argument("--ak", type=Path, metavar="FILE",
                       help="the attestation key: TPMT_PUBLIC, TPM2B_PUBLIC or a PEM/DER "
                            "public key")
    group.add_argument("--ak-cert", type=Path, metavar="FILE",
                       help="the AK's certificate (DER or PEM), chained to an --ak-ca root at "
                            "--at (default now); with --ak it must certify that key")
    group.add_argument("--ak-ca", type=Path, action="append", default=[], metavar="PATH",
                       help="EK/AK CA certificates (files or directories): self-signed ones "
                            "are the trusted roots, the others intermediates (repeatable)")
    group.add_argument("--pcrs", type=Path, action="append", default=[], metavar="FILE",
                       help="JSON map of PCR index to hex value, one file per bank "
                            "(repeatable)")
    group.add_argument("--eventlog", type=Path, metavar="FILE",
                       help="TCG binary event log, replayed to the quoted PCRs")
    group.add_argument("--ima-log", type=Path, metavar="FILE",
                       help="IMA ascii_runtime_measurements, replayed to the quoted PCR 10")
    group.add_argument("--nonce", metavar="HEX",
                       help="the expected extraData (absent: not checked, and said so)")


def load_pcrs(path: Path) -> tuple[int, dict[int, bytes]]:
    """(bank algorithm, PCR index -> value) from one ``--pcrs`` file."""
    try:
        doc = json.loads(read_input(path) or b"")
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{path}: expected a JSON object of PCR index to hex value")
    values: dict[int, bytes] = {}
    for key, value in doc.items():
        try:
            index, raw = int(key), bytes.fromhex(value)
        except (TypeError, ValueError):
            raise UsageError(f"{path}: PCR {key!r}: expected an index 0..23 and a hex value"
                             ) from None
        if not 0 <= index <= 23:
            raise UsageError(f"{path}: PCR index {index} out of range 0..23")
        values[index] = raw
    sizes = {len(v) for v in values.values()}
    if len(sizes) != 1 or next(iter(sizes)) not in _SIZES:
        raise UsageError(f"{path}: every value must have one bank's size (20, 32, 48 or 64 "
                         f"bytes); found {sorted(sizes)}")
    return _SIZES[sizes.pop()], values


def _load_ak(path: Path) -> tuple[Any, bool]:
    """(TpmPublic, has a TPM Name) from ``--ak``."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        load_der_public_key,
        load_pem_public_key,
    )

    from keybroker.evidence.tpm_public import (  # noqa: PLC0415
        parse_public,
        public_from_key,
    )

    data = read_input(path) or b""
    if data.lstrip().startswith(b"-----BEGIN") or data[:1] == b"\x30":
        try:
            key = (load_pem_public_key(data) if data.lstrip().startswith(b"-----")
                   else load_der_public_key(data))
        except ValueError as exc:
            raise UsageError(f"--ak {path}: not a public key ({exc})") from None
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise UsageError(f"--ak {path}: an RSA or EC public key is needed")
        return public_from_key(key), False
    try:
        return parse_public(data), True
    except KeybrokerError as exc:
        raise UsageError(f"--ak {path}: {exc.detail}") from None


def _load_ak_cert(args: argparse.Namespace) -> tuple[Any, list[Any], list[Any]]:
    """(AK certificate or None, roots, intermediates) from --ak-cert and --ak-ca."""
    from verifier.pki import certificates_in  # noqa: PLC0415 - keep CLI start-up light
    from verifier.tpm.ak import lenient_names  # noqa: PLC0415

    if args.ak_cert is None:
        return None, [], []
    found = certificates_in(read_input(args.ak_cert) or b"")
    if len(found) != 1:
        raise UsageError(f"--ak-cert {args.ak_cert}: expected one certificate, found "
                         f"{len(found)}")
    pool = []
    for given in args.ak_ca:
        path = Path(given)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            pool.extend(certificates_in(read_input(file) or b""))
    with lenient_names():
        roots = [c for c in pool if c.issuer == c.subject]
    if not roots:
        raise UsageError("--ak-ca holds no self-signed root certificate")
    return found[0], roots, [c for c in pool if all(c is not r for r in roots)]


def run_tpm(args: argparse.Namespace,
            conclude: Callable[[Callable[[], tuple[Any, tuple[str, ...]]], datetime], int]
            ) -> int:
    """Verify the quote through ``conclude`` (the command's verify-and-print step); the exit
    code."""
    from verifier.tpm.claims import TpmClaims  # noqa: PLC0415
    from verifier.tpm.verify import AkTrust, verify_tpm_quote  # noqa: PLC0415

    if args.signature is None or (args.ak is None and args.ak_cert is None):
        raise UsageError("--tee tpm needs --signature and --ak (or --ak-cert)")
    if args.ak_cert is not None and not args.ak_ca:
        raise UsageError("--ak-cert needs --ak-ca (the roots it must chain to)")
    if args.policy is not None or args.collateral or args.cert_table is not None:
        raise UsageError("--policy, --collateral and --cert-table do not apply to --tee tpm")
    try:
        nonce = bytes.fromhex(args.nonce) if args.nonce is not None else None
    except ValueError:
        raise UsageError(f"--nonce: not hex: {args.nonce!r}") from None
    banks: dict[int, dict[int, bytes]] = {}
    for path in args.pcrs:
        alg, values = load_pcrs(path)
        if alg in banks:
            raise UsageError(f"{path}: a second file for the same bank")
        banks[alg] = values
    attest = read_input(args.file) or b""
    signature = read_input(args.signature) or b""
    eventlog = read_input(args.eventlog)
    ima_log = read_input(args.ima_log)
    cert, roots, intermediates = _load_ak_cert(args)
    if args.ak is not None:
        ak, named = _load_ak(args.ak)
    else:
        from keybroker.evidence.tpm_public import public_from_key  # noqa: PLC0415

        assert cert is not None
        ak, named = public_from_key(cert.public_key()), False
    at = args.at or datetime.now(UTC)
    if nonce is None:
        print("note: no --nonce given: the quote's extraData is not checked (freshness "
              "unproven)", file=sys.stderr)

    def verified() -> tuple[TpmClaims, tuple[str, ...]]:
        chain: tuple[str, ...] = ()
        if cert is not None:
            from verifier.tpm.ak import (  # noqa: PLC0415
                check_certified_key,
                lenient_names,
                verify_ak_certificate,
            )

            links = verify_ak_certificate(cert, intermediates, roots, at=at)
            check_certified_key(cert, ak)
            with lenient_names():
                chain = tuple(c.subject.rfc4514_string()[:120] for c in links[1:])
        trust = AkTrust("certificate" if cert is not None else "operator", chain)
        return verify_tpm_quote(attest, signature, ak, banks, nonce=nonce, trust=trust,
                                event_log=eventlog, ima_log=ima_log, named=named), ()

    return conclude(verified, at)
