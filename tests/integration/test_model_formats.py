"""Model formats: TorchScript, eager (model file + state_dict), torch.export, AOTInductor and
torch.compile all serve the eager model's answers through a real server.

A tiny conv net keeps the AOTInductor compile and the torch.compile warm-up to seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from modelserve.archive import create_archive, open_archive, reader
from modelserve.handlers import runtimes
from modelserve.handlers.base_handler import compile_options
from tests.conftest import Server, wait_logged

TINY_MODEL = textwrap.dedent('''
    """A tiny conv net for 1x8x8 inputs."""
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

        def forward(self, x):
            return self.head(self.features(x))
''')
SHAPE = [1, 8, 8]
FORMATS = {"ts": "torchscript", "eager": "eager", "ep": "exported_program", "aoti": "aoti",
           "compile": "eager"}


def _config(path: Path, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({
        "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 100,
        "startupTimeout": 300, "handler": {"input_shape": SHAPE, "top_k": 0}, **extra}))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny model in every format, archived into a store of its own."""
    src = tmp_path_factory.mktemp("tiny-src")
    store = tmp_path_factory.mktemp("tiny-store")
    model_file = src / "tiny_model.py"
    model_file.write_text(TINY_MODEL)
    torch.manual_seed(0)
    model = runtimes.model_class(model_file)().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    example = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    torch.save(model.state_dict(), src / "tiny.pth")
    torch.jit.save(torch.jit.trace(model, example), str(src / "tiny.pt"))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(src / "tiny.pt2"))

    plain = _config(src / "plain.yaml")
    common = {"version": "1.0", "handler": "tensor_handler", "export_path": store}
    create_archive(model_name="tiny_ts", serialized_file=src / "tiny.pt", config_file=plain,
                   **common)
    create_archive(model_name="tiny_eager", serialized_file=src / "tiny.pth",
                   model_file=model_file, config_file=plain, **common)
    create_archive(model_name="tiny_ep", serialized_file=src / "tiny.pt2", config_file=plain,
                   **common)
    compiled = _config(src / "compile.yaml", pt2={"compile": {"enable": True,
                                                              "backend": "inductor"}})
    create_archive(model_name="tiny_compile", serialized_file=src / "tiny.pth",
                   model_file=model_file, config_file=compiled, **common)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "modelserve", "archive", "--model-name", "tiny_aoti",
         "--handler", "tensor_handler", "--serialized-file", str(src / "tiny.pt2"),
         "--config-file", str(plain), "--export-path", str(store), "--aot-compile"],
        check=True, capture_output=True, timeout=600,
    )
    aoti_s = time.perf_counter() - start
    inputs = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(inputs)
    return {"src": src, "store": store, "model": model, "inputs": inputs,
            "expected": expected, "aoti_s": aoti_s}


@pytest.fixture(scope="module")
def tiny_server(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("formats-server"), tiny["store"],
                 [f"tiny_{name}.mar" for name in FORMATS])
    srv.start(timeout=300)
    yield srv
    survivors = srv.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


