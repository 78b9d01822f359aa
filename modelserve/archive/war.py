"""Workflow archives (``.war``), as torch-workflow-archiver 0.2 writes them: the spec YAML, the
handler file and any extra files flat at the root of a zip, plus ``WAR-INF/MANIFEST.json``
(``{"createdOn", "workflow": {"workflowName", "specFile", "handler"}, "archiverVersion"}``).

Archives are untrusted, as model archives are: the zip is extracted with the same checks
(no absolute paths, ``..`` or links; size and ratio limits), and the files the manifest names
must lie inside it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelserve.archive.reader import ArchiveError, Limits, _extract_zip, check_member

WAR_MANIFEST_PATH = "WAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class WorkflowArchive:
    """An extracted ``.war``: its folder and what its manifest names."""

    source: Path
    folder: Path
    name: str
    spec_file: str
    handler: str | None  # the handler file's name; None: the archive has none
    manifest: dict[str, Any]

    @property
    def spec_path(self) -> Path:
        return self.folder / self.spec_file


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, or TorchServe's empty one when the archive has none."""
    path = folder / WAR_MANIFEST_PATH
    if not path.is_file():
        return {"workflow": {}}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"invalid {WAR_MANIFEST_PATH}: {exc}") from None
    if not isinstance(doc, dict):
        raise ArchiveError(f"invalid {WAR_MANIFEST_PATH}: not a JSON object")
    return doc


def _file_entry(folder: Path, workflow: dict[str, Any], key: str) -> str | None:
    """A file the manifest names (``specFile``, ``handler``): inside the archive, present."""
    value = workflow.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ArchiveError(f"invalid {WAR_MANIFEST_PATH}: {key} is empty")
    check_member(value)
    if not (folder / value).is_file():
        raise ArchiveError(f"{key} {value!r} is not in the workflow archive")
    return value


def _check(folder: Path, doc: dict[str, Any], name: str | None) -> tuple[str, str, str | None]:
    """(name, spec file, handler file) after TorchServe's WorkflowArchive.validate, in its
    order and words."""
    workflow = doc.get("workflow")
    if not isinstance(workflow, dict):
        raise ArchiveError("Missing Workflow entry in manifest file.")
    name = name or workflow.get("workflowName")
    if not isinstance(name, str) or not name:
        raise ArchiveError("Workflow name is not defined.")
    if doc.get("archiverVersion") is None:
        raise ArchiveError("Workflow archive version is not defined.")
    if doc.get("createdOn") is None:
        raise ArchiveError("Workflow archive createdOn is not defined.")
    spec = _file_entry(folder, workflow, "specFile")
    if spec is None:
        raise ArchiveError("Workflow specification file (specFile) is not defined.")
    return name, spec, _file_entry(folder, workflow, "handler")


def open_war(source: Path, into: Path, limits: Limits | None = None,
             name: str | None = None) -> WorkflowArchive:
    """Extract ``source`` into a new folder under ``into`` and check its manifest; ``name``
    replaces the manifest's workflowName (``POST /workflows?workflow_name=``). The caller
    removes the folder (``remove``) when the workflow goes."""
    if not zipfile.is_zipfile(source):
        raise ArchiveError(f"{source.name} is not a zip archive (.war)")
    into.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=into, prefix=f"{source.stem[:60]}-"))
    try:
        _extract_zip(source, folder, limits or Limits())
        doc = _read_manifest(folder)
        workflow_name, spec, handler = _check(folder, doc, name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return WorkflowArchive(source, folder, workflow_name, spec, handler, doc)


def remove(war: WorkflowArchive) -> None:
    """Delete the extracted folder (the archive itself stays where it was)."""
    shutil.rmtree(war.folder, ignore_errors=True)
