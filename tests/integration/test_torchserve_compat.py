"""TorchServe drop-in: archives from torch-model-archiver 0.12, handler files that import
``ts.*``, and the management API driven the way TorchServe's documentation's curls do."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import subprocess
import sys
import tarfile
import textwrap
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from modelserve.cli import DIGIT_ZERO
from tests.conftest import Server, child_pids, wait_logged

ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]
FORMATS = ["default", "tgz", "no-archive", "zip-store"]

TS_HANDLER = textwrap.dedent('''
    """A handler written for TorchServe: only ts.* imports, as users have them."""
    import json

    import torch
    import msdeptest  # from the archive's requirements file
    from ts.context import Context
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes
    from ts.torch_handler.base_handler import BaseHandler
    from ts.utils.util import PredictionException, map_class_to_label


    class DigitsHandler(BaseHandler):
        def initialize(self, context: Context):
            super().initialize(context)
            self.scale = context.model_yaml_config["custom"]["scale"]
            self.props = sorted(context.system_properties)
            self.calls = context.metrics.add_metric_to_cache(
                "DigitsBatches", "count", ["ModelName"], MetricTypes.COUNTER)

        def preprocess(self, data):
            rows = []
            for row in data:
                body = row.get("data") or row.get("body")
                if isinstance(body, (bytes, bytearray)):
                    body = json.loads(body)
                if body == "teapot":
                    raise PredictionException("I am a teapot", 418)
                rows.append(torch.tensor(body, dtype=torch.float32).reshape(1, 8, 8))
            return torch.stack(rows) * self.scale

        def postprocess(self, data):
            probs = torch.softmax(data, 1)
            labelled = map_class_to_label(probs.tolist(), self.mapping)
            self.calls.add_or_update(1, [self.context.model_name])
            self.context.metrics.add_counter(
                "DigitsAnswered", len(labelled), None, [Dimension("Kind", "digit")])
            out = []
            for i, scores in enumerate(labelled):
                label = max(scores, key=scores.get)
                out.append({"label": label, "p": scores[label], "dep": msdeptest.VALUE,
                            "tag": self.context.get_request_header(i, "x-tag"),
                            "props": self.props, "version": self.manifest["model"]["modelVersion"]})
            return out

        def describe_handle(self):
            return json.dumps({"classes": 10, "kind": "digits"})

        def explain_handle(self, data_preprocess, raw_data):
            return [{"explained": True} for _ in raw_data]
''')


def _wheel(directory: Path) -> Path:
    """A tiny pure-Python wheel, so the requirements test needs no package index."""
    files = {
        "msdeptest/__init__.py": b"VALUE = 42\n",
        "msdeptest-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: msdeptest\n"
                                             b"Version: 0.1\n",
        "msdeptest-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\n"
                                          b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("msdeptest-0.1.dist-info/RECORD,,")
    path = directory / "msdeptest-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("msdeptest-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def sources(example_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("ts-src")
    with zipfile.ZipFile(example_store / "digits.mar") as zf:
        zf.extract("digits.pt", src)
        zf.extract("index_to_name.json", src)
    (src / "digits_handler.py").write_text(TS_HANDLER)
    (src / "assets").mkdir()
    (src / "assets" / "notes.txt").write_text("extra file inside a directory")
    (src / "requirements.txt").write_text(f"{_wheel(src)}\n")
    (src / "model-config.yaml").write_text(yaml.safe_dump({
        "minWorkers": 1, "maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 7,
        "responseTimeout": 33, "deviceType": "cpu", "custom": {"scale": 1.0},
    }))
    return {"src": src}


def torch_model_archiver(sources: dict[str, Path], export: Path, fmt: str, name: str = "tsdigits",
                         version: str = "1.0", archiver: list[str] = ARCHIVER) -> None:
    src = sources["src"]
    export.mkdir(parents=True, exist_ok=True)
    subprocess.run([
        *archiver, "--model-name", name, "--version", version,
        "--serialized-file", str(src / "digits.pt"), "--handler", str(src / "digits_handler.py"),
        "--extra-files", f"{src / 'index_to_name.json'},{src / 'assets'}",
        "--requirements-file", str(src / "requirements.txt"),
        "--config-file", str(src / "model-config.yaml"),
        "--export-path", str(export), "--archive-format", fmt, "--force",
    ], check=True, capture_output=True)


@pytest.fixture(scope="module")
def ts_store(sources, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ts-store")
    for fmt in FORMATS:
        torch_model_archiver(sources, store / fmt, fmt)
    torch_model_archiver(sources, store, "default", name="versioned", version="1.0")
    torch_model_archiver(sources, store / "v2", "default", name="versioned", version="2.0")
    return store


@pytest.fixture(scope="module")
def ts_server(ts_store: Path, tmp_path_factory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("ts-server"), ts_store, [], extra_config={
        "install_py_dep_per_model": True,
        "allowed_urls": [r"http://127\.0\.0\.1:\d+/.*"],
    })
    srv.start()
    yield srv
    assert not srv.stop()


def register(server: Server, **params) -> httpx.Response:
    return httpx.post(f"{server.management}/models", params=params, timeout=180)


ARCHIVE_PATHS = {"default": "default/tsdigits.mar", "tgz": "tgz/tsdigits.tar.gz",
                 "no-archive": "no-archive/tsdigits", "zip-store": "zip-store/tsdigits.mar"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_model_archiver_archives_serve(ts_server, fmt):
    name = f"ts_{fmt.replace('-', '_')}"
    r = register(ts_server, url=ARCHIVE_PATHS[fmt], model_name=name, initial_workers=1)
    assert r.status_code == 200, r.text
    try:
        r = httpx.post(f"{ts_server.inference}/predictions/{name}", json=DIGIT_ZERO,
                       headers={"X-Tag": fmt})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == "zero" and body["p"] > 0.9
        assert body["dep"] == 42  # the requirements file was installed for this model
        assert body["tag"] == fmt  # request headers reach the handler
        assert {"model_dir", "gpu_id", "batch_size", "server_name", "server_version",
                "limit_max_image_pixels"} <= set(body["props"])
        [desc] = httpx.get(f"{ts_server.management}/models/{name}").json()
        # model-config.yaml inside the archive is honoured
        assert (desc["batchSize"], desc["maxBatchDelay"], desc["responseTimeout"]) == (4, 7, 33)
        assert desc["maxWorkers"] == 2 and desc["deviceType"] == "cpu"
        # its requirements are installed for it alone: its worker is a fresh interpreter,
        # not forked from the zygote (whose modules it must not meet)
        assert {w["pid"] for w in desc["workers"]} <= child_pids(ts_server.proc.pid)
    finally:
        httpx.delete(f"{ts_server.management}/models/{name}", timeout=60)


def test_prediction_exception_status_and_custom_metrics(ts_server):
    assert register(ts_server, url=ARCHIVE_PATHS["default"], model_name="tsm").status_code == 200
    try:
        r = httpx.post(f"{ts_server.inference}/predictions/tsm", json="teapot")
        assert r.status_code == 418 and r.json()["message"] == "I am a teapot"
        assert httpx.post(f"{ts_server.inference}/predictions/tsm",
                          json=DIGIT_ZERO).status_code == 200
        text = httpx.get(f"{ts_server.metrics}/metrics").text
        assert re.search(r'^DigitsBatches\{.*ModelName="tsm".*\} [1-9]', text, re.M), text
        assert re.search(r'^DigitsAnswered\{.*Kind="digit".*Level="Model".*\} [1-9]', text,
                         re.M)
        assert re.search(r'^HandlerTime\{.*ModelName="tsm".*\}', text, re.M)
    finally:
        httpx.delete(f"{ts_server.management}/models/tsm", timeout=60)


def test_register_with_json_body_and_handler_override(ts_server):
    r = httpx.post(f"{ts_server.management}/models", timeout=180, json={
        "url": ARCHIVE_PATHS["zip-store"], "model_name": "tsjson", "initial_workers": 1,
        "batch_size": 2, "synchronous": True})
    assert r.status_code == 200, r.text
    try:
        [desc] = httpx.get(f"{ts_server.management}/models/tsjson").json()
        assert desc["batchSize"] == 2  # the API beats model-config.yaml
    finally:
        httpx.delete(f"{ts_server.management}/models/tsjson", timeout=60)


def test_versions_set_default_and_delete_rules(ts_server):
    m = ts_server.management
    assert register(ts_server, url="versioned.mar").status_code == 200
    assert register(ts_server, url="v2/versioned.mar").status_code == 200
    r = register(ts_server, url="v2/versioned.mar")
    assert r.status_code == 409
    assert r.json()["message"] == "Model version 2.0 is already registered for model versioned"
    try:
        assert [d["modelVersion"] for d in httpx.get(f"{m}/models/versioned/all").json()] == \
            ["1.0", "2.0"]
        predict = f"{ts_server.inference}/predictions/versioned"
        assert httpx.post(predict, json=DIGIT_ZERO).json()["version"] == "1.0"
        assert httpx.post(f"{predict}/2.0", json=DIGIT_ZERO).json()["version"] == "2.0"
        r = httpx.put(f"{m}/models/versioned/2.0/set-default")
        assert r.status_code == 200
        assert r.json()["status"] == \
            'Default version successfully updated for model "versioned" to "2.0"'
        assert httpx.post(predict, json=DIGIT_ZERO).json()["version"] == "2.0"
        r = httpx.delete(f"{m}/models/versioned/2.0")
        assert r.status_code == 403
        assert r.json()["message"] == "Cannot remove default version for model versioned"
        assert httpx.put(f"{m}/models/versioned/9.9/set-default").status_code == 404
        assert httpx.delete(f"{m}/models/versioned/1.0", timeout=60).status_code == 200
    finally:
        httpx.delete(f"{m}/models/versioned", timeout=60)
    assert httpx.get(f"{m}/models/versioned").status_code == 404


def test_describe_customized_and_explanations(ts_server):
    assert register(ts_server, url=ARCHIVE_PATHS["default"], model_name="tsx").status_code == 200
    try:
        [desc] = httpx.get(f"{ts_server.management}/models/tsx",
                           params={"customized": "true"}).json()
        assert json.loads(desc["customizedMetadata"]) == {"classes": 10, "kind": "digits"}
        r = httpx.post(f"{ts_server.inference}/explanations/tsx", json=DIGIT_ZERO)
        assert r.status_code == 200 and r.json() == {"explained": True}
        # KServe v1's explain verb reaches the same explain_handle (it was a 405)
        r = httpx.post(f"{ts_server.inference}/v1/models/tsx:explain", json=DIGIT_ZERO)
        assert r.status_code == 200 and r.json() == {"explanations": [{"explained": True}]}
    finally:
        httpx.delete(f"{ts_server.management}/models/tsx", timeout=60)


def test_explanations_without_explain_handle_is_a_clear_error(server):
    r = httpx.post(f"{server.inference}/explanations/digits", json=DIGIT_ZERO)
    assert r.status_code == 501
    assert "does not support explanations" in r.json()["message"]
    r = httpx.post(f"{server.inference}/v1/models/digits:explain", json=DIGIT_ZERO)
    assert r.status_code == 501
    assert "does not support explanations" in r.json()["error"]


def test_register_from_an_allowed_http_url(ts_server, ts_store):
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a: None})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(ts_store)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/default/tsdigits.mar"
        r = register(ts_server, url=url, model_name="tsurl")
        assert r.status_code == 200, r.text
        assert httpx.post(f"{ts_server.inference}/predictions/tsurl",
                          json=DIGIT_ZERO).json()["label"] == "zero"
        missing = f"http://127.0.0.1:{httpd.server_address[1]}/nope.mar"
        r = register(ts_server, url=missing, model_name="tsmissing")
        assert r.status_code == 400 and "Failed to download" in r.json()["message"]
        r = register(ts_server, url="http://10.1.2.3/x.mar")
        assert r.status_code == 400 and "allowed URL" in r.json()["message"]
    finally:
        httpx.delete(f"{ts_server.management}/models/tsurl", timeout=60)
        httpd.shutdown()


@pytest.mark.parametrize("port", ["inference", "management"])
def test_options_root_returns_the_openapi_description(ts_server, port):
    base = getattr(ts_server, port)
    r = httpx.options(f"{base}/")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    assert spec == httpx.get(f"{base}/api-description").json()
    assert "/models" in spec["paths"] if port == "management" else "/ping" in spec["paths"]


def _contents(path: Path) -> dict[str, bytes]:
    """Archive members (any format) by path relative to the model root."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes()
                for p in path.rglob("*") if p.is_file()}
    if path.suffix == ".mar":
        with zipfile.ZipFile(path) as zf:
            return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    with tarfile.open(path) as tf:
        return {m.name.split("/", 1)[1]: tf.extractfile(m).read()
                for m in tf.getmembers() if m.isfile()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_modelserve_archive_writes_what_torch_model_archiver_writes(sources, tmp_path, fmt):
    torch_model_archiver(sources, tmp_path / "theirs", fmt)
    torch_model_archiver(sources, tmp_path / "ours", fmt,
                         archiver=[sys.executable, "-m", "modelserve", "archive"])
    suffix = {"default": "tsdigits.mar", "zip-store": "tsdigits.mar", "tgz": "tsdigits.tar.gz",
              "no-archive": "tsdigits"}[fmt]
    theirs = _contents(tmp_path / "theirs" / suffix)
    ours = _contents(tmp_path / "ours" / suffix)
    assert sorted(ours) == sorted(theirs)
    manifest_theirs = json.loads(theirs.pop("MAR-INF/MANIFEST.json"))
    manifest_ours = json.loads(ours.pop("MAR-INF/MANIFEST.json"))
    del manifest_theirs["createdOn"], manifest_ours["createdOn"]
    assert manifest_ours == manifest_theirs
    assert ours == theirs
    if fmt in ("default", "zip-store"):
        kinds = {
            side: {i.compress_type for i in zipfile.ZipFile(tmp_path / side / suffix).infolist()}
            for side in ("theirs", "ours")
        }
        assert kinds["ours"] == kinds["theirs"]


def test_start_with_torchserve_config_properties(ts_store, tmp_path):
    """`--ts-config` reads TorchServe's keys: addresses, store, load_models, models={...}."""
    srv = Server(tmp_path, ts_store, [], extra_config={"install_py_dep_per_model": True})
    props = tmp_path / "config.properties"
    props.write_text(textwrap.dedent(f"""\
        # a TorchServe config, as users have them
        inference_address=http://127.0.0.1:{srv.ports['inference']}
        management_address=http://127.0.0.1:{srv.ports['management']}
        metrics_address=http://127.0.0.1:{srv.ports['metrics']}
        model_store={ts_store}
        load_models=tsdigits=default/tsdigits.mar
        number_of_netty_threads=4
        models={{\\
          "tsdigits": {{\\
            "1.0": {{"startupTimeout": 77, "maxBatchDelay": 50}}\\
          }}\\
        }}
        """))
    srv.extra_args = ["--ts-config", str(props)]
    srv.start()
    try:
        [desc] = httpx.get(f"{srv.management}/models/tsdigits").json()
        assert desc["startupTimeout"] == 77       # from models={...}
        assert desc["maxBatchDelay"] == 7         # model-config.yaml beats models={...}
        assert httpx.post(f"{srv.inference}/predictions/tsdigits",
                          json=DIGIT_ZERO).json()["label"] == "zero"
        wait_logged(srv, "number_of_netty_threads")  # reported, not silently dropped
    finally:
        assert not srv.stop()


def test_requirements_install_into_a_relative_workdir(ts_store, tmp_path):
    """A relative workdir (`modelserve torchserve`'s default, .modelserve): pip, run in the
    archive's folder, still installs into the workdir, where the workers look (it wrote into
    the no-archive model's own folder: test_gRPC_inference_api.py's stateful example)."""
    srv = Server(tmp_path, ts_store, [],
                 extra_config={"install_py_dep_per_model": True, "workdir": "work"})
    srv.start()
    try:
        r = register(srv, url=ARCHIVE_PATHS["no-archive"], model_name="reldeps",
                     initial_workers=1)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{srv.inference}/predictions/reldeps", json=DIGIT_ZERO)
        assert r.status_code == 200, r.text
        assert r.json()["dep"] == 42
    finally:
        assert not srv.stop()
    assert list((tmp_path / "work" / "deps").glob("*/msdeptest/__init__.py"))
    assert not (ts_store / ARCHIVE_PATHS["no-archive"] / "work").exists()


def test_requirements_are_not_installed_unless_enabled(server, ts_store):
    """The session server runs with install_py_dep_per_model off (the default)."""
    import shutil

    shutil.copy(ts_store / "default" / "tsdigits.mar", server.store / "tsnodeps.mar")
    r = register(server, url="tsnodeps.mar", model_name="tsnodeps")
    assert r.status_code == 500
    assert "No module named 'msdeptest'" in r.json()["message"]
    wait_logged(server, "install_py_dep_per_model is false")
