"""The PKCS#11 KEK backend on a real SoftHSM2 token: keys that never leave the token, wrap and
unwrap inside it, versions by label, the audit MAC key, and the HSM going away and back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType
from support.softhsm import SoftHsmToken

from broker.config import Pkcs11Settings
from broker.kek_pkcs11 import Pkcs11Backend
from keybroker.errors import Category, Malformed, Unavailable


def _settings(token: SoftHsmToken, label: str, **kw: object) -> Pkcs11Settings:
    values: dict[str, object] = {"module": token.module, "token_label": token.label,
                                 "key_label": label, "pin_file": token.pin_file}
    values.update(kw)
    return Pkcs11Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def backend(softhsm_token: SoftHsmToken) -> Pkcs11Backend:
    return Pkcs11Backend(_settings(softhsm_token, "unit-kek"))


def test_pkcs11_kek_is_created_non_extractable_and_wraps_inside_the_token(
        backend: Pkcs11Backend, softhsm_token: SoftHsmToken) -> None:
    """Version 1 is an AES-256 token key, sensitive and not extractable; a data key wrapped
    with an AAD opens only with that AAD; kek_id names token and label."""
    kek = backend.create(backend.locator(1))
    assert kek.kek_id == f"pkcs11:{softhsm_token.label}/unit-kek"
    wrapped = kek.wrap(b"\x42" * 32, b"aad-1")
    assert len(wrapped) == 12 + 32 + 16 and b"\x42" * 32 not in wrapped
    assert kek.unwrap(wrapped, b"aad-1") == b"\x42" * 32
    with pytest.raises(Unavailable) as exc:
        kek.unwrap(wrapped, b"aad-2")
    assert exc.value.rule == "kek.hsm"
    lib = pkcs11.lib(str(softhsm_token.module))
    with lib.get_token(token_label=softhsm_token.label).open() as s:  # already logged in
        key = s.get_key(label="unit-kek", key_type=KeyType.AES)
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        assert key[Attribute.VALUE_LEN] == 32 and key[Attribute.TOKEN]


def test_pkcs11_versions_by_label_and_destroy(backend: Pkcs11Backend) -> None:
    """Version N lives under <label>.vN; create reuses an unregistered existing key; a
    destroyed version cannot be opened."""
    assert backend.locator(3) == "unit-kek.v3"
    first = backend.create("unit-kek.v3")
    again = backend.create("unit-kek.v3")
    data = first.wrap(b"k" * 32, b"a")
    assert again.unwrap(data, b"a") == b"k" * 32
    backend.destroy("unit-kek.v3")
    with pytest.raises(Unavailable, match="missing on the token") as exc:
        backend.open("unit-kek.v3")
    assert "unit-kek.v3" in exc.value.expected


def test_pkcs11_audit_mac_key(backend: Pkcs11Backend) -> None:
    """The audit key is created once and gives a stable HMAC-SHA256."""
    backend.ensure_audit_key()
    assert backend.ensure_audit_key() is False
    mac = backend.audit_mac(b"records 1..10")
    assert len(mac) == 32 and mac == backend.audit_mac(b"records 1..10")
    assert mac != backend.audit_mac(b"records 1..11")


def test_pkcs11_unavailable_then_reconnects(backend: Pkcs11Backend,
                                            softhsm_token: SoftHsmToken) -> None:
    """With the token gone every operation is UNAVAILABLE (never a software fallback); once
    it is back the next operation reconnects and works."""
    kek = backend.open(backend.locator(1))
    wrapped = kek.wrap(b"z" * 32, b"a")
    with softhsm_token.unplugged():
        for _ in range(2):
            with pytest.raises(Unavailable) as exc:
                kek.unwrap(wrapped, b"a")
            assert exc.value.category is Category.UNAVAILABLE and exc.value.rule == "kek.hsm"
    assert kek.unwrap(wrapped, b"a") == b"z" * 32


def test_pkcs11_pin_from_file_or_env_only(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    """The PIN file must be 0600; an unset PIN variable or a wrong PIN is refused."""
    loose = tmp_path / "pin"
    loose.write_text(softhsm_token.pin)
    loose.chmod(0o644)
    with pytest.raises(Malformed, match="group or others"):
        Pkcs11Settings(softhsm_token.module, softhsm_token.label, "x", pin_file=loose).pin()
    with pytest.raises(Malformed, match="not set"):
        Pkcs11Settings(softhsm_token.module, softhsm_token.label, "x",
                       pin_env="KB_TEST_NO_SUCH_PIN").pin()
    # A wrong PIN, in a fresh process (a PKCS#11 login is per process).
    code = ("import sys; from pathlib import Path; from broker.config import Pkcs11Settings\n"
            "from broker.kek_pkcs11 import Pkcs11Backend\n"
            "from keybroker.errors import Unavailable\n"
            "try:\n"
            f"    Pkcs11Backend(Pkcs11Settings(Path({str(softhsm_token.module)!r}), "
            f"{softhsm_token.label!r}, 'x', pin_env='KB_TEST_WRONG_PIN'))\n"
            "except Unavailable as exc:\n"
            "    print(exc.rule); sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "KB_TEST_WRONG_PIN": "0000"}, check=False,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (3, "kek.hsm"), done.stderr
