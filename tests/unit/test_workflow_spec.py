"""Workflow specifications and .war archives, read as TorchServe 0.12 reads them
(ensemble/WorkFlow.java, Dag.java; archive/workflow/WorkflowArchive.java), and the DAG's
data flow (ensemble/DagExecutor.java) run against a fake model call."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

import pytest

from modelserve.archive import ArchiveError
from modelserve.archive.war import open_war
from modelserve.server.engine.dag import NodeFailedError, form_body, run_dag
from modelserve.server.engine.jobs import Result
from modelserve.server.engine.workflow_spec import (
    InvalidDAGError,
    InvalidWorkflowError,
    NodeParams,
    java_text,
    load_spec,
    parse_spec,
)
from modelserve.worker.codec import decode_request

SPEC = """
models:
    min-workers: 1
    max-workers: 4
    batch-size: 3
    max-batch-delay: 5000
    retry-attempts: 3
    timeout-ms: 5000
    m1:
       url: model1.mar
       max-workers: 2
       batch-size: 4
    m2:
       url: model2.mar
dag:
  pre_processing: [m1, m2]
  m1: [aggregate]
  m2: [aggregate]
"""


def test_spec_nodes_params_and_dag_text():
    spec = load_spec("wf", SPEC)
    assert list(spec.nodes) == ["pre_processing", "m1", "m2", "aggregate"]
    assert spec.start == "pre_processing"
    assert spec.params == NodeParams(1, 4, 3, 5000, 3, 5000)
    m1, m2 = spec.nodes["m1"], spec.nodes["m2"]
    assert (m1.model, m1.url, m1.params) == ("wf__m1", "model1.mar",
                                             NodeParams(1, 2, 4, 5000, 3, 5000))
    assert m2.params == spec.params
    # functions: one worker, batches of one, no delay; the global retries and timeout
    assert [n.name for n in spec.functions] == ["pre_processing", "aggregate"]
    assert spec.nodes["aggregate"].params == NodeParams(1, 1, 1, 0, 3, 5000)
    assert spec.parents["aggregate"] == ["m1", "m2"]
    assert spec.children["pre_processing"] == ["m1", "m2"]
    # describe's workflowDag: Java's toString of the dag mapping
    assert spec.dag_text == "{pre_processing=[m1, m2], m1=[aggregate], m2=[aggregate]}"


def test_defaults_are_torchserves():
    spec = parse_spec("wf", {"models": {"m": {"url": "m.mar"}}, "dag": {"m": []}})
    assert spec.params == NodeParams(1, 1, 1, 50, 1, 10000)
    assert spec.functions == [] and spec.dag_text == "{m=[]}"


def test_globals_apply_wherever_they_stand():
    spec = parse_spec("wf", {"models": {"m": {"url": "m.mar"}, "batch-size": 8},
                             "dag": {"m": []}})
    assert spec.nodes["m"].params.batch_size == 8


def test_empty_children_are_skipped_and_java_text():
    spec = parse_spec("wf", {"models": {}, "dag": {"a": ["b", None, " "]}})
    assert spec.children == {"a": ["b"], "b": []}
    assert java_text({"a": ["b", None], "c": True, "d": {"e": 1}}) == \
        "{a=[b, null], c=true, d={e=1}}"


@pytest.mark.parametrize("dag, message", [
    ({"a": ["b"], "c": ["b"]}, "DAG should have only one start node"),
    ({}, "DAG should have only one start node"),
    ({"a": ["a"]}, "Self loop exception"),
    ({"a": ["b", "b"]}, "loop exception"),
    ({"a": ["b"], "b": ["c"], "c": ["b"]}, "Not a valid DAG"),
])
def test_invalid_dags_say_what_torchserve_says(dag, message):
    with pytest.raises(InvalidDAGError) as err:
        parse_spec("wf", {"models": {}, "dag": dag})
    assert (err.value.status, err.value.type, err.value.message) == (
        400, "InvalidDAGException", message)


@pytest.mark.parametrize("doc, fragment", [
    ([1, 2], "must be a mapping"),
    ({"dag": {"a": []}}, "no models: mapping"),
    ({"models": {"m": {}}, "dag": {"m": []}}, "models: m: the model has no url"),
    ({"models": {"m": 3}, "dag": {"m": []}}, "expected a model"),
    ({"models": {"batch-size": 0}, "dag": {"a": []}}, "batch-size must be an integer >= 1"),
    ({"models": {"timeout-ms": "5"}, "dag": {"a": []}}, "timeout-ms must be an integer"),
    ({"models": {"m": {"url": "m.mar", "max-workers": True}}, "dag": {"m": []}},
     "max-workers must be an integer"),
    ({"models": {}, "dag": {"a": "b"}}, "expected a list"),
    ({"models": {}, "dag": {"a": [3]}}, "is not a node name"),
    ({"models": {}, "dag": {"a b": []}}, "cannot be served"),
])
def test_malformed_specs_are_400(doc, fragment):
    with pytest.raises(InvalidWorkflowError) as err:
        parse_spec("wf", doc)
    assert err.value.status == 400 and fragment in err.value.message


def test_yaml_that_does_not_parse():
    with pytest.raises(InvalidWorkflowError, match="Failed to parse yaml"):
        load_spec("wf", "models: [\n")


# -- .war archives ---------------------------------------------------------------------------
def _war(path: Path, manifest: dict | None, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        if manifest is not None:
            zf.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


MANIFEST = {"createdOn": "01/01/2025 00:00:00", "archiverVersion": "0.2.15",
            "workflow": {"workflowName": "wf", "specFile": "spec.yaml",
                         "handler": "handler.py"}}


def test_war_is_extracted_and_read(tmp_path):
    war = open_war(_war(tmp_path / "wf.war", MANIFEST,
                        {"spec.yaml": SPEC, "handler.py": "def pre(d, c): pass\n"}),
                   tmp_path / "work")
    assert (war.name, war.spec_file, war.handler) == ("wf", "spec.yaml", "handler.py")
    assert war.spec_path.read_text() == SPEC and war.folder.parent == tmp_path / "work"
    renamed = open_war(tmp_path / "wf.war", tmp_path / "work", name="other")
    assert renamed.name == "other" and renamed.folder != war.folder


@pytest.mark.parametrize("manifest, files, message", [
    (None, {"spec.yaml": ""}, "Workflow name is not defined."),
    ({**MANIFEST, "workflow": None}, {}, "Missing Workflow entry in manifest file."),
    ({k: v for k, v in MANIFEST.items() if k != "archiverVersion"}, {},
     "Workflow archive version is not defined."),
    ({k: v for k, v in MANIFEST.items() if k != "createdOn"}, {},
     "Workflow archive createdOn is not defined."),
    (MANIFEST, {"handler.py": ""}, "specFile 'spec.yaml' is not in the workflow archive"),
    ({**MANIFEST, "workflow": {**MANIFEST["workflow"], "specFile": "../x.yaml"}},
     {"spec.yaml": ""}, "unsafe path"),
])
def test_bad_wars_are_refused_and_cleaned_up(tmp_path, manifest, files, message):
    with pytest.raises(ArchiveError, match=message.replace(".", r"\.")):
        open_war(_war(tmp_path / "bad.war", manifest, files), tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []


def test_not_a_zip(tmp_path):
    (tmp_path / "x.war").write_text("not a zip")
    with pytest.raises(ArchiveError, match="not a zip"):
        open_war(tmp_path / "x.war", tmp_path / "work")


# -- the DAG's data flow ---------------------------------------------------------------------
def _run(spec_doc: dict, behaviour: dict, body: bytes = b"in", content_type: str = "text/plain"):
    """Run the DAG with each model answering ``behaviour[model](request dict)``; returns
    (leaves, calls as (model, decoded request))."""
    spec = parse_spec("wf", spec_doc)
    calls: list[tuple[str, dict]] = []

    async def infer(model, node_body, node_type, headers):
        request = decode_request(node_type, node_body)
        calls.append((model, request))
        await asyncio.sleep(0)
        answer = behaviour[model](request)
        if isinstance(answer, int):
            return Result(answer, "application/json", b'{"code": 500}', {})
        return Result(200, "application/octet-stream", answer, {})

    return asyncio.run(run_dag(spec, infer, body, content_type, {"x-h": "1"})), calls


def test_fan_out_and_fan_in():
    doc = {"models": {}, "dag": {"pre": ["a", "b"], "a": ["agg"], "b": ["agg"]}}
    leaves, calls = _run(doc, {
        "wf__pre": lambda r: r["body"].encode() + b"!",
        "wf__a": lambda r: b"A" + r["body"],
        "wf__b": lambda r: b"B" + r["body"],
        "wf__agg": lambda r: r["a"] + b"|" + r["b"],
    })
    assert leaves == [("agg", b"Ain!|Bin!")]
    requests = dict(calls)
    assert requests["wf__pre"] == {"body": "in"}  # decoded as /predictions decodes it
    assert requests["wf__a"] == requests["wf__b"] == {"body": b"in!"}  # the same output
    assert requests["wf__agg"] == {"a": b"Ain!", "b": b"Bin!"}  # one field per parent


def test_several_leaves_and_a_failing_node_with_retries():
    doc = {"models": {"retry-attempts": 2}, "dag": {"pre": ["a", "b"]}}
    leaves, _ = _run(doc, {"wf__pre": lambda r: b"x", "wf__a": lambda r: b"1",
                           "wf__b": lambda r: b"2"})
    assert sorted(leaves) == [("a", b"1"), ("b", b"2")]
    with pytest.raises(NodeFailedError, match="^Error executing b$") as err:
        _run(doc, {"wf__pre": lambda r: b"x", "wf__a": lambda r: b"1", "wf__b": lambda r: 500})
    assert err.value.status == 500 and err.value.type == "InternalServerException"


def test_retries_count():
    doc = {"models": {"retry-attempts": 2}, "dag": {"pre": []}}
    attempts = []

    def flaky(request):
        attempts.append(1)
        return 500 if len(attempts) < 3 else b"ok"

    leaves, _ = _run(doc, {"wf__pre": flaky})
    assert leaves == [("pre", b"ok")] and len(attempts) == 3


def test_form_body_round_trips_binary_fields():
    fields = {"a": bytes(range(256)) * 3 + b"\r\n--x\r\n", "b": b"", "c": b"text\n"}
    content_type, body = form_body(fields)
    assert decode_request(content_type, body) == fields