def _predict_all(server: Server, model: str, inputs: torch.Tensor) -> torch.Tensor:
    """Every input at once from parallel clients, so the batcher forms batches of several."""
    def one(row: torch.Tensor) -> list[float]:
        r = httpx.post(f"{server.inference}/predictions/{model}", json=row.flatten().tolist(),
                       timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(len(inputs)) as pool:
        return torch.tensor(list(pool.map(one, inputs)))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_serves_the_eager_answers(tiny, tiny_server, fmt):
    served = _predict_all(tiny_server, f"tiny_{fmt}", tiny["inputs"])
    torch.testing.assert_close(served, tiny["expected"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["ep", "aoti"])
def test_exported_formats_take_any_batch_size(tiny, tmp_path, fmt):
    """The batch dimension was exported dynamic: every batch size the batcher sends runs."""
    archive = open_archive(tiny["store"] / f"tiny_{fmt}.mar", tmp_path)
    model = runtimes.load_model(archive.model_dir / "tiny.pt2", torch.device("cpu"))
    assert runtimes.input_shape(model) == SHAPE  # from the program / the package metadata
    with torch.inference_mode():
        for size in (1, 3, 8):
            torch.testing.assert_close(model(tiny["inputs"][:size]), tiny["expected"][:size],
                                       atol=1e-4, rtol=1e-4)


def test_compile_is_warmed_up_before_ready_and_timed(tiny, tiny_server):
    # TorchServe's line too (test_torch_compile.py looks for it in model_log.log)
    wait_logged(tiny_server, "Compiled model with backend inductor\n",
                "compiled and warmed up in")
    start = time.perf_counter()
    _predict_all(tiny_server, "tiny_compile", tiny["inputs"][:1])
    assert time.perf_counter() - start < 2, "the first request paid for compiling"
    metrics = httpx.get(f"{tiny_server.metrics}/metrics").text
    line = next(x for x in metrics.splitlines()
                if x.startswith("CompileTime{") and 'ModelName="tiny_compile"' in x)
    assert float(line.rsplit(" ", 1)[1]) > 0
    print(f"\naoti compile {tiny['aoti_s']:.1f} s; torch.compile warm-up {line.rsplit()[-1]} ms")


def test_formats_are_detected_by_content(tiny, tmp_path):
    src = tiny["src"]
    assert runtimes.detect_format(src / "tiny.pt") == "torchscript"
    assert runtimes.detect_format(src / "tiny.pt2") == "exported_program"
    assert runtimes.detect_format(src / "tiny.pth", src / "tiny_model.py") == "eager"
    with zipfile.ZipFile(tiny["store"] / "tiny_aoti.mar") as zf:
        zf.extract("tiny.pt2", tmp_path)
    assert runtimes.detect_format(tmp_path / "tiny.pt2") == "aoti"
    renamed = tmp_path / "exported.pt"  # the name does not decide, the contents do
    renamed.write_bytes((src / "tiny.pt2").read_bytes())
    assert runtimes.detect_format(renamed) == "exported_program"
    with pytest.raises(ValueError, match="state_dict.*--model-file"):
        runtimes.detect_format(src / "tiny.pth")


def test_aoti_package_refuses_a_device_it_was_not_built_for():
    cuda = {"AOTI_DEVICE_KEY": "cuda"}
    with pytest.raises(RuntimeError, match="compiled for cuda.*--aot-compile"):
        runtimes._check_aoti_host("m.pt2", cuda, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="compiled for sparc"):
        runtimes._check_aoti_host("m.pt2", {"AOTI_MACHINE": "sparc"}, torch.device("cpu"))
    cpu = {"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "DEFAULT"}
    assert runtimes._check_aoti_host("m.pt2", cpu, torch.device("cuda:0")).type == "cpu"


def test_model_file_needs_exactly_one_module_class(tmp_path):
    helper = tmp_path / "helper_model.py"
    helper.write_text(TINY_MODEL + "\n\nclass Labels:\n    names = ['a']\n")
    assert runtimes.model_class(helper).__name__ == "TinyNet"
    two = tmp_path / "two_models.py"
    two.write_text(TINY_MODEL + "\n\nclass Other(nn.Module):\n    pass\n")
    with pytest.raises(ValueError, match="exactly one torch.nn.Module class; found Other, TinyNet"):
        runtimes.model_class(two)


@pytest.mark.parametrize(("pt2", "expected"), [
    ({"compile": {"enable": True, "backend": "inductor", "mode": "reduce-overhead"}},
     {"backend": "inductor", "mode": "reduce-overhead"}),
    ({"compile": {"enable": True}}, {}),
    ({"compile": {"enable": False, "backend": "inductor"}}, None),
    ("inductor", {"backend": "inductor"}),  # TorchServe's older forms
    ({"backend": "inductor", "mode": "max-autotune"},
     {"backend": "inductor", "mode": "max-autotune"}),
    ({"export": {"aot_compile": True}}, None),
    ({"compile": {"enable": True, "backend": "no-such-backend"}}, None),
])
def test_compile_options_read_torchserve_pt2_key(pt2, expected):
    assert compile_options({"pt2": pt2}) == expected
    assert compile_options({}) is None


def test_resnet_formats_match_resnet(tmp_path):
    """The example builder's cheap formats give resnet.mar's answers (AOTI and compile are
    the same code paths as the tiny model's, and slow for ResNet-18)."""
    from modelserve.examples import resnet
    from modelserve.examples.formats import build_resnet_formats

    paths = build_resnet_formats(tmp_path / "store", formats=("ep", "eager"))
    x = torch.rand(3, *resnet.INPUT_SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = resnet.build()(x)
        for path in paths:
            archive = open_archive(path, tmp_path / "work")
            model = archive.manifest.model
            loaded = runtimes.load_model(
                archive.model_dir / model.serialized_file, torch.device("cpu"),
                model_file=archive.model_dir / model.model_file if model.model_file else None)
            torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)
            if archive.name == "resnet_ep":
                assert runtimes.input_shape(loaded) == resnet.INPUT_SHAPE


def test_cache_key_is_the_content_hash(tmp_path, monkeypatch):
    work = tmp_path / "work"
    first, second = tmp_path / "a.mar", tmp_path / "b.mar"
    first.write_bytes(os.urandom(3 << 20))
    second.write_bytes(first.read_bytes())
    os.utime(second, ns=(1, 1))
    assert reader._cache_key(first, work) == reader._cache_key(second, work)
    hashed = []
    real = reader._content_hash
    monkeypatch.setattr(reader, "_content_hash", lambda p: hashed.append(p) or real(p))
    key = reader._cache_key(first, work)
    assert hashed == []  # unchanged (path, size, mtime): the sidecar answers
    data = first.read_bytes()
    first.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # always a different first byte
    os.utime(first, ns=(2, 2))
    assert reader._cache_key(first, work) != key and hashed == [first]
    sidecars = list((work / "models" / ".hashes").iterdir())
    assert len(sidecars) == 2 and json.loads(sidecars[0].read_text())["sha256"]


def test_no_archive_directory_loads_in_place(tiny, tmp_path):
    directory = create_archive(
        model_name="tiny_dir", version="1.0", handler="tensor_handler",
        serialized_file=tiny["src"] / "tiny.pt2", export_path=tmp_path,
        archive_format="no-archive")
    assert open_archive(directory, tmp_path / "work").model_dir == directory
    assert not (tmp_path / "work" / "models").exists()


def test_a_static_batch_of_one_is_served_with_batch_size_one(tiny, tmp_path):
    """A .pt2 exported without a dynamic batch, archived with batchSize 4: the worker reports
    that its model takes batches of 1, the server batches so (describe says batchSize 1), and
    a burst of parallel requests all succeed instead of failing batch by batch."""
    src = tmp_path / "src"
    src.mkdir()
    program = torch.export.export(tiny["model"], (tiny["inputs"][:1],))  # static batch 1
    torch.export.save(program, str(src / "static.pt2"))
    create_archive(model_name="tiny_static", version="1.0", handler="tensor_handler",
                   serialized_file=src / "static.pt2", config_file=_config(src / "c.yaml"),
                   export_path=tmp_path / "store")
    srv = Server(tmp_path / "root", tmp_path / "store", ["tiny_static.mar"])
    srv.root.mkdir()
    srv.start(timeout=300)
    try:
        [desc] = httpx.get(f"{srv.management}/models/tiny_static").json()
        assert desc["batchSize"] == 1
        wait_logged(srv, "takes batches of at most 1")
        served = _predict_all(srv, "tiny_static", tiny["inputs"])
        torch.testing.assert_close(served, tiny["expected"], atol=1e-4, rtol=1e-4)
    finally:
        assert not srv.stop()
