"""Crafted archives and URLs over the management API: each is a 400 (or 404) with a message,
nothing is written outside the model's own directory, and the server keeps serving."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

GOOD_MANIFEST = {"createdOn": "01/01/2024 00:00:00", "runtime": "python",
                 "archiverVersion": "0.12.0",
                 "model": {"modelName": "evil", "modelVersion": "1.0", "handler": "h.py"}}
HANDLER = b"def handle(data, context):\n    return data\n"


def manifest(**model) -> bytes:
    return json.dumps({**GOOD_MANIFEST, "model": {**GOOD_MANIFEST["model"], **model}}).encode()


def zip_archive(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None,
                compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def tar_archive(path: Path, members: list[tuple[str, bytes]],
                links: list[tuple[str, bytes, str]] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind, target in links:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return path


BASE = [("MAR-INF/MANIFEST.json", manifest()), ("h.py", HANDLER)]


def build_attacks(store: Path) -> dict[str, Path]:
    a = {
        "zip_traversal": zip_archive(store / "zip_traversal.mar",
                                     [*BASE, ("../../escaped.txt", b"x")]),
        "zip_absolute": zip_archive(store / "zip_absolute.mar",
                                    [*BASE, ("/tmp/escaped-abs.txt", b"x")]),
        "zip_backslash": zip_archive(store / "zip_backslash.mar",
                                     [*BASE, ("..\\..\\escaped.txt", b"x")]),
        "zip_symlink": zip_archive(store / "zip_symlink.mar", BASE, symlink="link"),
        "tar_traversal": tar_archive(store / "tar_traversal.tar.gz",
                                     [*BASE, ("../escaped.txt", b"x")]),
        "tar_symlink": tar_archive(store / "tar_symlink.tar.gz", BASE,
                                   [("link", tarfile.SYMTYPE, "/etc/passwd")]),
        "tar_hardlink": tar_archive(store / "tar_hardlink.tar.gz", BASE,
                                    [("hard", tarfile.LNKTYPE, "/etc/passwd")]),
        # 70 MiB of zeros: ~70 KiB compressed; the ratio limit trips at 64 MiB out
        "zip_bomb": zip_archive(store / "zip_bomb.mar",
                                [*BASE, ("weights.bin", bytes(70 << 20))]),
        "tar_bomb": tar_archive(store / "tar_bomb.tar.gz",
                                [*BASE, ("weights.bin", bytes(70 << 20))]),
        # incompressible, over the server's max_archive_size of 80 MiB
        "too_big": zip_archive(store / "too_big.mar", [*BASE, ("w.bin", os.urandom(81 << 20))],
                               compression=zipfile.ZIP_STORED),
        "bad_json": zip_archive(store / "bad_json.mar",
                                [("MAR-INF/MANIFEST.json", b"{nope"), ("h.py", HANDLER)]),
        "no_model": zip_archive(store / "no_model.mar",
                                [("MAR-INF/MANIFEST.json", b'{"runtime": "python"}')]),
        "no_manifest": zip_archive(store / "no_manifest.mar", [("h.py", HANDLER)]),
        "handler_outside": zip_archive(store / "handler_outside.mar", [
            ("MAR-INF/MANIFEST.json", manifest(handler="../../../tmp/evil.py"))]),
        "serialized_abs": zip_archive(store / "serialized_abs.mar", [
            ("MAR-INF/MANIFEST.json", manifest(serializedFile="/etc/passwd")), ("h.py", HANDLER)]),
        "not_an_archive": store / "not_an_archive.mar",
    }
    a["not_an_archive"].write_bytes(b"just text")
    return a


@pytest.fixture(scope="module")
def attack_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("attacks")
    store = root / "store"
    store.mkdir()
    (store / "echo.mar").write_bytes((model_store / "echo.mar").read_bytes())
    archives = build_attacks(store)
    srv = Server(root, store, ["echo.mar"], extra_config={"max_archive_size": 80 << 20})
    srv.start()
    yield srv, archives
    assert not srv.stop()


@pytest.mark.parametrize("name,pattern", [
    ("zip_traversal", "unsafe path"),
    ("zip_absolute", "unsafe path"),
    ("zip_backslash", "unsafe path"),
    ("zip_symlink", "symbolic link"),
    ("tar_traversal", "unsafe path"),
    ("tar_symlink", "links and devices"),
    ("tar_hardlink", "links and devices"),
    ("zip_bomb", "max_archive_ratio"),
    ("tar_bomb", "max_archive_ratio"),
    ("too_big", "max_archive_size"),
    ("bad_json", "invalid MAR-INF/MANIFEST.json"),
    ("no_model", "invalid MAR-INF/MANIFEST.json"),
    ("no_manifest", "has no MAR-INF/MANIFEST.json"),
    ("handler_outside", "points outside the archive"),
    ("serialized_abs", "points outside the archive"),
    ("not_an_archive", "neither a zip"),
])
def test_crafted_archive_is_400_with_a_message(attack_server, name, pattern):
    srv, archives = attack_server
    r = httpx.post(f"{srv.management}/models", params={"url": archives[name].name})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "BadRequestException"
    assert re.search(pattern, body["message"]), body["message"]
    work = srv.root / "work"
    # nothing escaped: no file outside the server's own directories, no half extraction
    assert not list(srv.root.rglob("escaped*")) and not Path("/tmp/escaped-abs.txt").exists()
    assert not list((work / "models").glob(".extract-*"))
    if name.startswith(("zip_", "tar_", "too_")):  # refused while extracting: no leftovers
        assert not list((work / "models").glob(f"{archives[name].name.split('.')[0]}-*"))
    assert httpx.get(f"{srv.management}/models/evil").status_code == 404
    assert httpx.post(f"{srv.inference}/predictions/echo", json=1).status_code == 200


@pytest.mark.parametrize("url,status,pattern", [
    ("../../etc/passwd", 400, "outside the model store"),
    ("/etc/passwd", 400, "outside the model store"),
    ("file:///etc/passwd", 400, "outside the model store"),
    ("http://127.0.0.1:1/evil.mar", 400, "allowed URL"),
    ("ftp://example.com/x.mar", 400, "unsupported URL scheme"),
    ("missing.mar", 404, "not found"),
])
def test_urls_outside_the_store_are_refused(attack_server, url, status, pattern):
    srv, _ = attack_server
    r = httpx.post(f"{srv.management}/models", params={"url": url})
    assert r.status_code == status and pattern in r.json()["message"], r.text


def test_handler_override_outside_the_archive_is_refused(attack_server):
    srv, _ = attack_server
    r = httpx.post(f"{srv.management}/models",
                   params={"url": "echo.mar", "model_name": "x", "handler": "/tmp/evil.py"})
    assert r.status_code == 400 and "inside the archive" in r.json()["message"]
