"""Triton's perf_analyzer (2.41, the C++ binary) against a real server, token auth on: one short
pass over OIP v2 HTTP (the ONNX example) and one over gRPC (the TorchScript example), each with
its server-side breakdown, which perf_analyzer reads from the model's statistics and fails
without. The binary installs into a venv of its own (bench/perf_analyzer_install.py, also
`make perf-analyzer`); the tests skip, saying why, only when that install fails.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import perf_analyzer  # noqa: E402
import perf_analyzer_install  # noqa: E402

SHAPE = {"input": [1, 8, 8]}
# a pass only has to finish: windows of 20 requests, any spread between them accepted (the
# test machine may be busy), so it takes perf_analyzer's minimum of three windows, ~3 s
SHORT = {"request_count": 20, "stability_percent": 10000, "max_trials": 10, "timeout": 120}


@pytest.fixture(scope="session")
def pa() -> perf_analyzer_install.PerfAnalyzer:
    started = time.monotonic()
    try:
        installed = perf_analyzer_install.ensure()
    except perf_analyzer_install.InstallError as exc:
        pytest.skip(f"perf_analyzer is not installable here: {exc}")
    print(f"perf_analyzer ready in {time.monotonic() - started:.1f} s")
    return installed


@pytest.fixture(scope="module")
def auth_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("pa-server"), model_store,
                 ["digits=digits.mar", "digits_onnx=digits_onnx.mar"], auth=True)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key_header(auth_server: Server) -> dict[str, str]:
    keys = json.loads((auth_server.root / "work" / "key_file.json").read_text())
    return {"authorization": f"Bearer {keys['inference']['key']}"}


def check_pass(result: perf_analyzer.PassResult, batch: int) -> None:
    assert result.client("Concurrency") == 2
    assert result.client("Inferences/Second") > 0
    # the server side of the report: from /stats (or ModelStatistics) before and after
    assert "Server:" in result.stdout, result.stdout
    assert result.server_us["request"] > 0 and result.server_us["compute_infer"] > 0
    assert f"Batch size: {batch}" in result.stdout


def test_http_pass_with_the_key_header(pa, auth_server, key_header, tmp_path):
    result = perf_analyzer.run_pass(
        pa, "digits_onnx", "http", auth_server.inference.removeprefix("http://"), SHAPE,
        batch=2, concurrency=2, csv_path=tmp_path / "http.csv", headers=key_header, **SHORT)
    check_pass(result, batch=2)


def test_grpc_pass_with_the_key_header(pa, auth_server, key_header, tmp_path):
    result = perf_analyzer.run_pass(
        pa, "digits", "grpc", auth_server.grpc, SHAPE, batch=4, concurrency=2,
        csv_path=tmp_path / "grpc.csv", headers=key_header, **SHORT)
    check_pass(result, batch=4)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_without_the_key_perf_analyzer_is_refused(pa, auth_server, protocol, tmp_path):
    url = (auth_server.inference.removeprefix("http://") if protocol == "http"
           else auth_server.grpc)
    with pytest.raises(perf_analyzer.PassFailed) as info:
        perf_analyzer.run_pass(pa, "digits", protocol, url, SHAPE, batch=1, concurrency=2,
                               csv_path=tmp_path / "refused.csv", **SHORT)
    assert "failed to get model metadata" in str(info.value)


def test_grpc_config_says_what_perf_analyzer_reads(auth_server, key_header):
    """Over gRPC the config's dynamic_batching and instance_group come through Triton's own
    protobuf messages (tritonclient's), field for field."""
    client = grpcclient.InferenceServerClient(auth_server.grpc)
    try:
        config = client.get_model_config("digits", headers=key_header, as_json=True)["config"]
        stats = client.get_inference_statistics("digits", headers=key_header, as_json=True)
    finally:
        client.close()
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "5000"}  # uint64
    assert config["instance_group"] == [{"name": "digits", "count": 1, "kind": "KIND_CPU"}]
    (entry,) = stats["model_stats"]
    assert entry["version"] == "1"  # the archive's 1.0, as a Triton version number
