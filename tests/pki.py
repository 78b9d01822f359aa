"""A throwaway PKI for the TLS tests: a CA, a server certificate for localhost and 127.0.0.1,
a client certificate (mutual TLS), a key that belongs to neither, and a PKCS12 keystore."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEYSTORE_PASSWORD = "s3cret-pass"


@dataclass
class Pki:
    ca: Path            # the CA certificate: what clients trust
    cert: Path          # the server's certificate (chain: it, then nothing: the CA is a root)
    key: Path           # its private key (PKCS#8)
    combined: Path      # certificate and key in one file
    client_cert: Path
    client_key: Path
    other_key: Path     # a key that is not the server certificate's
    keystore: Path      # PKCS12: the server's key and certificate, KEYSTORE_PASSWORD
    other_ca: Path      # a CA that signed nothing here

    def client_context(self, with_certificate: bool = False) -> ssl.SSLContext:
        """A client context that verifies the server against the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_certificate:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("modelserve test CA", ca_key, "modelserve test CA", ca_key, ca=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = _certificate("localhost", server_key, "modelserve test CA", ca_key, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("test client", client_key, "modelserve test CA", ca_key)
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _certificate("another CA", other_ca_key, "another CA", other_ca_key, ca=True)
    pem = serialization.Encoding.PEM
    files = {
        "ca": ca.public_bytes(pem),
        "cert": server.public_bytes(pem),
        "key": _pem_key(server_key),
        "combined": server.public_bytes(pem) + _pem_key(server_key),
        "client_cert": client.public_bytes(pem),
        "client_key": _pem_key(client_key),
        "other_key": _pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "keystore": pkcs12.serialize_key_and_certificates(
            b"ts", server_key, server, [ca],
            serialization.BestAvailableEncryption(KEYSTORE_PASSWORD.encode())),
        "other_ca": other_ca.public_bytes(pem),
    }
    paths = {}
    for name, data in files.items():
        path = folder / (f"{name}.p12" if name == "keystore" else f"{name}.pem")
        path.write_bytes(data)
        paths[name] = path
    return Pki(**paths)
