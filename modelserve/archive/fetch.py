"""Where ``POST /models?url=`` may take an archive from: the model store, or an allowed URL.

A name or relative path resolves inside the model store. An ``http(s)://`` or ``file://`` URL,
or an absolute path outside the store, must match one of ``allowed_urls`` (full-match regexes,
as TorchServe's); http(s) archives are downloaded once into the work directory. Such a URL
with a ``..`` segment is refused first, as TorchServe refuses it (404 "Relative path is not
allowed"): ``allowed_urls`` match the URL's text, which ``..`` would lead elsewhere.

A symbolic link in the model store is followed wherever it points, as TorchServe does (its
test helpers link every archive into the store): whoever put it there trusts its target. A
client's path reaches through such a link only by naming it, without ``..``: otherwise what
the path resolves to must itself be in the store or match ``allowed_urls``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from modelserve.errors import BadRequestError, ModelNotFoundError

DOWNLOAD_TIMEOUT_S = 60


def _allowed(url: str, allowed_urls: list[str]) -> bool:
    return any(re.fullmatch(pattern, url) for pattern in allowed_urls)


def _download(url: str, workdir: Path) -> Path:
    name = Path(unquote(urlparse(url).path)).name or "archive.mar"
    target = workdir / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, suffix=".part")  # unique per download
    partial = Path(name)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(fd, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise BadRequestError(f"Failed to download archive from {url}: {exc}") from None
    os.replace(partial, target)
    return target


def _via_store_link(path: Path, store_paths: tuple[Path, ...]) -> bool:
    """``path`` names an entry of the store (through the operator's links) without ``..``."""
    if ".." in path.parts:
        return False
    absolute = Path(os.path.abspath(path))  # no symlink resolved: the path as named
    return any(absolute.is_relative_to(store) and absolute != store for store in store_paths)


def resolve_archive(url: str, model_store: Path, workdir: Path, allowed_urls: list[str]) -> Path:
    """The local path of the archive ``url`` names (downloading it if it is http(s))."""
    if not url:
        raise BadRequestError("Parameter url is required.")
    scheme = urlparse(url).scheme
    if scheme in ("http", "https", "file") and ".." in PurePosixPath(
            unquote(urlparse(url).path)).parts:
        raise ModelNotFoundError(f"Relative path is not allowed in url: {url}")
    if scheme in ("http", "https"):
        if not _allowed(url, allowed_urls):
            raise BadRequestError(f"Given URL {url} does not match any allowed URL(s)")
        return _download(url, workdir)
    if scheme == "file":
        path = Path(unquote(urlparse(url).path))
    elif scheme:
        raise BadRequestError(f"unsupported URL scheme '{scheme}' in {url}")
    else:
        path = Path(url)
    if "\x00" in str(path):
        raise BadRequestError("url must not contain a NUL character")
    store = model_store.resolve()
    candidate = path if path.is_absolute() else store / path
    try:
        inside = (candidate.resolve().is_relative_to(store)
                  or _via_store_link(candidate, (store, Path(os.path.abspath(model_store)))))
        if not inside and not _allowed(f"file://{candidate.resolve()}", allowed_urls):
            raise BadRequestError(
                f"{url} is outside the model store and does not match any allowed URL(s)"
            )
        exists = candidate.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise BadRequestError(f"invalid archive path {url[:200]!r}: {exc.strerror}") from None
    if not exists:
        raise ModelNotFoundError(f"Model not found in model store: {url}")
    return candidate
