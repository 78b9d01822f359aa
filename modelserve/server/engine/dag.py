"""Running a workflow's DAG for one request, with TorchServe 0.12's data flow
(``ensemble/DagExecutor.java``) on asyncio.

The start node gets the request as ``/predictions`` would give it (its body and content type,
so the worker decodes it the usual way). A node runs once all its parents have answered, and
as soon as they have: siblings run at the same time (fan-out gives each child the same
output). A node with one parent gets that parent's output as its ``body`` (bytes); a node
with several gets one field per parent, named after it (fan-in), sent as a
``multipart/form-data`` body that the worker decodes into ``{"parent": bytes, ...}``. Every
node sees the request's headers.

Each call to a node has ``timeout-ms``; a failed, refused or late call is tried again up to
``retry-attempts`` times. When a node still fails, the request fails at once with TorchServe's
500 ("Error executing <node>") and the nodes still running are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from modelserve.errors import ModelServeError
from modelserve.server.engine.jobs import ClientGoneError, Result
from modelserve.server.engine.streams import Stream
from modelserve.server.engine.workflow_spec import Node, WorkflowSpec

log = logging.getLogger("modelserve.workflows")

# (model name, body, content type, headers) -> the model's answer
Infer = Callable[[str, bytes, str, dict[str, str]], Awaitable[Result | Stream]]


class NodeFailedError(ModelServeError):
    """A node failed on every attempt (TorchServe keeps only the last part of its message)."""


def form_body(fields: dict[str, bytes]) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data body, one binary part per field."""
    while True:
        boundary = secrets.token_hex(16)
        if not any(boundary.encode() in value for value in fields.values()):
            break
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + value + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def _headers(headers: dict[str, str], content_type: str) -> dict[str, str]:
    """The request's headers, with this node's own body type."""
    out = {k: v for k, v in headers.items() if k not in ("content-type", "content-length")}
    if content_type:
        out["content-type"] = content_type
    return out


async def _answer(infer: Infer, node: Node, body: bytes, content_type: str,
                  headers: dict[str, str]) -> bytes:
    """One call: the body of a successful answer (a streamed one, whole)."""
    result = await infer(node.model, body, content_type, headers)
    if isinstance(result, Stream):
        try:
            if result.status >= 400:
                raise ModelServeError(f"answered {result.status}", status=result.status)
            return b"".join([chunk async for chunk in result])
        finally:
            result.close()
    if result.status >= 400:
        raise ModelServeError.from_body(result.status, result.body)
    return result.body


async def call_node(infer: Infer, node: Node, body: bytes, content_type: str,
                    headers: dict[str, str]) -> bytes:
    """A node's output, after up to ``retry-attempts`` more tries."""
    attempts = node.params.retry_attempts + 1
    timeout = node.params.timeout_ms / 1000
    node_headers = _headers(headers, content_type)
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.wait_for(
                _answer(infer, node, body, content_type, node_headers), timeout)
        except TimeoutError:
            why = f"no answer within timeout-ms ({node.params.timeout_ms})"
        except ClientGoneError:
            raise  # nobody waits for the answer: no more tries
        except ModelServeError as exc:
            why = f"{exc.status} {exc.message}"
        log.warning("workflow node %s (%s), attempt %d of %d: %s", node.name, node.model,
                    attempt, attempts, why)
    raise NodeFailedError(f"Error executing {node.name}")


def _input(spec: WorkflowSpec, name: str, outputs: dict[str, bytes]) -> tuple[bytes, str]:
    """(body, content type) for a node whose parents have all answered."""
    parents = spec.parents[name]
    if len(parents) == 1:
        return outputs[parents[0]], ""
    form_type, form = form_body({parent: outputs[parent] for parent in parents})
    return form, form_type


async def run_dag(spec: WorkflowSpec, infer: Infer, body: bytes, content_type: str,
                  headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """The leaves' outputs, in the order they finished."""
    outputs: dict[str, bytes] = {}
    waiting = {name: len(parents) for name, parents in spec.parents.items()}
    running: dict[asyncio.Task[bytes], str] = {}
    leaves: list[tuple[str, bytes]] = []

    def start(name: str, node_body: bytes, node_type: str) -> None:
        task = asyncio.create_task(call_node(infer, spec.nodes[name], node_body, node_type,
                                             headers))
        running[task] = name

    start(spec.start, body, content_type)
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = running.pop(task)
                outputs[name] = task.result()  # raises NodeFailedError
                if not spec.children[name]:
                    leaves.append((name, outputs[name]))
                for child in spec.children[name]:
                    waiting[child] -= 1
                    if not waiting[child]:
                        start(child, *_input(spec, child, outputs))
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return leaves
