"""Workflow functions (torch-workflow-archiver --handler): every DAG node that the spec's
models: does not name is a function here, run as fn(data, context) in its own worker, and
called once with data=None when that worker starts."""

import json


def pre(data, context):
    """The request's JSON image, passed on to both models."""
    if data is None:
        return None
    return [row.get("data") or row.get("body") for row in data]


def agg(data, context):
    """Fan-in: one field per parent node, each holding that model's answer as bytes."""
    if data is None:
        return None
    out = []
    for row in data:
        torch_answer, onnx_answer = json.loads(row["digits"]), json.loads(row["onnx"])
        out.append({"label": torch_answer["label"],
                    "models_agree": torch_answer["label"] == onnx_answer["label"]})
    return out
