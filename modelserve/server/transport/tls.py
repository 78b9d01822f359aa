"""TLS for the listeners: one certificate and key, read once, for uvicorn and every gRPC server.

Where the key comes from follows TorchServe's ``ConfigManager.getSslContext``: a PKCS12
keystore (``tls_keystore``), else PEM files (``tls_cert_file``, ``tls_key_file``), else a
self-signed certificate made at start (Netty's ``SelfSignedCertificate``: CN=localhost, RSA
2048). ``Settings.uses_tls`` says which listeners serve it. ``ssl_context`` gives an HTTP
listener its ``ssl.SSLContext``; ``server_credentials`` gives a gRPC server its credentials.
A file that cannot be used (missing, no certificate, a key that is not the certificate's, a
wrong keystore password) is a ``ValueError`` with a one-line message, raised before anything
binds.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from modelserve.config import Settings

__all__ = ["LISTENERS", "Material", "material", "server_credentials", "ssl_context"]

log = logging.getLogger("modelserve.tls")

LISTENERS = ("inference", "management", "metrics", "grpc")
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
_DEFAULT_KEYSTORE_PASSWORD = "changeit"  # ConfigManager's default keystore_pass


@dataclass(frozen=True)
class Material:
    """A server's TLS material, PEM: its certificate chain (its own first), its private key
    (unencrypted), and the CAs its clients' certificates must chain to (mutual TLS)."""

    chain: bytes
    key: bytes
    client_ca: bytes | None
    source: str  # what it was read from, for messages


def _read(path: Path, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting} {path}: {exc.strerror or exc}") from None


def _blocks(data: bytes, labels: set[bytes]) -> list[bytes]:
    return [m.group(0) + b"\n" for m in _PEM.finditer(data) if m.group(1) in labels]


def _from_pem(settings: Settings) -> Material:
    if settings.tls_cert_file is None:
        raise ValueError("tls_key_file is set but tls_cert_file is not: set both")
    cert_data = _read(settings.tls_cert_file, "tls_cert_file")
    chain = _blocks(cert_data, {b"CERTIFICATE"})
    if not chain:
        raise ValueError(f"tls_cert_file {settings.tls_cert_file}: no PEM certificate in it")
    key_setting, key_path = "tls_key_file", settings.tls_key_file
    key_data = cert_data
    if key_path is None:
        key_setting, key_path = "tls_cert_file", settings.tls_cert_file
    else:
        key_data = _read(key_path, key_setting)
    if b"ENCRYPTED" in key_data:
        raise ValueError(f"{key_setting} {key_path}: an encrypted private key cannot be read; "
                         "decrypt it (openssl pkey -in KEY -out KEY.pem) or use a keystore")
    keys = _blocks(key_data, _KEY_LABELS)
    if not keys:
        raise ValueError(f"{key_setting} {key_path}: no PEM private key in it")
    source = f"tls_cert_file {settings.tls_cert_file}"
    if settings.tls_key_file is not None:
        source += f" and tls_key_file {settings.tls_key_file}"
    return Material(b"".join(chain), keys[0], None, source)


def _pem_key(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _from_keystore(settings: Settings) -> Material:
    """The keystore's key and its chain (PKCS12; cryptography reads its one key entry)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    path = settings.tls_keystore
    assert path is not None
    data = _read(path, "tls_keystore")
    given = settings.tls_keystore_password
    passwords = [given.get_secret_value()] if given is not None \
        else [_DEFAULT_KEYSTORE_PASSWORD, None]
    for password in passwords:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(
                data, None if password is None else password.encode())
            break
        except ValueError:
            continue
    else:
        raise ValueError(f"tls_keystore {path}: not a PKCS12 keystore, or the password "
                         "(tls_keystore_password, TorchServe's keystore_pass) is wrong")
    if key is None or cert is None:
        raise ValueError(f"tls_keystore {path}: no key entry found in the keystore")
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *extra])
    return Material(chain, _pem_key(key), None, f"tls_keystore {path}")


def _self_signed() -> Material:
    """Netty's SelfSignedCertificate, what TorchServe serves when https has no certificate:
    CN=localhost, RSA 2048, valid from a year ago; plus localhost names for verification."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=365))
            .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(key, hashes.SHA256()))
    log.warning("TLS: no certificate set (tls_cert_file, tls_keystore); serving a self-signed "
                "one for CN=localhost, as TorchServe does: clients must skip verification")
    return Material(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), None,
                    "a self-signed certificate")


