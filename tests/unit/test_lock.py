"""The locks (requirements/*.txt, `make lock`) against pyproject.toml, the committed gRPC stubs
and the installed environment: `make` installs the same versions on any day."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked(name: str = "dev") -> dict[str, Version]:
    """``name==version`` lines of a lock, by canonical name."""
    pins = {}
    for line in (LOCKS / f"{name}.txt").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line):
            pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def requirements() -> list[Requirement]:
    """Every requirement pyproject.toml names, runtime and extras, but the project itself."""
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "modelserve"]


def test_every_requirement_is_locked_within_its_range():
    """Editing pyproject.toml without `make lock` fails here (torch is installed apart)."""
    pins = locked()
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            assert name not in pins, "torch is installed as $(TORCH), not from the lock"
            continue
        assert name in pins, f"{req.name} is not in requirements/dev.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside {req.specifier}: run `make lock`")


def test_serve_lock_is_the_dev_lock_less_the_dev_tools():
    """`make serve` and `make test` agree on every package they both install."""
    serve, dev = locked("serve"), locked("dev")
    assert serve and set(serve) <= set(dev)
    assert {n: v for n, v in serve.items() if dev[n] != v} == {}
    assert "pytest" not in serve and "scikit-learn" in serve


def test_stub_generator_is_locked_and_is_the_runtime_floor():
    """The committed stubs refuse a grpcio/protobuf older than their generator's: the lock
    pins that generator (requirements/constraints.in), and pyproject.toml's floors are its
    versions, so neither a new grpcio-tools release nor a user's older grpcio breaks them.
    Every committed stub: OIP v2's and TorchServe's inference and management services."""
    grpc_stubs = sorted(ROOT.joinpath("modelserve").rglob("*_pb2_grpc.py"))
    pb2s = sorted(ROOT.joinpath("modelserve").rglob("*_pb2.py"))
    assert len(grpc_stubs) >= 3 and len(pb2s) > len(grpc_stubs)  # status_pb2 has no service
    floors = {canonicalize_name(r.name): r.specifier for r in requirements()}
    for stub in grpc_stubs:
        generated = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", stub.read_text())[1]
        assert locked()["grpcio-tools"] == Version(generated), f"{stub}: make lock && make protos"
        assert str(floors["grpcio"]) == f">={generated}", stub
    for pb2 in pb2s:
        gencode = re.search(r"# Protobuf Python Version: (\S+)", pb2.read_text())[1]
        assert str(floors["protobuf"]) == f">={gencode}", f"{pb2}: make protos"


@pytest.mark.skipif(not sys.prefix.startswith(str(ROOT)),
                    reason="runs in the project's own .venv, the one `make` installs")
def test_the_venv_holds_exactly_the_locked_versions():
    """What `make test` installed is what the lock says, every package of it."""
    wrong = {}
    for name, version in locked().items():
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong[name] = (str(version), None)
            continue
        if have != version:
            wrong[name] = (str(version), str(have))
    assert wrong == {}, "the venv differs from requirements/dev.txt: make clean test"
