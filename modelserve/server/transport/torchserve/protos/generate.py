"""Regenerate the TorchServe gRPC modules from TorchServe's own .proto files.

``python -m modelserve.server.transport.torchserve.protos.generate [OUT_DIR]`` writes
``inference_pb2*.py`` and ``management_pb2*.py`` (proto path: the repository root, so they
import each other by their full package path, as the OIP v2 stubs do) and ``status_pb2.py``
(googleapis' ``google/rpc/status.proto``, which ``inference.proto`` imports). OUT_DIR
(default: the repository root, i.e. in place) lets tests compare fresh output with the
committed files.

The one change made to protoc's output: ``inference_pb2.py`` imports ``google.rpc.Status``
through ``google_rpc.py`` (googleapis-common-protos' module when installed, else the
``status_pb2.py`` made here) rather than from a ``google.rpc`` package modelserve does not
depend on. The .proto files themselves are used as TorchServe ships them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = next(p for p in HERE.parents if not (p / "__init__.py").exists())  # repo root
PROTOS = ("inference.proto", "management.proto")
STATUS = Path("google/rpc/status.proto")
PACKAGE = ".".join(HERE.relative_to(ROOT).parts)
GENERATED_IMPORT = "from google.rpc import status_pb2 as google_dot_rpc_dot_status__pb2"
OWN_IMPORT = f"from {PACKAGE}.google_rpc import status_pb2 as google_dot_rpc_dot_status__pb2"


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = Path(protoc.__file__).with_name("_proto")  # google/protobuf/*.proto
    code = protoc.main(["grpc_tools.protoc", *args, f"-I{well_known}"])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


def generate(out_dir: Path = ROOT) -> list[Path]:
    rel = HERE.relative_to(ROOT)
    target = out_dir / rel
    target.mkdir(parents=True, exist_ok=True)
    _protoc([f"-I{ROOT}", f"-I{HERE}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
             *(str(rel / name) for name in PROTOS)])
    # google/rpc/status.proto keeps its own name in the descriptor pool (inference.proto
    # depends on it by that name); its module lands here as status_pb2.py
    status = target / "status_pb2.py"
    with tempfile.TemporaryDirectory() as scratch:
        _protoc([f"-I{HERE}", f"--python_out={scratch}", str(STATUS)])
        status.write_text((Path(scratch) / STATUS.parent / "status_pb2.py").read_text())
    inference = target / "inference_pb2.py"
    text = inference.read_text()
    if GENERATED_IMPORT not in text:
        raise RuntimeError(f"{inference}: protoc no longer writes {GENERATED_IMPORT!r}")
    inference.write_text(text.replace(GENERATED_IMPORT, OWN_IMPORT))
    stems = [Path(name).stem for name in PROTOS]
    return [*(target / f"{s}_pb2{k}.py" for s in stems for k in ("", "_grpc")), status]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
