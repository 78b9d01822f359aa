"""Open an archive (zip ``.mar``, ``.tar.gz``, or directory) into a model directory.

Archives are untrusted: members with absolute paths, ``..`` components or links are refused,
and nothing is written outside the archive's own extraction directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import ValidationError

from modelserve.archive.manifest import MANIFEST_PATH, Manifest


class ArchiveError(ValueError):
    """The archive is missing, unreadable, unsafe or has a bad manifest."""


@dataclass
class Archive:
    source: Path
    model_dir: Path
    manifest: Manifest
    model_yaml_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.model.model_name

    @property
    def version(self) -> str:
        return self.manifest.model.model_version


def _check_member(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"unsafe path in archive: {name!r}")


def _extract_zip(source: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                _check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ArchiveError(f"symbolic link in archive: {info.filename!r}")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{source.name} is not a valid zip archive: {exc}") from None


def _extract_tar(source: Path, dest: Path) -> None:
    try:
        with tarfile.open(source, "r:*") as tf:
            for member in tf.getmembers():
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"links and devices are not allowed: {member.name!r}")
            tf.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise ArchiveError(f"{source.name} is not a valid tar archive: {exc}") from None


def _find_root(extracted: Path) -> Path:
    """TorchServe's tgz archives wrap the files in one top-level folder."""
    if (extracted / MANIFEST_PATH).is_file():
        return extracted
    children = [p for p in extracted.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / MANIFEST_PATH).is_file():
        return children[0]
    raise ArchiveError(f"archive has no {MANIFEST_PATH}")


_HASH_CHUNK = 1 << 20


def _content_hash(source: Path) -> str:
    """sha256 of the file, read in 1 MiB chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with source.open("rb") as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _cache_key(source: Path, workdir: Path) -> str:
    """The archive's content hash, so a replaced archive is never served from a stale
    extraction, whatever its mtime says. Hashing GBs takes seconds, so a sidecar per path
    remembers the hash for an unchanged (path, size, mtime)."""
    stat = source.stat()
    path = str(source.resolve())
    stamp = [path, stat.st_size, stat.st_mtime_ns]
    sidecar = workdir / "models" / ".hashes" / hashlib.sha256(path.encode()).hexdigest()[:32]
    try:
        saved = json.loads(sidecar.read_text())
        if saved["stamp"] == stamp:
            return str(saved["sha256"])[:16]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = _content_hash(source)
    if source.stat().st_mtime_ns == stat.st_mtime_ns:  # not rewritten while we read it
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
        os.replace(tmp, sidecar)
    return digest[:16]


def _extract(source: Path, workdir: Path) -> Path:
    """Extract once per archive content; reuse the extraction afterwards."""
    target = workdir / "models" / f"{source.stem}-{_cache_key(source, workdir)}"
    if target.is_dir():
        return _find_root(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        if zipfile.is_zipfile(source):
            _extract_zip(source, tmp)
        elif tarfile.is_tarfile(source):
            _extract_tar(source, tmp)
        else:
            raise ArchiveError(f"{source.name} is neither a zip (.mar) nor a tar.gz archive")
        _find_root(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _find_root(target)


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_PATH
    if not path.is_file():
        raise ArchiveError(f"archive has no {MANIFEST_PATH}")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"invalid {MANIFEST_PATH}: {exc}") from None


def open_archive(source: Path, workdir: Path) -> Archive:
    """Extract (if needed) and read an archive's manifest and model-config.yaml."""
    if not source.exists():
        raise FileNotFoundError(f"archive not found: {source}")
    model_dir = source if source.is_dir() else _extract(source, workdir)
    manifest = read_manifest(model_dir)
    config: dict[str, Any] = {}
    if manifest.model.config_file:
        config_path = model_dir / manifest.model.config_file
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ArchiveError(f"cannot read {manifest.model.config_file}: {exc}") from None
        if not isinstance(config, dict):
            raise ArchiveError(f"{manifest.model.config_file} must be a YAML mapping")
    return Archive(source=source, model_dir=model_dir, manifest=manifest, model_yaml_config=config)
