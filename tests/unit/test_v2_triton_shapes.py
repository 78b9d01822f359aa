"""Triton's model configuration and statistics as V2Core builds them: every field that
perf_analyzer 2.41 reads (its model parser and its HTTP statistics parser, which index the
JSON without checking), with the types it reads them as. A model version here is a plain
object with the attributes V2Core touches: no workers, no server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from modelserve.errors import ModelNotFoundError
from modelserve.server.transport.v2.core import V2Core, triton_version

SIGNATURE = {"platform": "onnxruntime_onnx",
             "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
             "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]}
# what TritonClientBackend::ParseStatistics (HTTP) reads from each inference_stats entry
READ_STATS = ("success", "queue", "compute_input", "compute_infer", "compute_output",
              "cache_hit", "cache_miss")


@dataclass(eq=False)
class _Version:
    name: str
    version: str
    executions: int = 0

    def __post_init__(self) -> None:
        self.archive = _Namespace(model_yaml_config={"v2": SIGNATURE})
        self.config = _Namespace(batch_size=8, max_batch_delay=5.0)
        self.pool = _Namespace(target=2, workers=[])
        self.metrics = _Namespace(executions=self.executions)


class _Namespace:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


@dataclass
class _Registry:
    models: dict[str, list[_Version]] = field(default_factory=dict)

    def versions(self, name: str) -> list[_Version]:
        if name not in self.models:
            raise ModelNotFoundError(f"Model not found: {name}")
        return self.models[name]

    def all(self) -> list[_Version]:
        return [mv for versions in self.models.values() for mv in versions]

    def get(self, name: str, version: str | None = None) -> _Version:
        for mv in self.versions(name):
            if version is None or mv.version == version:
                return mv
        raise ModelNotFoundError(f"Model version {version} does not exist for model {name}")


def core(**models: list[_Version]) -> V2Core:
    return V2Core(_Namespace(registry=_Registry(models)))  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "reported"), [
    ("1.0", "1"), ("1", "1"), ("12.00", "12"), ("007", "7"), ("1.5", "1.5"), ("v2", "v2"),
    ("1.", "1."), ("", ""), ("١.0", "١.0"),  # Arabic-Indic digit: not what stoll reads
])
def test_triton_version_is_the_whole_number_when_there_is_one(version, reported):
    assert triton_version(version) == reported


def test_config_has_what_perf_analyzer_parses():
    cfg = core(digits=[_Version("digits", "1.0")]).model_config("digits", None)
    assert cfg["max_batch_size"] == 8
    # dims leave out the batch dimension that max_batch_size stands for
    assert cfg["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert cfg["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}]
    assert cfg["dynamic_batching"] == {"max_queue_delay_microseconds": 5000}
    assert cfg["instance_group"] == [{"name": "digits", "count": 2, "kind": "KIND_CPU"}]
    assert cfg["version_policy"] == {"specific": {"versions": ["1"]}}
    # present only when it holds what perf_analyzer would then index
    assert "model_transaction_policy" not in cfg and "sequence_batching" not in cfg


def test_stats_have_every_field_perf_analyzer_reads_as_unsigned_integers():
    mv = _Version("digits", "1.0", executions=3)
    v2 = core(digits=[mv])
    (entry,) = v2.model_stats("digits", None)
    assert entry["name"] == "digits"
    assert entry["version"] == "1" and str(int(entry["version"])) == entry["version"]
    for key in ("inference_count", "execution_count", "last_inference"):
        assert isinstance(entry[key], int) and entry[key] >= 0
    assert entry["execution_count"] == 3
    for kind in READ_STATS:
        assert entry["inference_stats"][kind] == {"count": 0, "ns": 0}
    assert entry["batch_stats"] == []


def test_stats_count_a_request_once_in_every_step_as_triton_does():
    from modelserve.server.transport.v2.types import InferRequest, Tensor

    mv = _Version("digits", "1.0")
    v2 = core(digits=[mv])
    req = InferRequest([Tensor("input", "FP32", [4, 1, 8, 8], b"\0" * 4 * 64 * 4)])
    v2._stats_of(mv).record(True, req, elapsed_ns=3_000, queued_ns=1_000)
    v2._stats_of(mv).record(False, req, elapsed_ns=500, queued_ns=0)
    (entry,) = v2.model_stats("digits", "1.0")
    stats = entry["inference_stats"]
    assert entry["inference_count"] == 4  # the request's batch dimension
    assert stats["success"] == {"count": 1, "ns": 3_000}
    assert stats["fail"] == {"count": 1, "ns": 500}
    assert stats["queue"] == {"count": 1, "ns": 1_000}
    assert stats["compute_infer"] == {"count": 1, "ns": 2_000}
    assert stats["compute_input"]["count"] == stats["compute_output"]["count"] == 1
    # perf_analyzer's overhead = success - queue - compute: none is lost or counted twice
    assert stats["success"]["ns"] == sum(stats[k]["ns"] for k in (
        "queue", "compute_input", "compute_infer", "compute_output"))


def test_stats_without_a_version_cover_every_version_of_the_model():
    v2 = core(digits=[_Version("digits", "1.0"), _Version("digits", "2.0")],
              other=[_Version("other", "1.0")])
    assert [e["version"] for e in v2.model_stats("digits", None)] == ["1", "2"]
    assert [e["version"] for e in v2.model_stats("digits", "2.0")] == ["2"]
    assert [e["name"] for e in v2.model_stats(None, None)] == ["digits", "digits", "other"]
    with pytest.raises(ModelNotFoundError):
        v2.model_stats("nope", None)
