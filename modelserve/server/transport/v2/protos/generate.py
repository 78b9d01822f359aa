"""Regenerate ``grpc_service_pb2.py`` / ``grpc_service_pb2_grpc.py`` from the .proto.

``python -m modelserve.server.transport.v2.protos.generate [OUT_DIR]``: the proto path is
the repository root, so the modules import each other by their full package path; OUT_DIR
(default: the repository root, i.e. in place) lets tests compare fresh output with the
committed files.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = Path(__file__).with_name("grpc_service.proto")
ROOT = next(p for p in PROTO.parents if not (p / "__init__.py").exists())  # repo root


def generate(out_dir: Path = ROOT) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    rel = PROTO.relative_to(ROOT)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_dir}",
                        f"--grpc_python_out={out_dir}", str(rel)])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    stem = out_dir / rel.parent / rel.stem
    return [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
