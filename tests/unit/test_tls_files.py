"""TLS files and settings: ``keybroker tls init``, the checks on certificate/key files, the
plaintext guard, and the TLS keys of the broker and verifier configs."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from broker.config import load_config as load_broker_config
from keybroker.errors import Malformed
from keybroker.tls import (
    ServerTls,
    TlsFiles,
    certificate_names,
    check_plaintext,
    is_loopback,
    load_key_pair,
)
from keybroker_cli.main import main
from keybroker_cli.tls_cmd import DEFAULT_CLIENTS, SERVERS, TlsAuthority, TlsDir, init_tls
from verifier.config import load_config as load_verifier_config


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsDir:
    return init_tls(tmp_path_factory.mktemp("tls") / "pki", hosts=["kb.example", "10.1.2.3"]).dir


def test_tls_init_writes_keys_0600_and_refuses_to_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`keybroker tls init DIR` writes the CA, both servers and the default clients; keys are
    0600; a second init of the same directory is refused (exit 2) and changes nothing."""
    root = tmp_path / "pki"
    assert main(["tls", "init", str(root), "--client", "agent-1"]) == 0
    layout = TlsDir(root)
    for name in (*SERVERS, *DEFAULT_CLIENTS, "agent-1"):
        assert stat.S_IMODE(layout.key(name).stat().st_mode) == 0o600
        assert layout.cert(name).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert stat.S_IMODE(layout.ca_key.stat().st_mode) == 0o600
    before = layout.ca.read_bytes()
    assert main(["tls", "init", str(root)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert layout.ca.read_bytes() == before
    assert main(["tls", "client", str(root), "agent-2"]) == 0
    assert main(["tls", "client", str(root), "agent-2"]) == 2  # exists: not overwritten


def test_tls_init_certificate_profiles(tls: TlsDir) -> None:
    """Servers carry serverAuth and localhost/loopback/--host SANs; clients clientAuth and a
    keybroker:<name> URI; everything chains to the CA, which signs end entities only."""
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    server = x509.load_pem_x509_certificate(tls.cert("broker").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "kb.example"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "::1", "10.1.2.3"}
    client = x509.load_pem_x509_certificate(tls.cert("admin").read_bytes())
    client.verify_directly_issued_by(ca)
    assert certificate_names(client) == ("admin", "keybroker:admin")
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in usage] == ["1.3.6.1.5.5.7.3.2"]


def test_tls_key_pair_checks_name_the_file(tls: TlsDir, tmp_path: Path) -> None:
    """A key of another certificate, an unreadable file, a file without PEM and an expired
    certificate are MALFORMED naming the file."""
    with pytest.raises(Malformed, match="does not belong") as exc:
        load_key_pair(tls.cert("broker"), tls.key("verifier"))
    assert str(tls.key("verifier")) in exc.value.reason
    with pytest.raises(Malformed, match="cannot read"):
        load_key_pair(tmp_path / "nope.pem", tls.key("broker"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(Malformed, match="no PEM certificate"):
        load_key_pair(junk, tls.key("broker"))
    later = datetime.now(UTC) + timedelta(days=3650)
    with pytest.raises(Malformed, match="expired") as exc:
        load_key_pair(tls.cert("broker"), tls.key("broker"), now=later)
    assert exc.value.rule == "tls.validity" and str(tls.cert("broker")) in exc.value.reason


def test_tls_server_reload_keeps_the_old_set_when_the_new_one_is_bad(tls: TlsDir,
                                                                      tmp_path: Path) -> None:
    """reload() takes a good new set (generation + 1) and refuses a broken one, keeping the
    set in force."""
    cert, key = tmp_path / "s.pem", tmp_path / "s-key.pem"
    cert.write_bytes(tls.cert("broker").read_bytes())
    key.write_bytes(tls.key("broker").read_bytes())
    server = ServerTls(TlsFiles(cert, key, tls.ca), what="test")
    assert server.mutual and server.generation == 1
    cert.write_bytes(tls.cert("verifier").read_bytes())
    key.write_bytes(tls.key("verifier").read_bytes())
    assert server.reload() and server.generation == 2
    key.write_bytes(tls.key("broker").read_bytes())  # half-rotated: key of another cert
    assert not server.reload() and server.generation == 2


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False), ("example.org", False)])
def test_tls_plaintext_only_on_loopback(address: str, loopback: bool) -> None:
    """The insecure plaintext flag accepts loopback addresses only."""
    assert is_loopback(address) is loopback
    if loopback:
        check_plaintext(f"{address}:50051", flag="--insecure-plaintext")
    else:
        with pytest.raises(Malformed, match="loopback"):
            check_plaintext(f"{address}:50051", flag="--insecure-plaintext")


def _broker_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text("[broker]\n" + extra)
    return path


def test_tls_broker_config_keys_come_together(tmp_path: Path) -> None:
    """tls_cert/tls_key and the three verifier TLS keys are all-or-nothing; paths resolve
    against the config's directory; agent_client_ca needs a server certificate."""
    config = load_broker_config(_broker_config(tmp_path, (
        'tls_cert = "b.pem"\ntls_key = "b-key.pem"\nagent_client_ca = "ca.pem"\n'
        'verifier_ca = "ca.pem"\nverifier_client_cert = "c.pem"\n'
        'verifier_client_key = "c-key.pem"\n')))
    assert config.tls == TlsFiles(tmp_path / "b.pem", tmp_path / "b-key.pem", tmp_path / "ca.pem")
    assert config.verifier_tls == TlsFiles(tmp_path / "c.pem", tmp_path / "c-key.pem",
                                           tmp_path / "ca.pem")
    for broken, missing in (('tls_cert = "b.pem"\n', "tls_key"),
                            ('verifier_ca = "ca.pem"\n', "verifier_client_cert"),
                            ('agent_client_ca = "ca.pem"\n', "agent_client_ca")):
        with pytest.raises(Malformed) as exc:
            load_broker_config(_broker_config(tmp_path, broken))
        assert exc.value.rule == f"broker.{missing}"
    assert load_broker_config(_broker_config(tmp_path, "")).tls is None


def test_tls_verifier_config_needs_all_three_and_a_non_empty_allow_list(tmp_path: Path) -> None:
    """Mutual TLS needs tls_cert, tls_key and tls_client_ca; allowed_clients = [] is
    refused (leave it out to accept every certificate of the client CA)."""
    base = '[verifier]\npolicies = ["p.yaml"]\nresult_key = "k.pem"\n'
    path = tmp_path / "verifier.toml"
    path.write_text(base + 'tls_cert = "v.pem"\ntls_key = "v-key.pem"\n'
                           'tls_client_ca = "ca.pem"\nallowed_clients = ["broker-client"]\n')
    config = load_verifier_config(path)
    assert config.tls == TlsFiles(tmp_path / "v.pem", tmp_path / "v-key.pem", tmp_path / "ca.pem")
    assert config.allowed_clients == frozenset({"broker-client"})
    path.write_text(base + 'tls_cert = "v.pem"\ntls_key = "v-key.pem"\n')
    with pytest.raises(Malformed, match="tls_client_ca"):
        load_verifier_config(path)
    path.write_text(base + "allowed_clients = []\n")
    with pytest.raises(Malformed, match="allowed_clients"):
        load_verifier_config(path)


def test_tls_client_certificate_of_another_name(tls: TlsDir) -> None:
    """issue() refuses names outside [a-z0-9._-] (they become CN and URI SAN)."""
    with pytest.raises(ValueError, match="certificate name"):
        TlsAuthority.load(tls.root).issue("Bad Name", client=True)
