"""TorchServe's workflows: .war archives built by torch-workflow-archiver 0.2, models by
torch-model-archiver 0.12, served by `modelserve start --ts-config` with ``workflow_store``.

Each case follows TorchServe 0.12's frontend (workflow/WorkflowManager.java,
workflow/api/http/*, ensemble/DagExecutor.java) and its workflow test data (test/postman
workflow_data.json): status codes, messages and bodies. The DAG's nodes are real models with
real workers: model nodes from .mar files in the model store, function nodes from the
archive's handler file, each in its own worker process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, pid_alive, wait_for

MODEL_ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]
WORKFLOW_ARCHIVER = [sys.executable, "-m", "workflow_archiver.workflow_packaging"]

# model handlers, TorchServe's module-level shape; no torch import (they load fast)
MODEL_HANDLER = textwrap.dedent('''
    import json
    import os


    def handle(data, context):
        if data is None:
            return None
        out = []
        for row in data:
            body = row.get("data") or row.get("body")
            doc = json.loads(body) if isinstance(body, (bytes, str)) else body
            out.append({"value": doc["x"] OP, "batch": len(data), "pid": os.getpid()})
        return out
''')

WORKFLOW_HANDLER = textwrap.dedent('''
    import json
    import os
    import time


    def pre(data, context):
        if data is None:
            return None
        return [{"x": (row.get("data") or row.get("body"))["x"]} for row in data]


    def post(data, context):
        if data is None:
            return None
        out = []
        for row in data:
            doc = json.loads(row["body"])
            out.append({"result": doc["value"], "model_pid": doc["pid"], "pid": os.getpid(),
                        "model_dir": context.system_properties["model_dir"]})
        return out


    def agg(data, context):
        if data is None:
            return None
        return [{"double": json.loads(row["double"])["value"],
                 "square": json.loads(row["square"])["value"],
                 "fields": sorted(row)} for row in data]


    def boom(data, context):
        if data is None:
            return None
        for row in data:
            with open((row.get("data") or row.get("body"))["count_file"], "a") as f:
                f.write("called\\n")
        raise RuntimeError("boom")


    def slow(data, context):
        if data is None:
            return None
        time.sleep(5)
        return ["late"]
''')

SPECS = {
    # pre -> double -> post: functions around a model
    "seq": """
        models:
          batch-size: 4
          max-batch-delay: 20
          retry-attempts: 0
          timeout-ms: 60000
          double:
            url: double.mar
            batch-size: 2
            max-workers: 2
        dag:
          pre: [double]
          double: [post]
    """,
    # one input to two models, their outputs aggregated by a function
    "fan": """
        models:
          timeout-ms: 60000
          double: {url: double.mar}
          square: {url: square.mar}
        dag:
          pre: [double, square]
          double: [agg]
          square: [agg]
    """,
    # two leaves: the answer is one object of both outputs
    "leaves": """
        models:
          timeout-ms: 60000
          double: {url: double.mar}
          square: {url: square.mar}
        dag:
          pre: [double, square]
    """,
    "boom": """
        models:
          retry-attempts: 2
          timeout-ms: 60000
        dag:
          boom: []
    """,
    "slow": """
        models:
          retry-attempts: 0
          timeout-ms: 500
        dag:
          slow: []
    """,
    "twostarts": """
        models: {}
        dag:
          pre: [post]
          agg: [post]
    """,
    "cycle": """
        models: {}
        dag:
          pre: [agg]
          agg: [post]
          post: [agg]
    """,
    "badyaml": "models: [\n",
    # a DAG node that is neither a model nor a function of the handler file
    "nofunc": """
        models: {}
        dag:
          pre: [missing_fn]
    """,
    "nomar": """
        models:
          double: {url: double.mar}
          missing: {url: nope.mar}
        dag:
          pre: [double, missing]
    """,
}


def _war(src: Path, store: Path, name: str) -> None:
    spec = src / f"{name}.yaml"
    spec.write_text(textwrap.dedent(SPECS[name]))
    tmp = src / "tmp"  # the archiver rmtree()s <tmpdir>/<workflow-name>: a private one
    tmp.mkdir(exist_ok=True)
    subprocess.run([*WORKFLOW_ARCHIVER, "--workflow-name", name, "--spec-file", str(spec),
                    "--handler", str(src / "wf_handler.py"), "--export-path", str(store)],
                   check=True, capture_output=True, env={**os.environ, "TMPDIR": str(tmp)})


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model store, workflow store): double.mar and square.mar by torch-model-archiver,
    every SPECS entry as <name>.war by torch-workflow-archiver."""
    src = tmp_path_factory.mktemp("wf-src")
    models = tmp_path_factory.mktemp("wf-models")
    workflows = tmp_path_factory.mktemp("wf-workflows")
    for name, op in (("double", "* 2"), ("square", "** 2")):
        handler = src / f"{name}_handler.py"
        handler.write_text(MODEL_HANDLER.replace("OP", op))
        subprocess.run([*MODEL_ARCHIVER, "--model-name", name, "--version", "1.0",
                        "--handler", str(handler), "--export-path", str(models)],
                       check=True, capture_output=True)
    (src / "wf_handler.py").write_text(WORKFLOW_HANDLER)
    for name in SPECS:
        _war(src, workflows, name)
    shutil.copy(models / "double.mar", workflows / "model.war")
    return models, workflows


