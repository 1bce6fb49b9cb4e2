"""A throwaway SoftHSM2 token for the PKCS#11 tests: its own token directory and config file
(``SOFTHSM2_CONF``, exported so broker child processes use it too), a user PIN in a 0600 file,
and a way to pull the token away and put it back (the HSM becoming unavailable)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
)


def softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 module (scripts/test.sh installs the softhsm2 package)."""
    for path in MODULE_CANDIDATES:
        if path.exists():
            return path
    raise FileNotFoundError("libsofthsm2.so not found: install the Debian package softhsm2")


@dataclass(frozen=True)
class SoftHsmToken:
    """One initialised token."""

    root: Path
    label: str
    pin: str
    module: Path

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def pin_file(self) -> Path:
        return self.root / "user.pin"

    def broker_settings(self, key_label: str = "keybroker-kek") -> str:
        """``[broker]`` lines selecting this token as the KEK provider."""
        return ('kek_provider = "pkcs11"\n'
                f'pkcs11_module = "{self.module}"\n'
                f'pkcs11_token_label = "{self.label}"\n'
                f'pkcs11_key_label = "{key_label}"\n'
                f'pkcs11_pin_file = "{self.pin_file}"\n')

    @contextmanager
    def unplugged(self) -> Iterator[None]:
        """The token is gone (its directory moved away) inside the block."""
        away = self.root / "away"
        shutil.move(self.tokens, away)
        try:
            yield
        finally:
            shutil.move(away, self.tokens)


def create_token(root: Path, label: str = "keybroker-test") -> SoftHsmToken:
    """Initialise a token under ``root`` and export ``SOFTHSM2_CONF`` for this process and its
    children."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = "kb-" + os.urandom(6).hex()
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                    "--so-pin", "so-" + pin, "--pin", pin],
                   check=True, capture_output=True, text=True)
    token = SoftHsmToken(root=root, label=label, pin=pin, module=softhsm_module())
    fd = os.open(token.pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(pin + "\n")
    return token
