"""A workflow's specification (the YAML in its ``.war``), read and checked as TorchServe 0.12
reads it (``ensemble/WorkFlow.java``, ``Dag.java``).

``models:`` holds the global node parameters (``min-workers``, ``max-workers``,
``batch-size``, ``max-batch-delay``, ``retry-attempts``, ``timeout-ms``) and one mapping per
model (``url`` of its ``.mar`` plus any of those keys to override). ``dag:`` maps each node
to the nodes its output feeds. A node that ``models:`` does not name is a function of the
archive's handler file. Every node is served as a model named ``<workflow>__<node>``.

The DAG must have exactly one start node and no cycle; TorchServe's own messages are kept
("DAG should have only one start node", "Not a valid DAG", ...). Where TorchServe fails on a
malformed spec with a Java exception (a 500), this answers 400 with what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import yaml

from modelserve.archive.manifest import check_model_name
from modelserve.errors import BadRequestError


class InvalidDAGError(BadRequestError):
    type = "InvalidDAGException"


class InvalidWorkflowError(BadRequestError):
    type = "InvalidWorkflowException"


@dataclass(frozen=True)
class NodeParams:
    """What a node is registered and run with (TorchServe's defaults)."""

    min_workers: int = 1
    max_workers: int = 1
    batch_size: int = 1
    max_batch_delay: int = 50
    retry_attempts: int = 1
    timeout_ms: int = 10000


# spec key -> (NodeParams field, smallest value)
_PARAMS = {
    "min-workers": ("min_workers", 0),
    "max-workers": ("max_workers", 0),
    "batch-size": ("batch_size", 1),
    "max-batch-delay": ("max_batch_delay", 0),
    "retry-attempts": ("retry_attempts", 0),
    "timeout-ms": ("timeout_ms", 1),
}


@dataclass(frozen=True)
class Node:
    name: str  # as the DAG names it
    model: str  # the model it is served as: <workflow>__<name>
    url: str | None  # a model node's .mar; None: a function of the handler file
    params: NodeParams


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    params: NodeParams  # the global ones (describe shows them)
    nodes: dict[str, Node]  # in the order the DAG names them
    children: dict[str, list[str]]
    parents: dict[str, list[str]]
    start: str
    dag_text: str  # the dag section as TorchServe's describe prints it (Java's toString)

    @property
    def functions(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.url is None]


def java_text(value: Any) -> str:
    """``toString`` of what SnakeYAML loads: ``{a=[b, c], b=[d]}``, as describe shows it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{java_text(k)}={java_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(java_text(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _param(where: str, key: str, value: Any) -> int:
    _, low = _PARAMS[key]
    if type(value) is not int or value < low:
        raise InvalidWorkflowError(f"{where}: {key} must be an integer >= {low}, not {value!r}")
    return value


def _models(section: Any) -> tuple[NodeParams, dict[str, tuple[str, NodeParams]]]:
    """The global parameters, and each model's (url, parameters). The globals apply to every
    model, wherever they stand in the section."""
    if not isinstance(section, dict):
        raise InvalidWorkflowError("the workflow specification has no models: mapping")
    globals_ = NodeParams(**{_PARAMS[k][0]: _param("models", k, v)
                             for k, v in section.items() if k in _PARAMS})
    models: dict[str, tuple[str, NodeParams]] = {}
    for key, value in section.items():
        if key in _PARAMS:
            continue
        where = f"models: {key}"
        if not isinstance(key, str) or not isinstance(value, dict):
            raise InvalidWorkflowError(f"{where}: expected a model (a mapping with its url) or "
                                       f"one of {', '.join(_PARAMS)}")
        url = value.get("url")
        if not isinstance(url, str) or not url.strip():
            raise InvalidWorkflowError(f"{where}: the model has no url")
        own = {_PARAMS[k][0]: _param(where, k, v) for k, v in value.items() if k in _PARAMS}
        models[key] = (url.strip(), replace(globals_, **own))
    return globals_, models


def _edges(section: Any) -> list[tuple[str, list[str]]]:
    if not isinstance(section, dict) or not section:
        raise InvalidDAGError("DAG should have only one start node")
    edges = []
    for key, value in section.items():
        if not isinstance(key, str):
            raise InvalidWorkflowError(f"dag: node {key!r} is not a name")
        if not isinstance(value, list):
            raise InvalidWorkflowError(f"dag: {key}: expected a list of the nodes it feeds "
                                       f"([] for none), not {java_text(value)}")
        children = []
        for child in value:
            if child is None or (isinstance(child, str) and not child.strip()):
                continue  # TorchServe skips empty entries
            if not isinstance(child, str):
                raise InvalidWorkflowError(f"dag: {key}: {child!r} is not a node name")
            children.append(child)
        edges.append((key, children))
    return edges


def _check_order(nodes: list[str], children: dict[str, list[str]],
                 parents: dict[str, list[str]]) -> str:
    """The start node, after Dag.validate's checks."""
    starts = [n for n in nodes if not parents[n]]
    if len(starts) != 1:
        raise InvalidDAGError("DAG should have only one start node")
    waiting = {n: len(parents[n]) for n in nodes}
    ready, seen = [starts[0]], 0
    while ready:
        node = ready.pop()
        seen += 1
        for child in children[node]:
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    if seen != len(nodes):
        raise InvalidDAGError("Not a valid DAG")
    return starts[0]


def parse_spec(workflow: str, doc: Any) -> WorkflowSpec:
    """The specification of ``workflow`` from its loaded YAML; InvalidDAGError or
    InvalidWorkflowError (both 400) when it cannot be served."""
    if not isinstance(doc, dict):
        raise InvalidWorkflowError("the workflow specification must be a mapping with "
                                   "models: and dag:")
    globals_, models = _models(doc.get("models"))
    edges = _edges(doc.get("dag"))
    children: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    for source, targets in edges:
        for name in (source, *targets):
            children.setdefault(name, [])
            parents.setdefault(name, [])
        for target in targets:
            if target == source:
                raise InvalidDAGError("Self loop exception")
            if target in children[source]:
                raise InvalidDAGError("loop exception")  # TorchServe's word for a repeated edge
            children[source].append(target)
            parents[target].append(source)
    start = _check_order(list(children), children, parents)
    functions = NodeParams(1, 1, 1, 0, globals_.retry_attempts, globals_.timeout_ms)
    nodes = {}
    for name in children:
        model = f"{workflow}__{name}"
        try:
            check_model_name(model)
        except ValueError as exc:
            raise InvalidWorkflowError(f"dag: node {name!r} cannot be served: {exc}") from None
        url, params = models.get(name, (None, functions))
        nodes[name] = Node(name, model, url, params)
    return WorkflowSpec(workflow, globals_, nodes, children, parents, start,
                        java_text(doc["dag"]))


def load_spec(workflow: str, text: str) -> WorkflowSpec:
    """``parse_spec`` of the spec file's text."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidWorkflowError(f"Failed to parse yaml. {' '.join(str(exc).split())}"
                                   ) from None
    return parse_spec(workflow, doc)
