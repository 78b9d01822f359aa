"""Open an archive (zip ``.mar``, ``.tar.gz``, or directory) into a model directory.

Archives are untrusted: members with absolute paths, ``..`` components or links are refused,
and nothing is written outside the archive's own extraction directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import ValidationError

from modelserve.archive.manifest import MANIFEST_PATH, Manifest
from modelserve.atomic import write_atomic


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


def check_member(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"unsafe path in archive: {name!r}")


@dataclass(frozen=True)
class Limits:
    """What one archive may expand to (settings max_archive_size / max_archive_ratio)."""

    max_size: int = 20 << 30
    max_ratio: float = 200.0
    ratio_floor: int = 64 << 20  # below this much output, no ratio is a bomb
    max_members: int = 100_000


_COPY_CHUNK = 1 << 20


class _Budget:
    """Counts bytes as they are written, so a lying header or a bomb stops the extraction."""

    def __init__(self, limits: Limits, compressed: int, name: str) -> None:
        self.limits = limits
        self.compressed = max(1, compressed)
        self.name = name
        self.total = 0

    def add(self, n: int, member: str, member_out: int, member_in: int | None) -> None:
        self.total += n
        lim = self.limits
        if self.total > lim.max_size:
            raise ArchiveError(f"{self.name} expands to more than max_archive_size "
                               f"({lim.max_size} bytes)")
        if self.total > lim.ratio_floor and self.total / self.compressed > lim.max_ratio:
            raise ArchiveError(f"{self.name} expands more than {lim.max_ratio:g} times its "
                               "size (max_archive_ratio): refusing a possible zip bomb")
        if (member_in is not None and member_out > lim.ratio_floor
                and member_out / max(1, member_in) > lim.max_ratio):
            raise ArchiveError(f"{member!r} in {self.name} expands more than "
                               f"{lim.max_ratio:g} times (max_archive_ratio)")


def _write_member(src: Any, dest: Path, root: Path, budget: _Budget, member: str,
                  member_in: int | None, declared: int | None) -> None:
    target = (root / dest).resolve()
    if not target.is_relative_to(root):
        raise ArchiveError(f"unsafe path in archive: {member!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    out = 0
    with open(target, "xb") as f:
        while chunk := src.read(_COPY_CHUNK):
            out += len(chunk)
            if declared is not None and out > declared:
                raise ArchiveError(f"{member!r} holds more bytes than its header says")
            budget.add(len(chunk), member, out, member_in)
            f.write(chunk)


def _extract_zip(source: Path, dest: Path, limits: Limits) -> None:
    budget = _Budget(limits, source.stat().st_size, source.name)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise ArchiveError(f"{source.name} has {len(infos)} members (more than "
                                   f"{limits.max_members})")
            for info in infos:
                check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ArchiveError(f"symbolic link in archive: {info.filename!r}")
            if sum(i.file_size for i in infos) > limits.max_size:
                raise ArchiveError(f"{source.name} declares more than max_archive_size "
                                   f"({limits.max_size} bytes)")
            for info in infos:
                name = info.filename.replace("\\", "/")
                if info.is_dir():
                    (root / name).mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as src:
                    _write_member(src, Path(name), root, budget, info.filename,
                                  info.compress_size, info.file_size)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{source.name} is not a valid zip archive: {exc}") from None
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        raise ArchiveError(f"{source.name}: duplicate or clashing member: {exc}") from None
    except (EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"{source.name} is corrupt or unsupported: {exc}") from None


def _extract_tar(source: Path, dest: Path, limits: Limits) -> None:
    budget = _Budget(limits, source.stat().st_size, source.name)
    root = dest.resolve()
    try:
        with tarfile.open(source, "r:*") as tf:
            count = 0
            for member in tf:  # streamed: never lists a bomb's members all at once
                count += 1
                if count > limits.max_members:
                    raise ArchiveError(f"{source.name} has more than {limits.max_members} "
                                       "members")
                check_member(member.name)
                if member.isdir():
                    (root / member.name).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise ArchiveError(f"links and devices are not allowed: {member.name!r}")
                src = tf.extractfile(member)
                assert src is not None
                _write_member(src, Path(member.name), root, budget, member.name, None,
                              member.size)
    except tarfile.TarError as exc:
        raise ArchiveError(f"{source.name} is not a valid tar archive: {exc}") from None
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        raise ArchiveError(f"{source.name}: duplicate or clashing member: {exc}") from None
    except (EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"{source.name} is corrupt: {exc}") from None


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
        write_atomic(sidecar, json.dumps({"stamp": stamp, "sha256": digest}).encode(), 0o644)
    return digest[:16]


def _extract(source: Path, workdir: Path, limits: Limits) -> Path:
    """Extract once per archive content; reuse the extraction afterwards."""
    target = workdir / "models" / f"{source.stem}-{_cache_key(source, workdir)}"
    if target.is_dir():
        return _find_root(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        if zipfile.is_zipfile(source):
            _extract_zip(source, tmp, limits)
        elif tarfile.is_tarfile(source):
            _extract_tar(source, tmp, limits)
        else:
            raise ArchiveError(f"{source.name} is neither a zip (.mar) nor a tar.gz archive")
        _find_root(tmp)
        tmp.rename(target)
    except OSError:
        if not target.is_dir():  # else another registration extracted the same content first
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _find_root(target)


def _check_manifest_paths(manifest: Manifest) -> None:
    """Files a manifest names must lie inside the archive (a handler may also be a
    built-in name or ``module:function``)."""
    m = manifest.model
    for key, value in (("handler", m.handler.split(":")[0] if m.handler else None),
                       ("serializedFile", m.serialized_file), ("modelFile", m.model_file),
                       ("requirementsFile", m.requirements_file), ("configFile", m.config_file)):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ArchiveError(f"invalid {MANIFEST_PATH}: {key} is empty")
        try:
            check_member(value)
        except ArchiveError:
            raise ArchiveError(f"invalid {MANIFEST_PATH}: {key} {value!r} points outside "
                               "the archive") from None


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_PATH
    if not path.is_file():
        raise ArchiveError(f"archive has no {MANIFEST_PATH}")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"invalid {MANIFEST_PATH}: {exc}") from None


def open_archive(source: Path, workdir: Path, limits: Limits | None = None) -> Archive:
    """Extract (if needed) and read an archive's manifest and model-config.yaml."""
    if not source.exists():
        raise FileNotFoundError(f"archive not found: {source}")
    model_dir = source if source.is_dir() else _extract(source, workdir, limits or Limits())
    manifest = read_manifest(model_dir)
    _check_manifest_paths(manifest)
    config: dict[str, Any] = {}
    if manifest.model.config_file:
        config_path = model_dir / manifest.model.config_file
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
            # the workers receive it as JSON: dates, sets, binary and cyclic aliases are
            # refused here, not when a worker is started
            json.dumps(config)
        except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError, TypeError,
                ValueError) as exc:
            raise ArchiveError(f"cannot read {manifest.model.config_file}: "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from None
        if not isinstance(config, dict):
            raise ArchiveError(f"{manifest.model.config_file} must be a YAML mapping")
    return Archive(source=source, model_dir=model_dir, manifest=manifest, model_yaml_config=config)
