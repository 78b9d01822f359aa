r"""TorchServe's own end-to-end pytest files, unchanged, against TorchServe 0.12 and modelserve.

The test files come from a pytorch/serve v0.12.0 checkout given by ``--serve-src`` (nothing of
TorchServe's is kept in this repository). For each target the checkout is copied to
``OUT/<target>/serve`` and each file runs there as TorchServe's CI runs it (``cd test/pytest;
pytest FILE``), one file at a time, with its harness unchanged: ``test_utils`` → ``ts/launcher.py``
runs the ``torchserve`` found first on PATH, waits for "Model server started", and talks to ports
8080/8081/8082.

- ``--target torchserve``: the real ``torchserve==0.12.0`` (Java 17) from the e2e venv.
- ``--target modelserve``: a ``torchserve`` shim first on PATH that runs
  ``python -m modelserve torchserve "$@"`` (modelserve installed editable from this checkout).

Nothing can be downloaded here, so ``ts_scripts/marsgen.py``'s downloads are replaced: before
the run every archive of ``ts_scripts/mar_config.json`` is built with torch-model-archiver into
``OUT/mars`` — ``mnist.mar`` exactly as mar_config says (the checkout's ``mnist.py`` and
``mnist_handler.py``; ``mnist_cnn.pt``, a git-LFS file missing from the mirror, is written with
seeded random weights into the copy, as is the stateful example's ``model_cnn.pt``), every
other one from a tiny plain-torch image classifier (3x224x224 -> 1000 classes) with the
handler mar_config names — and a pytest plugin
(``-p ts_e2e_plugin``, written into ``OUT/plugin``) makes ``marsgen.generate_mars`` copy those
archives instead of downloading. ``gen_mar`` itself (symlinks into the harness's model store,
``$TMPDIR/workspace/model_store``) is TorchServe's. Each target runs with its own ``TMPDIR``
(``--tmpdir``/<target>, default /tmp/ts_e2e/<target>), so that TorchServe's pid file
(``$TMPDIR/.model_server.pid``, which ``modelserve torchserve`` shares) and ``/tmp/workspace`` are
not those of anyone else's server on this machine.

The e2e venv (``--venv``, default bench/out/ts-e2e-venv) holds torch 2.13.0 (CPU), torchvision
and captum (TorchServe's image handlers import them), pytest, torch-model-archiver 0.12.0,
torchserve 0.12.0 and modelserve. PyPI's torchvision is a CUDA build whose ops cannot load beside
the CPU torch; a .pth hook in the venv (``TORCHVISION_HOOK``) lets its pure-Python transforms
import, for both targets alike.

Usage (TorchServe needs Java 17; the venv installs from the local wheel cache and PyPI):

    python3 bench/ts_e2e.py --serve-src /tmp/ts-src --target both
    python3 bench/ts_e2e.py --serve-src /tmp/ts-src --target modelserve --files test_snapshot.py

A checkout whose mirror lacks some (LFS) blobs, so that ``git archive`` fails, can be extracted
with ``--serve-git /path/to/mirror.git`` (tag ``--serve-ref``, default v0.12.0; missing blobs are
skipped) into ``--serve-src``.

TorchServe's gRPC test files (``test_gRPC_*.py``) import client stubs that its CI generates
first (``ts_scripts/regression_utils.py``: grpc_tools.protoc over the checkout's
``frontend/server/src/main/resources/proto/`` into ``test/pytest``). The same is done here for
each target's copy, with grpcio-tools and googleapis-common-protos (``google/rpc/status.proto``,
which ``inference.proto`` imports; TorchServe takes it from a googleapis submodule the mirror
lacks) installed into the e2e venv, pinned to this repository's lock so that client and
modelserve share one grpcio/protobuf. ``test_gRPC_inference_api.py``'s stateful model runs with
``install_py_dep_per_model=true``: both servers pip-install its ``lru-dict`` from the index.

Results: ``OUT/<target>/<file>.xml`` (JUnit) and ``.log``, ``OUT/<target>/results.json`` (kept
between runs, so one target can be rerun alone), ``OUT/summary.json`` and the printed table.
Ports 8080-8082 and 7070-7071 must be free; a leftover server is stopped with the target's own
``torchserve --stop``, nothing else is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GRPC_FILES = [
    "test_gRPC_inference_api.py",
    "test_gRPC_management_apis.py",
    "test_gRPC_model_control.py",
    "test_gRPC_allowed_urls.py",
    "test_gRPC_token_authorization.py",
]
DEFAULT_FILES = [
    "test_model_control_mode.py",
    "test_snapshot.py",
    "test_token_authorization.py",
    "test_metrics.py",
    "test_auto_recover.py",
    "test_handler_traceback_logging.py",
    "test_startup_timeout.py",
    "test_url_path.py",
    "test_example_stateful_sequence_batching_http.py",
    "test_example_stateful_sequence_continuous_batching_http.py",
    "test_send_intermediate_prediction_response.py",
    "test_model_config.py",
    "test_model_custom_dependencies.py",
    "test_onnx.py",
    "test_torch_compile.py",
    "test_parallelism.py",
    *GRPC_FILES,
]
PORTS = (8080, 8081, 8082, 7070, 7071)
TORCH = "torch==2.13.0"
BASE_PACKAGES = [TORCH, "torchvision", "pytest", "pytest-timeout", "requests", "orjson",
                 "psutil", "torch-model-archiver==0.12.0"]
# TorchServe's worker imports captum (vision_handler) and torchvision (image_classifier)
TORCHSERVE_PACKAGES = ["torchserve==0.12.0", "captum"]
# the gRPC test files' client stubs: protoc (grpcio-tools) and google/rpc/status.proto
GOOGLEAPIS_PROTOS = "googleapis-common-protos==1.76.0"  # protobuf 7 accepted

TINY_MODEL_PY = '''\
import torch
from torch import nn


class TinyClassifier(nn.Module):
    """3x224x224 -> 1000 logits: stands in for the torchvision models mar_config downloads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=8)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)
