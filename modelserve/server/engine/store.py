"""The model store as the server sees it: which entries are models."""

from __future__ import annotations

from pathlib import Path

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".zip")


def store_models(store: Path) -> list[Path]:
    """The model store's models, by name: archives, and directories with a ``MAR-INF``
    (models kept unpacked)."""
    if not store.is_dir():
        return []
    return [path for path in sorted(store.iterdir())
            if path.name.endswith(ARCHIVE_SUFFIXES) or (path / "MAR-INF").is_dir()]
