"""Workflows: TorchServe 0.12's ``.war`` pipelines (``workflow/WorkflowManager.java``).

Registering a workflow opens its archive (from ``workflow_store``, else the model store, or an
allowed URL), reads its specification (``engine.workflow_spec``) and registers every DAG node
as an ordinary model named ``<workflow>__<node>`` through the DataPlane, so each has its own
batcher and worker processes: a model node from its ``.mar`` (resolved in the model store)
with the spec's batch size, batch delay and ``max-workers`` workers; a function node from the
archive's handler file (``handler.py:<node>``: TorchServe's function handler, called
``fn(None, ctx)`` once and ``fn(data, ctx)`` per batch in its own worker), one worker, batches
of one. If any node fails to register, the others are unregistered again and the answer is a
500 listing the failures. A request runs the DAG (``engine.dag``); unregistering stops the
nodes' workers. Workflows are not kept in snapshots and not restored at start (as in
TorchServe); neither are their models.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from modelserve import jsonc
from modelserve.archive import Archive, ArchiveError, Manifest
from modelserve.archive.fetch import resolve_archive
from modelserve.archive.manifest import check_model_name
from modelserve.archive.reader import Limits
from modelserve.archive.war import WorkflowArchive, open_war, remove
from modelserve.errors import BadRequestError, ConflictError, ModelNotFoundError, ModelServeError
from modelserve.server.engine.dag import run_dag
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.jobs import Result
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.engine.registry import ModelVersion
from modelserve.server.engine.streams import Stream
from modelserve.server.engine.workflow_spec import (
    InvalidWorkflowError,
    Node,
    WorkflowSpec,
    load_spec,
)

log = logging.getLogger("modelserve.workflows")


class WorkflowNotFoundError(ModelServeError):
    status = 404
    type = "WorkflowNotFoundException"


class WorkflowError(ModelServeError):
    type = "WorkflowException"


class DownloadArchiveError(BadRequestError):
    type = "DownloadArchiveException"


@dataclass
class Workflow:
    url: str  # as the registration named it
    war: WorkflowArchive
    spec: WorkflowSpec
    models: list[tuple[str, str]]  # (name, version) of the models it registered


class Workflows:
    """The registered workflows, over the DataPlane that serves their nodes."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.settings = dataplane.settings
        self._workflows: dict[str, Workflow] = {}
        self._busy: set[str] = set()  # being registered or unregistered

    @property
    def store(self) -> Path:
        return self.settings.workflow_store or self.settings.model_store

    # -- management --------------------------------------------------------------------------
    async def register(self, url: str | None, name: str | None = None,
                       response_timeout: float | None = None,
                       startup_timeout: float | None = None) -> str:
        """Register the archive at ``url`` (``name`` replaces its manifest's) and start every
        node's workers; returns TorchServe's success message."""
        if url is None:
            raise BadRequestError("Parameter url is required.")
        path = await asyncio.to_thread(self._resolve, url)
        s = self.settings
        try:
            war = await asyncio.to_thread(open_war, path, s.workdir / "workflows",
                                          Limits(s.max_archive_size, s.max_archive_ratio), name)
        except ArchiveError as exc:
            raise InvalidWorkflowError(str(exc)) from None
        try:
            spec = await asyncio.to_thread(self._read_spec, war)
            if war.name in self._workflows or war.name in self._busy:
                raise ConflictError(f"Workflow {war.name} is already registered.")
        except BaseException:
            remove(war)
            raise
        self._busy.add(war.name)
        try:
            registered = await self._register_nodes(url, war, spec, response_timeout,
                                                    startup_timeout)
            self._workflows[war.name] = Workflow(url, war, spec, registered)
        except BaseException:
            remove(war)
            raise
        finally:
            self._busy.discard(war.name)
        log.info("workflow %s registered from %s: %d nodes", war.name, url, len(spec.nodes))
        return f"Workflow {war.name} has been registered and scaled successfully."

    def _resolve(self, url: str) -> Path:
        """The local .war ``url`` names, with WorkflowArchive.downloadWorkflow's answers."""
        s = self.settings
        if ".." in url:
            raise WorkflowNotFoundError(f"Relative path is not allowed in url: {url}")
        remote = urlparse(url).scheme in ("http", "https")
        if remote and not any(re.fullmatch(p, url) for p in s.allowed_urls):
            raise WorkflowNotFoundError(f"Given URL {url} does not match any allowed URL(s)")
        try:
            return resolve_archive(url, self.store, s.workdir, s.allowed_urls)
        except ModelNotFoundError:
            raise WorkflowNotFoundError(f"Workflow not found in workflow store: {url}") from None
        except BadRequestError as exc:
            if remote:
                raise DownloadArchiveError(exc.message) from None
            raise

    def _read_spec(self, war: WorkflowArchive) -> WorkflowSpec:
        try:
            check_model_name(war.name)
            text = war.spec_path.read_text(encoding="utf-8")
        except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
            raise InvalidWorkflowError(f"workflow {war.name[:200]!r}: {exc}") from None
        spec = load_spec(war.name, text)
        if spec.functions and war.handler is None:
            raise InvalidWorkflowError(
                f"the DAG's function nodes ({', '.join(n.name for n in spec.functions)}) need "
                "a handler file, and the workflow archive has none (--handler)")
        return spec

    def _request(self, url: str, war: WorkflowArchive, node: Node,
                 response_timeout: float | None, startup_timeout: float | None,
                 ) -> tuple[RegisterRequest, Archive | None]:
        """How a node is registered: its .mar, or the archive's handler function."""
        p = node.params
        handler, opened = None, None
        if node.url is None:
            handler = f"{war.handler}:{node.name}"
            opened = Archive(war.source, war.folder, Manifest.new(
                model_name=node.model, handler=handler, model_version="1.0"))
        req = RegisterRequest(url=node.url or url, model_name=node.model, handler=handler,
                              batch_size=p.batch_size, max_batch_delay=p.max_batch_delay,
                              initial_workers=p.max_workers, response_timeout=response_timeout,
                              startup_timeout=startup_timeout, synchronous=True)
        return req, opened

    async def _register_nodes(self, url: str, war: WorkflowArchive, spec: WorkflowSpec,
                              response_timeout: float | None, startup_timeout: float | None,
                              ) -> list[tuple[str, str]]:
        """Every node at once; all of them, or none (the failures in a WorkflowError)."""
        registered: list[tuple[str, str]] = []
        failures: list[str] = []

        async def one(node: Node) -> None:
            req, opened = self._request(url, war, node, response_timeout, startup_timeout)
            try:
                await self.dataplane.register(req, workflow=war.name, opened=opened)
            except ModelServeError as exc:
                log.error("workflow %s: node %s failed to register: %s", war.name, node.model,
                          exc.message)
                failures.append(f"Workflow Node {node.model} failed to register. "
                                f"Details: {exc.message}")
                return
            registered.extend((mv.name, mv.version) for mv in self._models_of(war.name,
                                                                              node.model))

        try:
            await asyncio.gather(*(one(node) for node in spec.nodes.values()))
        except BaseException:
            await self._unregister_models(war.name, registered)
            raise
        if failures:
            await self._unregister_models(war.name, registered)
            raise WorkflowError(f"Workflow {war.name} has failed to register. "
                                f"Failures: [{', '.join(failures)}]")
        return registered

    def _models_of(self, workflow: str, name: str) -> list[ModelVersion]:
        try:
            versions = self.dataplane.registry.versions(name)
        except ModelNotFoundError:
            return []
        return [mv for mv in versions if mv.workflow == workflow]

    async def _unregister_models(self, workflow: str, models: list[tuple[str, str]]) -> None:
        """Stop the models ``workflow`` registered (not one registered since under the same
        name by someone else)."""

        async def one(name: str, version: str) -> None:
            if not any(mv.version == version for mv in self._models_of(workflow, name)):
                log.warning("workflow %s: its model %s %s is no longer registered", workflow,
                            name, version)
                return
            try:
                await self.dataplane.unregister(name, version, workflow=True)
            except ModelServeError as exc:
                log.warning("workflow %s: unregistering %s %s: %s", workflow, name, version,
                            exc.message)

        await asyncio.gather(*(one(name, version) for name, version in models))

    async def unregister(self, name: str) -> str:
        workflow = self._workflows.pop(name, None)
        if workflow is None:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        self._busy.add(name)
        try:
            await self._unregister_models(name, workflow.models)
            await asyncio.to_thread(remove, workflow.war)
        finally:
            self._busy.discard(name)
        log.info("workflow %s unregistered", name)
        return f'Workflow "{name}" unregistered'

    def describe(self, name: str) -> list[dict[str, Any]]:
        workflow = self._workflows.get(name)
        if workflow is None:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")
        p = workflow.spec.params
        return [{"workflowName": name, "workflowUrl": workflow.url,
                 "minWorkers": p.min_workers, "maxWorkers": p.max_workers,
                 "batchSize": p.batch_size, "maxBatchDelay": p.max_batch_delay,
                 "workflowDag": workflow.spec.dag_text}]

    def list_page(self, limit: int, token: int) -> dict[str, Any]:
        """A page of workflows by name; nextPageToken whenever the page is full, as
        WorkflowMgmtRequestHandler.handleListWorkflows has it (even at the very end)."""
        names = sorted(self._workflows)
        body: dict[str, Any] = {}
        if token + limit <= len(names):
            body["nextPageToken"] = str(token + limit)
        body["workflows"] = [{"workflowName": n, "workflowUrl": self._workflows[n].url}
                             for n in names[token:token + limit]]
        return body

    def close(self) -> None:
        """At shutdown, once the workers are stopped: remove the extracted archives (the
        workflows are not restored at the next start)."""
        for workflow in self._workflows.values():
            remove(workflow.war)
        self._workflows.clear()

    # -- inference ---------------------------------------------------------------------------
    async def predict(self, name: str, body: bytes, content_type: str,
                      headers: dict[str, str], request_id: str) -> bytes:
        """Run the DAG on the request: the leaf's output, or (several leaves) a JSON object
        of each leaf's output by node name."""
        workflow = self._workflows.get(name)
        if workflow is None:
            raise WorkflowNotFoundError(f"Workflow not found: {name}")

        async def infer(model: str, node_body: bytes, node_type: str,
                        node_headers: dict[str, str]) -> Result | Stream:
            return await self.dataplane.infer(model, None, node_body, node_type, node_headers,
                                              f"{request_id}/{model}")

        leaves = await run_dag(workflow.spec, infer, body, content_type, headers)
        if len(leaves) == 1:
            return leaves[0][1]
        out = {}
        for leaf, data in leaves:
            try:
                out[leaf] = jsonc.loads(data)
            except ValueError:
                out[leaf] = None
            if not isinstance(out[leaf], dict):
                raise ModelServeError(f"the output of node {leaf} is not a JSON object "
                                      "(a workflow with several leaves answers one object "
                                      "of their outputs)")
        return jsonc.dumps(out)