'''

PLUGIN_PY = '''\
"""pytest plugin (bench/ts_e2e.py): marsgen.generate_mars copies prebuilt local archives."""
import os
import shutil
import sys

_REPO_ROOT = os.environ["TS_E2E_REPO_ROOT"]
_PREBUILT = os.environ["TS_E2E_PREBUILT_MARS"]
if _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)  # as test_utils does, so that this is the same module

from ts_scripts import marsgen as _mg  # noqa: E402


def _generate_mars(mar_config=None, model_store_dir=None):
    model_store_dir = model_store_dir or _mg.MODEL_STORE_DIR
    print(f"## ts_e2e: local archives from {_PREBUILT} into {model_store_dir}")
    _mg.mar_set.clear()
    os.makedirs(model_store_dir, exist_ok=True)
    for name in sorted(os.listdir(_PREBUILT)):
        if name.endswith(".mar"):
            shutil.copy(os.path.join(_PREBUILT, name), os.path.join(model_store_dir, name))
            _mg.mar_set.add(name)


_mg.generate_mars = _generate_mars
'''

# PyPI's torchvision (the only one here) is a CUDA build: its _C.so cannot load beside the CPU
# torch wheel, and its __init__ then fails registering fake kernels for torchvision::nms/qnms.
# TorchServe's image_classifier and the mnist example handler import torchvision.transforms
# (pure Python), so the e2e venv defines those two schemas (no kernels) just before torchvision
# is first imported, where _C.so cannot load. Loaded by a .pth; torch is imported only then.
TORCHVISION_HOOK = '''\
import importlib.abc
import importlib.util
import sys


