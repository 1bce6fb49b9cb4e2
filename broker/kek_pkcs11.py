"""The ``pkcs11`` KEK backend: AES KEKs that never leave an HSM (tested with SoftHSM2).

Invariants:
- Each KEK version is an AES-256 secret key object on the token, created with
  CKA_TOKEN, CKA_SENSITIVE and not CKA_EXTRACTABLE; data keys are encrypted and decrypted
  inside the HSM with CKM_AES_GCM (96-bit random nonce, 128-bit tag, AAD = wrap label + the
  caller's AAD), so the KEK bytes are never in this process.
- Locators are key labels: version 1 is ``key_label``, version N is ``<key_label>.vN``; the
  audit checkpoint key is the generic secret ``<key_label>.audit`` (CKM_SHA256_HMAC).
  ``kek_id`` is ``pkcs11:<token label>/<key label>``.
- The PIN comes from a file (mode 0600) or an environment variable, never the configuration;
  it is held only as long as the backend is.
- One session, used under a lock (PKCS#11 operations on a session are not concurrent). Any
  PKCS#11 failure is ``Unavailable`` (rule ``kek.hsm``) and marks the session lost; the next
  operation re-initialises the library and logs in again. There is never a fallback to a
  software key.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from typing import Any

import pkcs11
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism
from pkcs11.exceptions import NoSuchKey, PKCS11Error, UserAlreadyLoggedIn

from broker.config import Pkcs11Settings
from broker.kek import NONCE_SIZE, WRAP_LABEL
from keybroker.errors import Unavailable

_log = logging.getLogger(__name__)

_KEK_TEMPLATE = {Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                 Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
                 Attribute.DECRYPT: True, Attribute.PRIVATE: True}
_MAC_TEMPLATE = {Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                 Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.VERIFY: True,
                 Attribute.PRIVATE: True}


class Pkcs11Kek:
    """One KEK version in the HSM."""

    def __init__(self, backend: Pkcs11Backend, label: str) -> None:
        self._backend = backend
        self.label = label

    @property
    def kek_id(self) -> str:
        return f"pkcs11:{self._backend.settings.token_label}/{self.label}"

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        params = GCMParams(nonce, WRAP_LABEL + aad, 128)
        return nonce + self._backend.call(self.label, "encrypt", data_key, params)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        if len(wrapped) < NONCE_SIZE + 16:
            raise Unavailable("wrapped data key truncated", rule="kek.unwrap")
        params = GCMParams(wrapped[:NONCE_SIZE], WRAP_LABEL + aad, 128)
        return self._backend.call(self.label, "decrypt", wrapped[NONCE_SIZE:], params)


class Pkcs11Backend:
    """KEKs (and the audit key) on one PKCS#11 token (module invariants)."""

    def __init__(self, settings: Pkcs11Settings) -> None:
        self.settings = settings
        self._pin = settings.pin()
        self._lock = threading.Lock()
        try:
            self._lib = pkcs11.lib(str(settings.module))
        except (PKCS11Error, RuntimeError, OSError) as exc:
            raise Unavailable(f"cannot load the PKCS#11 module {settings.module}",
                              rule="kek.hsm", actual=str(exc) or type(exc).__name__) from None
        self._session: Any = None
        self._keys: dict[str, Any] = {}
        with self._lock:
            self._connect(reinitialize=False)

    @property
    def name(self) -> str:
        return "pkcs11"

    def _connect(self, *, reinitialize: bool) -> Any:
        try:
            if reinitialize:
                self._lib.reinitialize()
            token = self._lib.get_token(token_label=self.settings.token_label)
            try:
                self._session = token.open(user_pin=self._pin, rw=True)
            except UserAlreadyLoggedIn:  # login is per process: another session did it
                self._session = token.open(rw=True)
        except (PKCS11Error, RuntimeError) as exc:
            self._session = None
            raise Unavailable("the HSM is not available", rule="kek.hsm",
                              expected=f"token {self.settings.token_label!r}",
                              actual=type(exc).__name__) from None
        self._keys.clear()
        return self._session

    def _with_session(self, action: str, op: Any) -> Any:
        with self._lock:
            session = self._session
            if session is None:
                session = self._connect(reinitialize=True)
                _log.warning("reconnected to HSM token %s", self.settings.token_label)
            try:
                return op(session)
            except NoSuchKey as exc:
                raise Unavailable("a key is missing on the token", rule="kek.hsm",
                                  expected=str(exc)[:200], actual="absent") from None
            except (PKCS11Error, RuntimeError) as exc:
                self._session = None  # lost (or refused): reconnect on the next call
                self._keys.clear()
                raise Unavailable(f"HSM {action} failed", rule="kek.hsm",
                                  actual=type(exc).__name__) from None

    def _key(self, session: Any, label: str, key_type: KeyType) -> Any:
        key = self._keys.get(label) or self._find(session, label, key_type)
        if key is None:
            raise NoSuchKey(f"no KEK labelled {label!r} on the token")
        return key

    def _find(self, session: Any, label: str, key_type: KeyType) -> Any:
        found = list(session.get_objects({Attribute.LABEL: label, Attribute.KEY_TYPE: key_type}))
        if len(found) > 1:
            raise Unavailable(f"several keys labelled {label!r} on the token", rule="kek.hsm",
                              expected="one key per label", actual=str(len(found)))
        if found:
            self._keys[label] = found[0]
        return found[0] if found else None

    def call(self, label: str, action: str, data: bytes, params: GCMParams) -> bytes:
        """AES-GCM ``encrypt`` or ``decrypt`` of ``data`` with the KEK ``label``."""
        def op(session: Any) -> bytes:
            key = self._key(session, label, KeyType.AES)
            method = key.encrypt if action == "encrypt" else key.decrypt
            return bytes(method(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))

        return bytes(self._with_session(action, op))

    def locator(self, version: int) -> str:
        label = self.settings.key_label
        return label if version == 1 else f"{label}.v{version}"

    def open(self, locator: str) -> Pkcs11Kek:
        kek = Pkcs11Kek(self, locator)
        self._with_session("lookup", lambda s: self._key(s, locator, KeyType.AES))
        return kek

    def create(self, locator: str) -> Pkcs11Kek:
        def op(session: Any) -> None:
            if self._find(session, locator, KeyType.AES) is None:
                self._keys[locator] = session.generate_key(
                    KeyType.AES, 256, label=locator, store=True, template=_KEK_TEMPLATE)
                _log.info("created KEK %s on token %s", locator, self.settings.token_label)

        self._with_session("key generation", op)
        return Pkcs11Kek(self, locator)

    def destroy(self, locator: str) -> None:
        def op(session: Any) -> None:
            self._key(session, locator, KeyType.AES).destroy()
            self._keys.pop(locator, None)

        self._with_session("key destruction", op)

    def ensure_audit_key(self) -> bool:
        label = f"{self.settings.key_label}.audit"

        def op(session: Any) -> bool:
            if self._find(session, label, KeyType.GENERIC_SECRET) is not None:
                return False
            self._keys[label] = session.generate_key(
                KeyType.GENERIC_SECRET, 256, label=label, store=True, template=_MAC_TEMPLATE)
            return True

        return bool(self._with_session("audit key generation", op))

    def audit_mac(self, data: bytes) -> bytes:
        label = f"{self.settings.key_label}.audit"

        def op(session: Any) -> bytes:
            key = self._key(session, label, KeyType.GENERIC_SECRET)
            return bytes(key.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return bytes(self._with_session("audit MAC", op))

    def close(self) -> None:
        """Close the session (the library stays loaded for the process)."""
        with self._lock:
            if self._session is not None:
                with contextlib.suppress(PKCS11Error, RuntimeError):
                    self._session.close()
                self._session = None
