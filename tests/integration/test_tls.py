"""TLS on real loopback listeners, clients verifying against a throwaway CA (tests/pki.py).

TorchServe's sources each case follows: ConfigManager.getSslContext (keystore, else
private_key_file + certificate_file, else Netty's SelfSignedCertificate), Connector.isSsl (an
https:// address), ModelServer's gRPC servers (enable_grpc_ssl: useTransportSecurity), and
test/pytest/test_model_control_mode.py with test/resources/config_https.properties (https
inference and management addresses with a PEM pair)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modelserve.config import Settings
from modelserve.server.transport import tls
from tests.conftest import Server, free_port
from tests.pki import KEYSTORE_PASSWORD, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def grpc_live(target: str, credentials: grpc.ChannelCredentials | None) -> bool:
    channel = (grpc.insecure_channel(target) if credentials is None
               else grpc.secure_channel(target, credentials))
    with channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def grpc_credentials(pki: Pki, client: bool = False, ca: Path | None = None):
    if not client:
        return grpc.ssl_channel_credentials(root_certificates=(ca or pki.ca).read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes())


def start(server: Server) -> Iterator[Server]:
    server.start()
    yield server
    assert not server.stop()


@pytest.fixture(scope="module")
def tls_server(model_store: Path, pki: Pki,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """config.yaml's tls_cert_file and tls_key_file: every listener serves TLS."""
    yield from start(Server(
        tmp_path_factory.mktemp("tls"), model_store, ["echo.mar"], scheme="https",
        verify=pki.client_context(),
        extra_config={"tls_cert_file": str(pki.cert), "tls_key_file": str(pki.key)}))


def test_every_listener_answers_over_verified_tls(tls_server, pki):
    """All three HTTP listeners and the gRPC service, each client verifying the chain."""
    with httpx.Client(verify=pki.client_context(), timeout=30) as client:
        assert client.get(f"{tls_server.inference}/ping").json() == {"status": "Healthy"}
        answer = client.post(f"{tls_server.inference}/predictions/echo", json={"x": 1})
        assert answer.status_code == 200 and answer.json()["echo"] == {"x": 1}
        models = client.get(f"{tls_server.management}/models").json()["models"]
        assert [m["modelName"] for m in models] == ["echo"]
        metrics = client.get(f"{tls_server.metrics}/metrics")
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
        assert "access-control-allow-origin" not in answer.headers  # CORS is off by default
    assert tls_server.inference.startswith("https://")
    assert f"Inference API:  https://127.0.0.1:{tls_server.ports['inference']}" in (
        tls_server.log())
    assert grpc_live(tls_server.grpc, grpc_credentials(pki))
    if shutil.which("curl"):
        curl = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca),
                               f"{tls_server.inference}/ping"],
                              capture_output=True, text=True, timeout=30)
        assert curl.returncode == 0 and "Healthy" in curl.stdout, curl.stderr


def test_plain_http_to_a_tls_port_fails_cleanly(tls_server, pki):
    """The handshake fails, the connection closes, the server keeps serving and logs no
    traceback (TorchServe answers such a request 403 instead: ExtendedSSLHandler)."""
    for port in ("inference", "management", "metrics"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{tls_server.ports[port]}/ping", timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        grpc_live(tls_server.grpc, None)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert httpx.get(f"{tls_server.inference}/ping", verify=pki.client_context()).status_code \
        == 200
    assert "Traceback" not in tls_server.log()


def test_clients_that_do_not_trust_the_ca_are_refused(tls_server, pki):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.inference}/ping", verify=ssl.create_default_context())
    with pytest.raises(grpc.RpcError) as error:
        grpc_live(tls_server.grpc, grpc_credentials(pki, ca=pki.other_ca))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def ts_config(root: Path, server: Server, lines: list[str]) -> list[str]:
    """--ts-config with TorchServe's addresses on the server's own ports, and its gRPC
    services on free ones (server.ports' ts_inference and ts_management)."""
    server.ports.update(ts_inference=free_port(), ts_management=free_port())
    lines = [*lines, "grpc_inference_port={ts_inference}", "grpc_management_port={ts_management}"]
    path = root / "config.properties"
    path.write_text("\n".join(lines).format(**server.ports) + "\n")
    return ["--ts-config", str(path)]


def test_torchserve_keystore_https_addresses_and_grpc_ssl(model_store, pki, tmp_path):
    """docs/configuration.md "Enable SSL", option 1 (keystore, keystore_pass, keystore_type
    PKCS12) with https inference and management addresses, an http metrics address
    (Connector.isSsl per address) and enable_grpc_ssl=true."""
    server = Server(tmp_path, model_store, [], scheme="https", verify=pki.client_context())
    server.extra_args = ts_config(tmp_path, server, [
        "inference_address=https://127.0.0.1:{inference}",
        "management_address=https://127.0.0.1:{management}",
        "metrics_address=http://127.0.0.1:{metrics}",
        f"keystore={pki.keystore}", f"keystore_pass={KEYSTORE_PASSWORD}",
        "keystore_type=PKCS12", "enable_grpc_ssl=true"])
    for _ in start(server):
        with httpx.Client(verify=pki.client_context(), timeout=30) as client:
            assert client.get(f"{server.inference}/ping").status_code == 200
            assert client.get(f"{server.management}/models").json() == {"models": []}
        plain = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
        assert httpx.get(plain, timeout=30).status_code == 200
        assert grpc_live(server.grpc, grpc_credentials(pki))
        # TorchServe's own gRPC services, the same certificate (ModelServer: both servers
        # useTransportSecurity with enable_grpc_ssl). Called as raw methods: this process must
        # not import the committed TorchServe stubs (test_ts_grpc generates its own, and the
        # two would register the same proto names)
        ports = server.ports
        ping = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping"
        list_models = "/org.pytorch.serve.grpc.management.ManagementAPIsService/ListModels"
        with grpc.secure_channel(f"127.0.0.1:{ports['ts_inference']}",
                                 grpc_credentials(pki)) as channel:
            assert b"Healthy" in _raw(channel, ping)  # Empty in, TorchServeHealthResponse out
        with grpc.secure_channel(f"127.0.0.1:{ports['ts_management']}",
                                 grpc_credentials(pki)) as channel:
            assert _raw(channel, list_models)  # a ManagementResponse with its msg
        with pytest.raises(grpc.RpcError), grpc.insecure_channel(
                f"127.0.0.1:{ports['ts_inference']}") as channel:
            _raw(channel, ping)