class _TorchvisionSchemas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import ctypes
        import os
        import torch
        spec = importlib.util.find_spec("torchvision")
        so = os.path.join(os.path.dirname(spec.origin), "_C.so")
        try:
            ctypes.CDLL(so)
        except OSError:
            global _LIB
            _LIB = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                _LIB.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return spec


sys.meta_path.insert(0, _TorchvisionSchemas())
'''

SHIM = '#!/bin/sh\nexec "{python}" -m modelserve torchserve "$@"\n'


def log(msg: str) -> None:
    print(f"[ts_e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the checkout


def extract_serve(git_dir: Path, ref: str, dest: Path) -> None:
    """The tree of ``ref`` into ``dest``, skipping blobs the mirror lacks (LFS weights)."""
    if (dest / "test" / "pytest" / "test_utils.py").exists():
        return
    tree = subprocess.run(["git", "-C", str(git_dir), "ls-tree", "-r", "-z", ref],
                          check=True, capture_output=True).stdout.split(b"\0")
    missing = []
    for entry in filter(None, tree):
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        if kind != "blob":
            continue
        target = dest / path.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(["git", "-C", str(git_dir), "cat-file", "blob", sha],
                              capture_output=True)
        if blob.returncode:
            missing.append(path.decode())
        elif mode == "120000":
            os.symlink(blob.stdout.decode(), target)
        else:
            target.write_bytes(blob.stdout)
            if mode == "100755":
                target.chmod(0o755)
    log(f"extracted {ref} into {dest}; blobs missing from the mirror: {missing}")


def copy_checkout(src: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "model_store_gen", "logs", "__pycache__"))


# weights the tests archive (git LFS, absent from the mirror), by the module whose Net they fit:
# mnist.mar (mar_config) and the stateful example (test_gRPC_inference_api's StreamPredictions2)
LFS_WEIGHTS = [("examples/image_classifier/mnist/mnist_cnn.pt", "mnist"),
               ("examples/stateful/model_cnn.pt", "model")]


def write_lfs_weights(python: Path, serve: Path) -> None:
    """Seeded random weights for the checkout's own ``Net`` where LFS weights are missing."""
    for rel, module in LFS_WEIGHTS:
        pt = serve / rel
        if pt.exists() and pt.stat().st_size > 1000:
            continue
        code = (f"import sys, torch; sys.path.insert(0, sys.argv[1]); import {module}; "
                f"torch.manual_seed(0); torch.save({module}.Net().state_dict(), sys.argv[2])")
        subprocess.run([str(python), "-c", code, str(pt.parent), str(pt)], check=True)


# ---------------------------------------------------------------- the venv


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                   check=True)


def locked(name: str, lock: str) -> str:
    """``name==version`` as requirements/<lock> pins it."""
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split()[0]
    sys.exit(f"{name} is not pinned in requirements/{lock}")


def grpc_packages() -> list[str]:
    """grpcio and protobuf as modelserve's lock pins them, the grpcio-tools made for them."""
    return [locked("grpcio", "serve.txt"), locked("protobuf", "serve.txt"),
            locked("grpcio-tools", "dev.txt"), GOOGLEAPIS_PROTOS]


def ensure_venv(venv: Path, targets: list[str]) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp = venv / ".ts_e2e_installed"
    done = set(stamp.read_text().split()) if stamp.exists() else set()
    if "base" not in done:
        pip(venv, *BASE_PACKAGES)
        done.add("base")
    if "torchserve" in targets and "torchserve" not in done:
        pip(venv, TORCH, *TORCHSERVE_PACKAGES)
        done.add("torchserve")
    if "modelserve" in targets and "modelserve" not in done:
        pip(venv, TORCH, "-r", str(REPO / "requirements" / "serve.txt"))
        pip(venv, "--no-deps", "-e", str(REPO))
        done.add("modelserve")
    if "grpc" not in done:
        pip(venv, *grpc_packages())
        done.add("grpc")
    stamp.write_text("\n".join(sorted(done)) + "\n")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "ts_e2e_torchvision_hook.py").write_text(TORCHVISION_HOOK)
    (site / "ts_e2e_torchvision_hook.pth").write_text("import ts_e2e_torchvision_hook\n")
    check = subprocess.run([str(python), "-c", "from torchvision import transforms"],
                           capture_output=True, text=True)
    if check.returncode:
        sys.exit(f"torchvision does not import in {venv}:\n{check.stderr[-2000:]}")
    return python


def generate_grpc_stubs(python: Path, serve: Path) -> None:
    """inference/management ``_pb2(_grpc).py`` into the copy's test/pytest, as TorchServe's CI
    does before its pytest run; ``google/rpc/status.proto`` from googleapis-common-protos."""
    protos = serve / "frontend" / "server" / "src" / "main" / "resources" / "proto"
    googleapis = subprocess.run(
        [str(python), "-c", "import google.rpc.status_pb2 as m, pathlib; "
         "print(pathlib.Path(m.__file__).parents[2])"],
        check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([str(python), "-m", "grpc_tools.protoc", f"-I{googleapis}",
                    f"--proto_path={protos}", "--python_out=.", "--grpc_python_out=.",
                    str(protos / "inference.proto"), str(protos / "management.proto")],
                   check=True, cwd=serve / "test" / "pytest")


# ---------------------------------------------------------------- the archives


def build_mars(python: Path, serve: Path, out: Path) -> Path:
    """Every archive of mar_config.json, built locally, into out/mars."""
    mars = out / "mars"
    config = json.loads((serve / "ts_scripts" / "mar_config.json").read_text())
    if mars.is_dir() and all((mars / f"{m['model_name']}.mar").exists() for m in config):
        return mars
    mars.mkdir(parents=True, exist_ok=True)
    work = out / "tiny_model"
    work.mkdir(parents=True, exist_ok=True)
    (work / "tiny_model.py").write_text(TINY_MODEL_PY)
    subprocess.run([str(python), "-c",
                    "import sys, torch; sys.path.insert(0, sys.argv[1]); import tiny_model; "
                    "torch.manual_seed(0); "
                    "torch.save(tiny_model.TinyClassifier().state_dict(), sys.argv[2])",
                    str(work), str(work / "tiny_model.pt")], check=True)
    archiver = python.parent / "torch-model-archiver"
    index = serve / "examples" / "image_classifier" / "index_to_name.json"
    for model in config:
        cmd = [str(archiver), "--model-name", model["model_name"], "--version",
               model["version"], "--handler", model["handler"], "--export-path", str(mars),
               "--force"]
        if model.get("serialized_file_local"):  # mnist: the checkout's own files
            cmd += ["--model-file", model["model_file"],
                    "--serialized-file", model["serialized_file_local"]]
        else:  # a download in mar_config: the tiny local classifier instead
            cmd += ["--model-file", str(work / "tiny_model.py"),
                    "--serialized-file", str(work / "tiny_model.pt"),
                    "--extra-files", str(index)]
        subprocess.run(cmd, check=True, cwd=serve)
    log(f"built {len(config)} archives into {mars}")
    return mars


# ---------------------------------------------------------------- running


def busy_ports() -> list[int]:
    listing = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    busy = set()
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            port = fields[3].rsplit(":", 1)[-1]
            if port.isdigit() and int(port) in PORTS:
                busy.add(int(port))
    return sorted(busy)


def target_env(target: str, python: Path, out: Path, serve: Path, mars: Path,
               tmpdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TS_", "LOG_LOCATION", "METRICS_LOCATION", "PYTHON",
                                "VIRTUAL_ENV"))}
    path = [str(python.parent)]
    if target == "modelserve":
        shim_dir = out / target / "bin"
        shim_dir.mkdir(parents=True, exist_ok=True)
        shim = shim_dir / "torchserve"
        shim.write_text(SHIM.format(python=python))
        shim.chmod(0o755)
        path.insert(0, str(shim_dir))
    env["PATH"] = os.pathsep.join(path + [os.environ.get("PATH", "/usr/bin:/bin")])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["PYTHONPATH"] = str(out / "plugin")
    env["TS_E2E_REPO_ROOT"] = str(serve)
    env["TS_E2E_PREBUILT_MARS"] = str(mars)
    env["PYTHONUNBUFFERED"] = "1"
    env["TMPDIR"] = str(tmpdir)
    return env


def stop_server(env: dict, cwd: Path) -> None:
    subprocess.run(["torchserve", "--stop", "--foreground"], env=env, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def wait_ports_free(env: dict, cwd: Path) -> None:
    for _ in range(2):
        busy = busy_ports()
        if not busy:
            return
        log(f"ports {busy} busy: torchserve --stop")
        stop_server(env, cwd)
        time.sleep(3)
    busy = busy_ports()
    if busy:
        sys.exit(f"ports {busy} are still busy (not ours to kill): stopping")


def parse_junit(xml: Path) -> dict[str, dict]:
    cases: dict[str, dict] = {}
    if not xml.exists():
        return cases
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                text = element.get("message") or element.text or ""
                message = next((line.strip() for line in text.splitlines() if line.strip()),
                               "")
                if tag == "error" and case.find("failure") is not None:
                    continue  # a teardown error after a failure: keep the failure
                break
        cases[name] = {"outcome": outcome, "message": message[:300],
                       "time": float(case.get("time") or 0)}
    return cases


def run_file(target: str, test_file: str, python: Path, env: dict, serve: Path, out: Path,
             timeout: int, file_timeout: int) -> dict:
    cwd = serve / "test" / "pytest"
    results = out / target
    stem = Path(test_file).stem
    xml, logfile = results / f"{stem}.xml", results / f"{stem}.log"
    xml.unlink(missing_ok=True)
    wait_ports_free(env, cwd)
    (results / "tmp").mkdir(parents=True, exist_ok=True)
    # -c: an empty ini, or pytest would take this repository's pyproject.toml (OUT lies under
    # it); --rootdir: the checkout, as pytest picks it there (setup.py) in TorchServe's CI
    cmd = [str(python), "-m", "pytest", test_file, "-c", str(out / "plugin" / "pytest.ini"),
           f"--rootdir={serve}", "-p", "ts_e2e_plugin", "-p", "no:cacheprovider",
           "--timeout", str(timeout), "-rA", "-v",
           f"--junitxml={xml}", "-o", "junit_family=xunit2",
           f"--basetemp={results / 'tmp' / stem}"]
    log(f"{target}: {test_file}")
    start = time.monotonic()
    with open(logfile, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=file_timeout)
        except subprocess.TimeoutExpired:
            log(f"{test_file} ran past {file_timeout}s: ending that pytest (ours)")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    stop_server(env, cwd)
    cases = parse_junit(xml)
    counts = {o: sum(c["outcome"] == o for c in cases.values())
              for o in ("passed", "failed", "error", "skipped")}
    log(f"{target}: {test_file} rc={rc} {counts} in {time.monotonic() - start:.0f}s")
    return {"rc": rc, "seconds": round(time.monotonic() - start), "cases": cases}


# ---------------------------------------------------------------- the report


def report(summary: dict, files: list[str]) -> str:
    ts, ms = summary.get("torchserve", {}), summary.get("modelserve", {})
    lines = [f"{'file':38} {'TS passed':>10} {'MS passed':>10} {'MS of TS':>9}"]
    total = [0, 0, 0, 0, 0]
    regressions = []
    for f in files:
        tc = ts.get(f, {}).get("cases", {})
        mc = ms.get(f, {}).get("cases", {})
        ts_pass = {n for n, c in tc.items() if c["outcome"] == "passed"}
        ms_pass = {n for n, c in mc.items() if c["outcome"] == "passed"}
        both = ts_pass & ms_pass
        row = [len(ts_pass), len(tc), len(ms_pass), len(mc), len(both)]
        total = [a + b for a, b in zip(total, row)]
        lines.append(f"{f:38} {row[0]:>4}/{row[1]:<5} {row[2]:>4}/{row[3]:<5} {row[4]:>5}/{row[0]}")
        if f not in ms:
            continue  # not run for modelserve (yet)
        for name in sorted(ts_pass - ms_pass):
            case = mc.get(name, {"outcome": "missing", "message": ""})
            regressions.append(f"  {f}::{name} [{case['outcome']}] {case['message'][:160]}")
    lines.append(f"{'total':38} {total[0]:>4}/{total[1]:<5} {total[2]:>4}/{total[3]:<5} "
                 f"{total[4]:>5}/{total[0]}")
    lines.append("")
    lines.append(f"Of the {total[0]} cases TorchServe 0.12 passes here, modelserve passes "
                 f"{total[4]}.")
    if regressions:
        lines.append("TorchServe passes, modelserve does not:")
        lines += regressions
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve-src", type=Path, required=True,
                   help="a pytorch/serve v0.12.0 checkout (only read)")
    p.add_argument("--serve-git", type=Path,
                   help="extract --serve-ref from this git mirror into --serve-src first")
    p.add_argument("--serve-ref", default="v0.12.0")
    p.add_argument("--target", choices=["modelserve", "torchserve", "both"], default="both")
    p.add_argument("--files", nargs="+", default=DEFAULT_FILES)
    p.add_argument("--out", type=Path, default=HERE / "out" / "ts-e2e")
    p.add_argument("--venv", type=Path, default=HERE / "out" / "ts-e2e-venv")
    p.add_argument("--tmpdir", type=Path, default=Path("/tmp/ts_e2e"),
                   help="TMPDIR of each target's run is TMPDIR/<target> (pid file, workspace)")
    p.add_argument("--timeout", type=int, default=300, help="per test case (pytest-timeout)")
    p.add_argument("--file-timeout", type=int, default=3600, help="per test file")
    p.add_argument("--report-only", action="store_true",
                   help="print the table from OUT/*/results.json, run nothing")
    args = p.parse_args()

    out = args.out.resolve()
    targets = ["torchserve", "modelserve"] if args.target == "both" else [args.target]
    summary = {}
    for t in ("torchserve", "modelserve"):
        saved = out / t / "results.json"
        summary[t] = json.loads(saved.read_text()) if saved.exists() else {}
    if args.report_only:
        print(report(summary, args.files))
        return 0

    src = args.serve_src.resolve()
    if args.serve_git:
        extract_serve(args.serve_git, args.serve_ref, src)
    if not (src / "test" / "pytest" / "test_utils.py").exists():
        sys.exit(f"{src} is not a pytorch/serve checkout (no test/pytest/test_utils.py)")
    if shutil.which("java") is None and "torchserve" in targets:
        sys.exit("TorchServe needs Java 17 on PATH")

    python = ensure_venv(args.venv.resolve(), targets)
    (out / "plugin").mkdir(parents=True, exist_ok=True)
    (out / "plugin" / "ts_e2e_plugin.py").write_text(PLUGIN_PY)
    (out / "plugin" / "pytest.ini").write_text("[pytest]\n")

    mars = None
    for target in targets:
        serve = out / target / "serve"
        copy_checkout(src, serve)
        write_lfs_weights(python, serve)
        generate_grpc_stubs(python, serve)
        if mars is None:
            mars = build_mars(python, serve, out)
        tmpdir = args.tmpdir / target
        (tmpdir / "workspace" / "model_store").mkdir(parents=True, exist_ok=True)
        env = target_env(target, python, out, serve, mars, tmpdir)
        results = summary[target]
        for test_file in args.files:
            results[test_file] = run_file(target, test_file, python, env, serve, out,
                                          args.timeout, args.file_timeout)
            (out / target / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report(summary, args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
