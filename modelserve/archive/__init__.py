"""Model archives in TorchServe's layout: files flat at the root plus ``MAR-INF/MANIFEST.json``,
as a zip (``.mar``, deflated or stored), a ``.tar.gz``, or a plain directory."""

from modelserve.archive.manifest import Manifest
from modelserve.archive.reader import Archive, ArchiveError, open_archive
from modelserve.archive.writer import create_archive

__all__ = ["Archive", "ArchiveError", "Manifest", "create_archive", "open_archive"]