@pytest.fixture(scope="module")
def ts_server(stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Server]:
    """TorchServe's defaults: enable_model_api is off, which workflows do not need."""
    models, workflows = stores
    root = tmp_path_factory.mktemp("wf-server")
    props = root / "config.properties"
    props.write_text(f"disable_token_authorization=true\nworkflow_store={workflows}\n")
    srv = Server(root, models, [], extra_args=["--ts-config", str(props)])
    srv.start()
    yield srv
    assert not srv.stop()
    assert list((root / "work" / "workflows").iterdir()) == []  # none left extracted


def mgmt(srv: Server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{srv.management}{path}", timeout=120, **kw)


def wfpredict(srv: Server, name: str, **kw) -> httpx.Response:
    return httpx.post(f"{srv.inference}/wfpredict/{name}", timeout=120, **kw)


def model_names(srv: Server) -> list[str]:
    return [m["modelName"] for m in mgmt(srv, "GET", "/models").json()["models"]]


@pytest.fixture
def clean(ts_server: Server) -> Iterator[Server]:
    yield ts_server
    for wf in mgmt(ts_server, "GET", "/workflows").json()["workflows"]:
        mgmt(ts_server, "DELETE", f"/workflows/{wf['workflowName']}")


def register(srv: Server, query: str) -> httpx.Response:
    return mgmt(srv, "POST", f"/workflows?{query}")


def test_sequential_dag_runs_functions_and_models_in_workers(clean: Server):
    r = register(clean, "url=seq.war")
    assert (r.status_code, r.json()) == (
        200, {"status": "Workflow seq has been registered and scaled successfully."})
    # every node is a model <workflow>__<node>, with the spec's batching and workers
    assert model_names(clean) == ["seq__double", "seq__post", "seq__pre"]
    [double] = mgmt(clean, "GET", "/models/seq__double").json()
    assert (double["batchSize"], double["maxBatchDelay"], double["minWorkers"],
            len(double["workers"])) == (2, 20, 2, 2)
    [pre] = mgmt(clean, "GET", "/models/seq__pre").json()
    assert (pre["batchSize"], pre["maxBatchDelay"], len(pre["workers"])) == (1, 0, 1)

    r = wfpredict(clean, "seq", json={"x": 21})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["result"] == 42
    workers = clean.worker_pids()
    assert out["pid"] in workers and out["model_pid"] in workers  # never the frontend
    assert out["pid"] != out["model_pid"] and Path(out["model_dir"], "seq.yaml").is_file()

    # concurrent requests share the model's batcher: every answer right
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: wfpredict(clean, "seq", json={"x": x}), range(16)))
    assert [a.json()["result"] for a in answers] == [2 * x for x in range(16)]


def test_fan_out_and_fan_in(clean: Server):
    assert register(clean, "url=fan.war").status_code == 200
    r = wfpredict(clean, "fan", json={"x": 7})
    assert r.status_code == 200, r.text
    # agg got one field per parent, named after it
    assert r.json() == {"double": 14, "square": 49, "fields": ["double", "square"]}


def test_several_leaves_answer_one_object(clean: Server):
    assert register(clean, "url=leaves.war").status_code == 200
    out = wfpredict(clean, "leaves", json={"x": 3}).json()
    assert set(out) == {"double", "square"}
    assert (out["double"]["value"], out["square"]["value"]) == (6, 9)