def _context(found: Material, workdir: Path, level: int | None = None) -> ssl.SSLContext:
    """A server context from ``found``: TLS 1.2 or later, Python's secure ciphers at OpenSSL
    security ``level`` (None: OpenSSL's default). The key goes through a 0600 file in the
    workdir (``load_cert_chain`` reads only files), removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if level is not None:
        context.set_ciphers(f"DEFAULT:@SECLEVEL={level}")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tls-", suffix=".pem", dir=workdir)
    except OSError as exc:
        raise ValueError(f"TLS: cannot write the key's transit file in workdir {workdir}: "
                         f"{exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(found.key + found.chain)
        context.load_cert_chain(name)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"TLS: the private key is not the certificate's ({found.source})"
                             ) from None
        hint = (" (a key this small needs tls_security_level: 1)"
                if exc.reason == "EE_KEY_TOO_SMALL" else "")
        raise ValueError(f"TLS: cannot use {found.source}: {exc.reason or exc}{hint}"
                         ) from None
    finally:
        os.unlink(name)
    if found.client_ca is not None:
        try:
            context.load_verify_locations(cadata=found.client_ca.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise ValueError(f"tls_client_ca_file: {exc.reason or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load(settings: Settings) -> tuple[Material, ssl.SSLContext]:
    if settings.tls_keystore is not None:
        found = _from_keystore(settings)
    elif settings.tls_cert_file is not None or settings.tls_key_file is not None:
        found = _from_pem(settings)
    else:
        found = _self_signed()
    if settings.tls_client_ca_file is not None:
        path = settings.tls_client_ca_file
        cas = _blocks(_read(path, "tls_client_ca_file"), {b"CERTIFICATE"})
        if not cas:
            raise ValueError(f"tls_client_ca_file {path}: no PEM certificate in it")
        found = Material(found.chain, found.key, b"".join(cas), found.source)
    return found, _context(found, Path(settings.workdir), settings.tls_security_level)


_loaded: dict[tuple[object, ...], tuple[Material, ssl.SSLContext]] = {}


def _loaded_for(settings: Settings) -> tuple[Material, ssl.SSLContext]:
    """Read once per process for the same settings: the listeners and the gRPC servers share
    one certificate (the self-signed one too)."""
    password = settings.tls_keystore_password
    key = (settings.tls_cert_file, settings.tls_key_file, settings.tls_keystore,
           None if password is None else password.get_secret_value(),
           settings.tls_client_ca_file, settings.workdir, settings.tls_security_level)
    if key not in _loaded:
        _loaded[key] = _load(settings)
    return _loaded[key]


def material(settings: Settings) -> Material:
    """The TLS material the settings name (checked: the key is the certificate's)."""
    return _loaded_for(settings)[0]


def ssl_context(settings: Settings, listener: str) -> ssl.SSLContext | None:
    """The SSLContext of HTTP ``listener`` (inference, management, metrics); None: plain."""
    return _loaded_for(settings)[1] if settings.uses_tls(listener) else None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Credentials for a gRPC server (``server.add_secure_port(address, credentials)``), or
    None when gRPC is plain (``add_insecure_port``). Every gRPC server shares them: the OIP v2
    service and TorchServe's inference and management services (TorchServe's
    enable_grpc_ssl, one switch for both)."""
    if not settings.uses_tls("grpc"):
        return None
    found = material(settings)
    return grpc.ssl_server_credentials(
        [(found.key, found.chain)], root_certificates=found.client_ca,
        require_client_auth=found.client_ca is not None)
