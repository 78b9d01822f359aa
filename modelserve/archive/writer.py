"""Build an archive as torch-model-archiver does: files flat at the root + MANIFEST.json."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from modelserve.archive.manifest import (
    MANIFEST_PATH,
    Manifest,
    check_model_name,
    check_model_version,
)

FORMATS = ("default", "tgz", "no-archive", "zip-store")
_SKIP_DIRS = {"__pycache__"}


class ArchiveExistsError(FileExistsError):
    """The target exists and ``force`` was not given."""


def _target(export_path: Path, model_name: str, archive_format: str) -> Path:
    if archive_format == "no-archive":
        return export_path / model_name
    if archive_format == "tgz":
        return export_path / f"{model_name}.tar.gz"
    return export_path / f"{model_name}.mar"


def _copy_into(src: Path, staging: Path) -> str:
    """Copy a file, or a directory's contents, flat into the staging directory."""
    if src.is_dir():
        for item in src.iterdir():
            if item.name.startswith(".") or item.name in _SKIP_DIRS:
                continue
            dest = staging / item.name
            if item.is_dir():
                shutil.copytree(item, dest, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".*", "__pycache__", "*.pyc"))
            else:
                shutil.copy2(item, dest)
        return src.name
    shutil.copy2(src, staging / src.name)
    return src.name


def _expand_extra_files(extra_files: str | None) -> list[Path]:
    paths: list[Path] = []
    for item in filter(None, (s.strip() for s in (extra_files or "").split(","))):
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches or not all(Path(m).exists() for m in matches):
            raise FileNotFoundError(f"extra file not found: {item}")
        paths.extend(Path(m) for m in matches)
    return paths


def _aot_compile(program: Path, staging: Path) -> str:
    """Compile the ExportedProgram into an AOTInductor package of the same name in staging."""
    from modelserve.handlers.runtimes import aoti_compile  # torch: only when asked for

    name = f"{program.stem}.pt2"
    aoti_compile(program, staging / name)
    return name


def _write(staging: Path, target: Path, archive_format: str) -> None:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    if archive_format == "no-archive":
        shutil.copytree(staging, target)
    elif archive_format == "tgz":
        with tarfile.open(target, "w:gz") as tf:
            tf.add(staging, arcname=target.name.removesuffix(".tar.gz"))
    else:
        compression = zipfile.ZIP_STORED if archive_format == "zip-store" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(target, "w", compression=compression) as zf:
            for path in files:
                zf.write(path, path.relative_to(staging).as_posix())


def create_archive(
    *,
    model_name: str,
    version: str,
    handler: str,
    serialized_file: Path | None = None,
    model_file: Path | None = None,
    extra_files: str | None = None,
    requirements_file: Path | None = None,
    config_file: Path | None = None,
    runtime: str = "python",
    export_path: Path = Path("."),
    archive_format: str = "default",
    force: bool = False,
    aot_compile: bool = False,
) -> Path:
    """Write the archive and return its path. ``handler`` is a built-in name or a .py file.

    ``aot_compile``: the serialized file is a torch.export .pt2, archived as an AOTInductor
    package compiled on (and for) this machine instead; modelserve's addition to the flags.
    """
    check_model_name(model_name)  # it names the file written
    check_model_version(version)
    if aot_compile and serialized_file is None:
        raise ValueError("--aot-compile needs a --serialized-file torch.export .pt2")
    if archive_format not in FORMATS:
        raise ValueError(f"archive format must be one of {FORMATS}, not {archive_format!r}")
    export_path.mkdir(parents=True, exist_ok=True)
    target = _target(export_path, model_name, archive_format)
    if target.exists():
        if not force:
            raise ArchiveExistsError(f"{target} already exists; use --force to overwrite")
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    with tempfile.TemporaryDirectory(prefix="modelserve-archive-") as tmp:
        staging = Path(tmp) / model_name
        staging.mkdir()
        fields: dict[str, str] = {"model_name": model_name, "model_version": version}
        for key, path in (
            ("serialized_file", serialized_file),
            ("model_file", model_file),
            ("requirements_file", requirements_file),
            ("config_file", config_file),
        ):
            if path is not None:
                if not Path(path).is_file():
                    raise FileNotFoundError(f"{key.replace('_', '-')} not found: {path}")
                if key == "serialized_file" and aot_compile:
                    fields[key] = _aot_compile(Path(path), staging)
                else:
                    fields[key] = _copy_into(Path(path), staging)
        handler_path = Path(handler.split(":", 1)[0])
        if handler_path.suffix == ".py":
            if not handler_path.is_file():
                raise FileNotFoundError(f"handler file not found: {handler_path}")
            _copy_into(handler_path, staging)
            suffix = handler[len(str(handler_path)):]
            fields["handler"] = handler_path.name + suffix
        else:
            fields["handler"] = handler
        for extra in _expand_extra_files(extra_files):
            _copy_into(extra, staging)
        manifest = Manifest.new(**fields)
        manifest.runtime = runtime
        (staging / MANIFEST_PATH).parent.mkdir()
        (staging / MANIFEST_PATH).write_text(json.dumps(manifest.to_json_dict(), indent=2))
        _write(staging, target, archive_format)
    os.utime(target)
    return target