def test_register_list_describe_unregister(clean: Server):
    assert mgmt(clean, "GET", "/workflows").json() == {"workflows": []}
    assert register(clean, "url=seq.war").status_code == 200
    r = register(clean, "url=fan.war&workflow_name=fan2")
    assert r.json() == {"status": "Workflow fan2 has been registered and scaled successfully."}
    assert mgmt(clean, "GET", "/workflows").json() == {"workflows": [
        {"workflowName": "fan2", "workflowUrl": "fan.war"},
        {"workflowName": "seq", "workflowUrl": "seq.war"}]}
    # handleListWorkflows: a full page carries nextPageToken, even the last one
    assert mgmt(clean, "GET", "/workflows?limit=1").json() == {
        "nextPageToken": "1", "workflows": [{"workflowName": "fan2", "workflowUrl": "fan.war"}]}
    assert mgmt(clean, "GET", "/workflows?limit=1&next_page_token=1").json() == {
        "nextPageToken": "2", "workflows": [{"workflowName": "seq", "workflowUrl": "seq.war"}]}
    assert mgmt(clean, "GET", "/workflows?limit=dd&next_page_token=-3").json()["workflows"] \
        == mgmt(clean, "GET", "/workflows").json()["workflows"]

    assert mgmt(clean, "GET", "/workflows/seq").json() == [{
        "workflowName": "seq", "workflowUrl": "seq.war", "minWorkers": 1, "maxWorkers": 1,
        "batchSize": 4, "maxBatchDelay": 20,
        "workflowDag": "{pre=[double], double=[post]}"}]

    # already registered: 409 (WorkflowManager's ConflictStatusException)
    r = register(clean, "url=seq.war")
    assert (r.status_code, r.json()) == (409, {
        "code": 409, "type": "ConflictStatusException",
        "message": "Workflow seq is already registered."})

    seq_workers = {w["pid"] for model in ("seq__pre", "seq__double", "seq__post")
                   for w in mgmt(clean, "GET", f"/models/{model}").json()[0]["workers"]}
    assert len(seq_workers) == 4 and seq_workers <= clean.worker_pids()
    r = mgmt(clean, "DELETE", "/workflows/seq")
    assert (r.status_code, r.json()) == (200, {"status": 'Workflow "seq" unregistered'})
    assert model_names(clean) == ["fan2__agg", "fan2__double", "fan2__pre", "fan2__square"]
    wait_for(lambda: not seq_workers & {p for p in clean.worker_pids() if pid_alive(p)})
    assert wfpredict(clean, "seq", json={"x": 1}).status_code == 404
    assert wfpredict(clean, "fan2", json={"x": 2}).json()["square"] == 4


def test_workflow_models_stay_out_of_snapshots(clean: Server):
    before = set((clean.root / "logs" / "config").glob("*.cfg"))
    assert register(clean, "url=seq.war").status_code == 200
    written = set((clean.root / "logs" / "config").glob("*-snapshot.cfg")) - before
    assert written, "each registration writes a TorchServe config snapshot"
    assert all("seq__" not in path.read_text() for path in written)