def _raw(channel: grpc.Channel, method: str) -> bytes:
    """A unary call with an empty message, its answer's bytes unparsed."""
    call = channel.unary_unary(method, request_serializer=lambda m: m,
                               response_deserializer=lambda b: b)
    return call(b"", timeout=10)


def test_torchserve_https_without_a_certificate_is_self_signed(model_store, tmp_path):
    """ConfigManager.getSslContext: neither keystore nor PEM files, so Netty's
    SelfSignedCertificate (CN=localhost); the http management address stays plain."""
    server = Server(tmp_path, model_store, [], scheme="https", verify=False)
    server.extra_args = ts_config(tmp_path, server, [
        "inference_address=https://127.0.0.1:{inference}",
        "management_address=http://127.0.0.1:{management}"])
    for _ in start(server):
        pem = ssl.get_server_certificate(("127.0.0.1", server.ports["inference"]))
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert cert.subject == cert.issuer
        assert cert.subject.rfc4514_string() == "CN=localhost"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.inference}/ping")
        management = f"http://127.0.0.1:{server.ports['management']}/models"
        assert httpx.get(management, timeout=30).status_code == 200
        assert "self-signed" in server.log()


def test_mutual_tls(model_store, pki, tmp_path):
    """tls_client_ca_file (no TorchServe key): a client certificate from the CA is required
    on every listener, gRPC included."""
    server = Server(tmp_path, model_store, [], scheme="https",
                    verify=pki.client_context(with_certificate=True),
                    extra_config={"tls_cert_file": str(pki.cert), "tls_key_file": str(pki.key),
                                  "tls_client_ca_file": str(pki.ca)})
    for _ in start(server):
        for url in (server.inference + "/ping", server.management + "/models",
                    server.metrics + "/metrics"):
            with httpx.Client(verify=pki.client_context(with_certificate=True)) as client:
                assert client.get(url).status_code == 200
            with pytest.raises(httpx.HTTPError):  # handshake alert, or reset at first read
                httpx.get(url, verify=pki.client_context(), timeout=10)
        assert grpc_live(server.grpc, grpc_credentials(pki, client=True))
        with pytest.raises(grpc.RpcError):
            grpc_live(server.grpc, grpc_credentials(pki))


@pytest.mark.parametrize("config, expected", [
    ({"tls_cert_file": "cert", "tls_key_file": "other_key"},
     "TLS: the private key is not the certificate's (tls_cert_file "),
    ({"tls_keystore": "keystore", "tls_keystore_password": "not-it"},
     "not a PKCS12 keystore, or the password (tls_keystore_password, TorchServe's "
     "keystore_pass) is wrong"),
])
def test_unusable_tls_files_stop_the_start_in_one_line(model_store, pki, tmp_path, config,
                                                       expected):
    values = {k: str(getattr(pki, v, v)) for k, v in config.items()}
    server = Server(tmp_path, model_store, [], extra_config=values)
    with pytest.raises(RuntimeError, match="exited early"):
        server.start(timeout=60)
    assert server.proc.returncode == 2
    log = server.log()
    assert expected in log and "Traceback" not in log and "not-it" not in log
    [line] = [line for line in log.splitlines() if expected in line]


@pytest.mark.skipif(shutil.which("keytool") is None, reason="needs Java's keytool")
def test_keystores_made_by_keytool(tmp_path):
    """docs/configuration.md's own command: keytool -genkey ... -storetype PKCS12 makes a
    keystore read here; a JKS one is refused with the keytool command that converts it."""
    def keytool(store: Path, kind: str) -> None:
        subprocess.run(["keytool", "-genkey", "-keyalg", "RSA", "-alias", "ts", "-keystore",
                        str(store), "-storepass", "changeit", "-storetype", kind,
                        "-validity", "3600", "-keysize", "2048", "-dname",
                        "CN=www.MY_TS.com, OU=Cloud Service, O=model server, L=Palo Alto, "
                        "ST=California, C=US"], check=True, capture_output=True, timeout=120)

    keytool(tmp_path / "keystore.p12", "PKCS12")
    settings = Settings(workdir=tmp_path / "work", tls_keystore=tmp_path / "keystore.p12")
    assert tls.material(settings).chain.startswith(b"-----BEGIN CERTIFICATE-----")
    keytool(tmp_path / "keystore.jks", "JKS")
    properties = tmp_path / "config.properties"
    properties.write_text(f"keystore={tmp_path / 'keystore.jks'}\nkeystore_type=JKS\n")
    from modelserve.ts_config import read_ts_config

    with pytest.raises(ValueError, match="keystore_type=JKS: only PKCS12 .* keytool "
                                         "-importkeystore"):
        read_ts_config(properties)
