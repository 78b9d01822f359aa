"""modelserve.server.transport.tls: where the certificate comes from (TorchServe's
ConfigManager.getSslContext order: keystore, PEM pair, self-signed) and the one-line errors.
Handshakes run in memory (ssl.MemoryBIO), no socket."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from modelserve.config import Settings
from modelserve.server.transport import tls
from tests.pki import KEYSTORE_PASSWORD, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings(tmp_path: Path, **values) -> Settings:
    return Settings(workdir=tmp_path / "work", **values)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> x509.Certificate:
    """Run a TLS handshake between the two contexts in memory; the server's certificate."""
    pipes = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    c = client.wrap_bio(pipes[0], pipes[1], server_hostname="localhost")
    s = server.wrap_bio(pipes[2], pipes[3], server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for side in (c, s):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        pipes[2].write(pipes[1].read())
        pipes[0].write(pipes[3].read())
        if all(done.values()):
            # TLS 1.3: the server checks a client certificate when it reads the first record
            c.write(b"x")
            pipes[2].write(pipes[1].read())
            assert s.read(1) == b"x"
            return x509.load_der_x509_certificate(c.getpeercert(binary_form=True))
    raise AssertionError("handshake did not finish")


def test_off_by_default(tmp_path):
    plain = settings(tmp_path)
    assert [plain.uses_tls(name) for name in tls.LISTENERS] == [False] * 4
    assert tls.ssl_context(plain, "inference") is None
    assert tls.server_credentials(plain) is None


def test_pem_pair_serves_every_listener(tmp_path, pki):
    """config.yaml's tls_cert_file/tls_key_file (TorchServe: certificate_file and
    private_key_file): every listener then serves TLS, gRPC included."""
    s = settings(tmp_path, tls_cert_file=pki.cert, tls_key_file=pki.key)
    assert all(s.uses_tls(name) for name in tls.LISTENERS)
    served = handshake(tls.ssl_context(s, "management"), pki.client_context())
    assert served.subject.rfc4514_string() == "CN=localhost"
    assert isinstance(tls.server_credentials(s), grpc.ServerCredentials)
    assert list((tmp_path / "work").iterdir()) == []  # the key's transit file is gone


def test_key_inside_the_certificate_file(tmp_path, pki):
    s = settings(tmp_path, tls_cert_file=pki.combined)
    assert handshake(tls.ssl_context(s, "inference"), pki.client_context())


def test_keystore_wins_over_pem_files(tmp_path, pki):
    """getSslContext reads the keystore first (PKCS12, keystore_pass)."""
    s = settings(tmp_path, tls_keystore=pki.keystore, tls_keystore_password=KEYSTORE_PASSWORD,
                 tls_cert_file=pki.ca, tls_key_file=pki.other_key)
    found = tls.material(s)
    assert found.source == f"tls_keystore {pki.keystore}"
    assert found.chain.count(b"BEGIN CERTIFICATE") == 2  # the server's, then the CA
    assert handshake(tls.ssl_context(s, "inference"), pki.client_context())


def test_self_signed_when_a_listener_has_no_certificate(tmp_path, pki, caplog):
    """Netty's SelfSignedCertificate (CN=localhost): TorchServe's answer to an https
    address without keystore or PEM files."""
    s = settings(tmp_path, tls_listeners=["inference"])
    assert not s.uses_tls("management") and tls.ssl_context(s, "management") is None
    trusting = ssl.create_default_context()
    trusting.check_hostname, trusting.verify_mode = False, ssl.CERT_NONE
    served = handshake(tls.ssl_context(s, "inference"), trusting)
    assert served.subject == served.issuer
    assert served.subject.rfc4514_string() == "CN=localhost"
    assert "self-signed" in caplog.text
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(tls.ssl_context(s, "inference"), pki.client_context())


def test_mutual_tls_requires_a_client_certificate(tmp_path, pki):
    s = settings(tmp_path, tls_cert_file=pki.cert, tls_key_file=pki.key,
                 tls_client_ca_file=pki.ca)
    context = tls.ssl_context(s, "inference")
    assert handshake(context, pki.client_context(with_certificate=True))
    with pytest.raises(ssl.SSLError):
        handshake(context, pki.client_context())
    assert tls.material(s).client_ca is not None


@pytest.mark.parametrize("values, message", [
    ({"tls_cert_file": "cert", "tls_key_file": "other_key"},
     r"^TLS: the private key is not the certificate's \(tls_cert_file .*cert.pem and "
     r"tls_key_file .*other_key.pem\)$"),
    ({"tls_cert_file": "key", "tls_key_file": "key"}, r"^tls_cert_file .*: no PEM certificate"),
    ({"tls_cert_file": "cert"}, r"^tls_cert_file .*cert.pem: no PEM private key in it$"),
    ({"tls_key_file": "key"}, r"^tls_key_file is set but tls_cert_file is not"),
    ({"tls_cert_file": "missing", "tls_key_file": "key"},
     r"^tls_cert_file .*missing: No such file or directory$"),
    ({"tls_keystore": "keystore", "tls_keystore_password": "hunter2"},
     r"^tls_keystore .*keystore.p12: not a PKCS12 keystore, or the password"),
    ({"tls_keystore": "cert"}, r"^tls_keystore .*: not a PKCS12 keystore"),
    ({"tls_cert_file": "cert", "tls_key_file": "key", "tls_client_ca_file": "key"},
     r"^tls_client_ca_file .*: no PEM certificate in it$"),
])
def test_unusable_files_are_one_line_errors(tmp_path, pki, values, message):
    paths = {k: (getattr(pki, v, tmp_path / v) if k != "tls_keystore_password" else v)
             for k, v in values.items()}
    s = settings(tmp_path, **paths)
    with pytest.raises(ValueError, match=message) as error:
        tls.ssl_context(s, "inference")
    assert "\n" not in str(error.value) and "hunter2" not in str(error.value)


def test_encrypted_key_is_refused_with_a_hint(tmp_path, pki):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ValueError, match="encrypted private key cannot be read; decrypt"):
        tls.material(settings(tmp_path, tls_cert_file=pki.cert, tls_key_file=encrypted))


def test_jks_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="PKCS12"):
        Settings(tls_keystore_type="JKS")


def test_small_key_needs_security_level_one(tmp_path):
    """TorchServe's own test certificate (test/resources/certs.pem) has a 1024-bit RSA key:
    Java serves it, OpenSSL's default level refuses it. tls_security_level 1 (the TorchServe
    personality's default) serves it; the default names the setting in its error."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    files = {"tls_cert_file": tmp_path / "c.pem", "tls_key_file": tmp_path / "k.pem"}
    with pytest.raises(ValueError, match="EE_KEY_TOO_SMALL.*tls_security_level: 1"):
        tls.ssl_context(settings(tmp_path, **files), "inference")
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_ciphers("DEFAULT:@SECLEVEL=1")
    context = tls.ssl_context(settings(tmp_path, tls_security_level=1, **files), "inference")
    assert handshake(context, client).subject.rfc4514_string() == "CN=localhost"