@pytest.mark.parametrize("path", ["/workflows/nope"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_workflow_is_404(ts_server: Server, method: str, path: str):
    r = mgmt(ts_server, method, path)
    assert (r.status_code, r.json()) == (404, {
        "code": 404, "type": "WorkflowNotFoundException", "message": "Workflow not found: nope"})


def test_predict_unknown_workflow_is_404(ts_server: Server):
    r = wfpredict(ts_server, "nope", content=b"x")
    assert (r.status_code, r.json()) == (404, {
        "code": 404, "type": "WorkflowNotFoundException", "message": "Workflow not found: nope"})


def test_failing_node_is_500_after_its_retries(clean: Server, tmp_path: Path):
    assert register(clean, "url=boom.war").status_code == 200
    count = tmp_path / "count"
    r = wfpredict(clean, "boom", json={"count_file": str(count)})
    assert (r.status_code, r.json()) == (500, {
        "code": 500, "type": "InternalServerException", "message": "Error executing boom"})
    assert count.read_text() == "called\n" * 3  # the first try and retry-attempts: 2


def test_node_past_its_timeout_fails_the_request(clean: Server):
    assert register(clean, "url=slow.war").status_code == 200
    r = wfpredict(clean, "slow", content=b"x")
    assert (r.status_code, r.json()["message"]) == (500, "Error executing slow")


@pytest.mark.parametrize("url, status, kind, message", [
    ("twostarts.war", 400, "InvalidDAGException", "DAG should have only one start node"),
    ("cycle.war", 400, "InvalidDAGException", "Not a valid DAG"),
    # TorchServe: 500 for a spec that does not parse; modelserve: 400 (README Differences)
    ("badyaml.war", 400, "InvalidWorkflowException", "Failed to parse yaml."),
    ("nope.war", 404, "WorkflowNotFoundException",
     "Workflow not found in workflow store: nope.war"),
    ("malformed_url,?", 404, "WorkflowNotFoundException",
     "Workflow not found in workflow store: malformed_url,?"),
    ("../x.war", 404, "WorkflowNotFoundException", "Relative path is not allowed in url: ../x.war"),
    ("http://127.0.0.1:9/x.war", 404, "WorkflowNotFoundException",
     "Given URL http://127.0.0.1:9/x.war does not match any allowed URL(s)"),
    # its workers cannot start: the pre node registered meanwhile is unregistered again
    ("nofunc.war", 500, "WorkflowException", "Workflow nofunc has failed to register. "
     "Failures: [Workflow Node nofunc__missing_fn failed to register. Details: Failed to "
     "start workers"),
    # a model archive is no workflow archive: no WAR-INF/MANIFEST.json
    ("model.war", 400, "InvalidWorkflowException", "Workflow name is not defined."),
])
def test_registration_errors(ts_server: Server, url: str, status: int, kind: str,
                             message: str):
    r = register(ts_server, f"url={url}")
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["code"], body["type"]) == (status, kind)
    assert body["message"].startswith(message), body
    assert mgmt(ts_server, "GET", "/workflows").json() == {"workflows": []}
    assert not [m for m in model_names(ts_server) if "__" in m]


def test_missing_url_is_400(ts_server: Server):
    r = mgmt(ts_server, "POST", "/workflows")
    assert (r.status_code, r.json()) == (400, {
        "code": 400, "type": "BadRequestException", "message": "Parameter url is required."})


def test_a_node_that_fails_to_register_rolls_the_workflow_back(ts_server: Server):
    r = register(ts_server, "url=nomar.war")
    assert (r.status_code, r.json()) == (500, {
        "code": 500, "type": "WorkflowException",
        "message": "Workflow nomar has failed to register. Failures: [Workflow Node "
                   "nomar__missing failed to register. Details: Model not found in model "
                   "store: nope.mar]"})
    wait_for(lambda: not [m for m in model_names(ts_server) if m.startswith("nomar__")])
    assert mgmt(ts_server, "GET", "/workflows/nomar").status_code == 404


def test_model_api_stays_off_while_workflows_work(clean: Server):
    """enable_model_api=false (TorchServe's default) refuses POST /models, not workflows."""
    assert mgmt(clean, "POST", "/models?url=double.mar").status_code == 405
    assert register(clean, "url=seq.war").status_code == 200
    r = mgmt(clean, "POST", "/workflows", json={"url": "fan.war", "workflow_name": "viajson"})
    assert r.json() == {"status": "Workflow viajson has been registered and scaled "
                                  "successfully."}
    assert json.loads(wfpredict(clean, "viajson", json={"x": 1}).content)["double"] == 2


def test_workflow_store_flag_under_modelserves_own_personality(stores: tuple[Path, Path],
                                                               tmp_path: Path):
    """`modelserve start --workflow-store DIR` (no --ts-config): the same APIs."""
    models, workflows = stores
    srv = Server(tmp_path, models, [], extra_args=["--workflow-store", str(workflows)])
    try:
        srv.start()
        r = register(srv, "url=seq.war&response_timeout=30")
        assert r.status_code == 200, r.text
        assert wfpredict(srv, "seq", json={"x": 5}).json()["result"] == 10
        saved = json.loads((tmp_path / "work" / "state" / "models.json").read_text())
        assert saved["models"] == []  # modelserve's snapshot leaves the nodes out too
        [double] = mgmt(srv, "GET", "/models/seq__double").json()
        assert double["responseTimeout"] == 30
        # strict_params (modelserve's default): a malformed number is a 400
        r = register(srv, "url=fan.war&startup_timeout=soon")
        assert (r.status_code, r.json()["type"]) == (400, "BadRequestException")
    finally:
        assert not srv.stop()
    # the extracted archive goes with the server (workflows are not restored)
    assert list((tmp_path / "work" / "workflows").iterdir()) == []


def test_torchserve_command_line_passes_the_workflow_store(tmp_path: Path):
    from modelserve.torchserve_cli import parser, start_command

    args = ["--model-store", str(tmp_path), "--workflow-store", str(tmp_path)]
    assert start_command(parser().parse_args(args))[-2:] == ["--workflow-store", str(tmp_path)]
    missing = ["--model-store", str(tmp_path), "--workflow-store", str(tmp_path / "no")]
    assert start_command(parser().parse_args(missing)) == 1
