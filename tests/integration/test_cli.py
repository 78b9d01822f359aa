"""The command line: help that documents every command, and the archiver."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile

import pytest
import yaml
from typer.testing import CliRunner

from modelserve.cli import app
from tests.conftest import free_port

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("start", "archive", "examples"):
        assert command in result.output


def test_start_help_documents_its_flags():
    result = runner.invoke(app, ["start", "--help"])
    assert result.exit_code == 0
    for flag in ("--config", "--model-store", "--models"):
        assert flag in result.output


def test_archive_command_builds_a_mar(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    result = runner.invoke(app, [
        "archive", "--model-name", "m", "--version", "3.0", "--handler", "tensor_handler",
        "--serialized-file", str(tmp_path / "model.onnx"), "--export-path", str(tmp_path / "o"),
    ])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "o" / "m.mar") as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelVersion"] == "3.0"


def test_archive_command_reports_errors(tmp_path):
    result = runner.invoke(app, ["archive", "--model-name", "m", "--handler", "x",
                                 "--serialized-file", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2
    assert "not found" in result.output


@pytest.mark.parametrize(("name", "version", "message"), [
    ("../evil", "1.0", "invalid model name '../evil'"),  # wrote ../evil.mar beside the export
    ("", "1.0", "invalid model name ''"),
    ("m", "1/2", "invalid model version '1/2'"),
])
def test_archive_command_refuses_names_that_are_not_one_path_segment(tmp_path, name, version,
                                                                      message):
    out = tmp_path / "o"
    result = runner.invoke(app, ["archive", "--model-name", name, "--version", version,
                                 "--handler", "tensor_handler", "--export-path", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert list(tmp_path.rglob("*.mar")) == []


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "modelserve", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("modelserve ")


def test_frontend_does_not_import_torch():
    """The frontend process stays light: building the apps must not pull in torch."""
    code = (
        "import sys\n"
        "from modelserve.config import Settings\n"
        "from modelserve.server.app import run_server\n"
        "from modelserve.server.engine.dataplane import DataPlane\n"
        "from modelserve.server.observability.metrics import ServerMetrics\n"
        "from modelserve.server.transport.torchserve.inference import create_inference_app\n"
        "from modelserve.server.transport.torchserve.management import create_management_app\n"
        "s = Settings(); d = DataPlane(s, ServerMetrics())\n"
        "create_inference_app(d, s); create_management_app(d)\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "assert 'numpy' not in sys.modules, 'numpy'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("config_text", "args", "message"), [
    ("log_level: verbose\n", [], "log_level"),
    ("host: [unclosed\n", [], "is not valid YAML"),
    ("x: !!python/name:os.system\n", [], "is not valid YAML"),
    ("- a\n- b\n", [], "must be a mapping of keys to values, not a list"),
    ("", ["--inference-port", "70000"], "inference_port"),
    ("", ["--log-level", "loud"], "log_level"),
])
def test_start_refuses_bad_configuration_in_one_line(tmp_path, config_text, args, message):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    result = runner.invoke(app, ["start", "--config", str(config), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_start_reports_a_port_in_use_in_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({
            "inference_port": port, "management_port": free_port(),
            "metrics_port": free_port(), "grpc_inference_port": 0,
            "workdir": str(tmp_path / "work"), "model_store": str(tmp_path)}))
        out = subprocess.run([sys.executable, "-m", "modelserve", "start", "--config",
                              str(tmp_path / "config.yaml"), "--disable-token-auth"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "a listener failed to start (port in use?)" in out.stderr
    assert "Traceback" not in out.stderr
