"""Archive format: TorchServe's layout and manifest, every format, and unsafe archives."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelserve.archive import ArchiveError, create_archive, open_archive
from modelserve.archive.writer import ArchiveExistsError


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    (src / "assets").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "handler.py").write_text("def handle(data, ctx):\n    return data\n")
    (src / "index_to_name.json").write_text('{"0": "cat"}')
    (src / "assets" / "vocab.txt").write_text("a b c")
    (src / "model-config.yaml").write_text("batchSize: 4\nhandler:\n  top_k: 2\n")
    return {"src": src, "out": tmp_path / "out", "work": tmp_path / "work"}


@pytest.mark.parametrize(
    ("fmt", "suffix"), [("default", ".mar"), ("zip-store", ".mar"), ("tgz", ".tar.gz"),
                        ("no-archive", "")])
def test_every_format_round_trips(inputs, fmt, suffix):
    src = inputs["src"]
    path = create_archive(
        model_name="m", version="2.0", handler=str(src / "handler.py:handle"),
        serialized_file=src / "model.pt", config_file=src / "model-config.yaml",
        extra_files=f"{src / 'index_to_name.json'},{src / 'assets'}",
        export_path=inputs["out"], archive_format=fmt,
    )
    assert path.name == f"m{suffix}"
    archive = open_archive(path, inputs["work"])
    model = archive.manifest.model
    assert (model.model_name, model.model_version) == ("m", "2.0")
    assert model.handler == "handler.py:handle"
    assert model.serialized_file == "model.pt" and model.config_file == "model-config.yaml"
    assert archive.model_yaml_config == {"batchSize": 4, "handler": {"top_k": 2}}
    # files sit flat at the root; a directory's contents are copied, not the directory
    assert (archive.model_dir / "model.pt").read_bytes() == b"weights"
    assert (archive.model_dir / "vocab.txt").is_file()
    assert (archive.model_dir / "index_to_name.json").is_file()


def test_manifest_fields_match_torchserve(inputs):
    src = inputs["src"]
    path = create_archive(model_name="m", version="1.0", handler="tensor_handler",
                          serialized_file=src / "model.pt", export_path=inputs["out"])
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        assert zf.getinfo("model.pt").compress_type == zipfile.ZIP_DEFLATED
    assert list(manifest) == ["createdOn", "runtime", "model", "archiverVersion"]
    assert manifest["runtime"] == "python" and manifest["archiverVersion"] == "0.12.0"
    assert manifest["model"] == {"modelName": "m", "serializedFile": "model.pt",
                                 "handler": "tensor_handler", "modelVersion": "1.0"}


def test_zip_store_is_uncompressed(inputs):
    path = create_archive(model_name="m", version="1.0", handler="tensor_handler",
                          serialized_file=inputs["src"] / "model.pt",
                          export_path=inputs["out"], archive_format="zip-store")
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("model.pt").compress_type == zipfile.ZIP_STORED


def test_existing_archive_needs_force(inputs):
    kwargs = dict(model_name="m", version="1.0", handler="tensor_handler",
                  serialized_file=inputs["src"] / "model.pt", export_path=inputs["out"])
    create_archive(**kwargs)
    with pytest.raises(ArchiveExistsError, match="--force"):
        create_archive(**kwargs)
    create_archive(**kwargs, force=True)


def test_missing_inputs_are_reported(inputs):
    with pytest.raises(FileNotFoundError, match="serialized-file"):
        create_archive(model_name="m", version="1", handler="tensor_handler",
                       serialized_file=inputs["src"] / "nope.pt", export_path=inputs["out"])
    with pytest.raises(FileNotFoundError, match="extra file"):
        create_archive(model_name="m", version="1", handler="tensor_handler",
                       extra_files="nope.json", export_path=inputs["out"])


def test_extraction_is_cached(inputs):
    path = create_archive(model_name="m", version="1.0", handler="tensor_handler",
                          serialized_file=inputs["src"] / "model.pt", export_path=inputs["out"])
    first = open_archive(path, inputs["work"]).model_dir
    assert open_archive(path, inputs["work"]).model_dir == first


def _zip_with(tmp_path: Path, name: str, member: str) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
            {"createdOn": "x", "runtime": "python",
             "model": {"modelName": "m", "handler": "h", "modelVersion": "1"}}))
        zf.writestr(member, b"x")
    return path


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/path.txt", "a/../../b.txt"])
def test_zip_path_traversal_is_refused(tmp_path, member):
    with pytest.raises(ArchiveError, match="unsafe path"):
        open_archive(_zip_with(tmp_path, "evil.mar", member), tmp_path / "work")
    assert not (tmp_path / "escape.txt").exists()


def test_tar_symlink_is_refused(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ArchiveError, match="links"):
        open_archive(path, tmp_path / "work")


@pytest.mark.parametrize(
    ("manifest", "pattern"),
    [(None, "no MAR-INF"), (b"{not json", "invalid"), (b'{"runtime": "python"}', "invalid")],
)
def test_bad_manifest_is_an_archive_error(tmp_path, manifest, pattern):
    path = tmp_path / "bad.mar"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.pt", b"x")
        if manifest is not None:
            zf.writestr("MAR-INF/MANIFEST.json", manifest)
    with pytest.raises(ArchiveError, match=pattern):
        open_archive(path, tmp_path / "work")


def test_not_an_archive(tmp_path):
    path = tmp_path / "junk.mar"
    path.write_bytes(io.BytesIO(b"hello").getvalue())
    with pytest.raises(ArchiveError, match="neither a zip"):
        open_archive(path, tmp_path / "work")
