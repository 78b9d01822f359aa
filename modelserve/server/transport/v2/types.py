"""An OIP v2 inference request in transport-neutral form, and the model signature it must fit.

REST and gRPC both parse into :class:`InferRequest` (named tensors holding raw little-endian
bytes), so one validation and one job format serve both. Plain slotted classes, not pydantic:
this is the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelserve.datatypes import DATATYPES, TensorError, check_raw_size, element_count

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes | memoryview
    parameters: Parameters = field(default_factory=dict)

    def wire(self) -> list[Any]:
        return [self.name, self.datatype, self.shape, self.raw]


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # REST only: None = the request's default
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """What the worker receives (see modelserve.ipc): raw bytes, never re-encoded JSON."""
        return {
            "id": self.id,
            "parameters": self.parameters,
            "inputs": [t.wire() for t in self.inputs],
            "outputs": [o.name for o in self.outputs] if self.outputs is not None else None,
        }


@dataclass(slots=True, frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1: any size

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(slots=True)
class Signature:
    """A model's inputs and outputs; ``known`` is False when nothing describes them, and
    then only each tensor's own consistency is checked."""

    platform: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    known: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        def specs(items: Any) -> list[TensorSpec]:
            return [TensorSpec(str(t["name"]), str(t["datatype"]),
                               [int(d) for d in t.get("shape", [])]) for t in items or []]

        return cls(str(data.get("platform", "")), specs(data.get("inputs")),
                   specs(data.get("outputs")), known=bool(data.get("inputs")))

    def validate(self, req: InferRequest) -> None:
        """Raise TensorError for anything the model cannot take."""
        seen: set[str] = set()
        for t in req.inputs:
            if t.datatype not in DATATYPES:
                raise TensorError(f"input '{t.name}': unsupported datatype {t.datatype!r}")
            if t.name in seen:
                raise TensorError(f"input '{t.name}' is given more than once")
            seen.add(t.name)
            try:
                element_count(t.shape)
                check_raw_size(t.datatype, t.shape, t.raw)
            except TensorError as exc:
                raise TensorError(f"input '{t.name}': {exc}") from None
        if not self.known:
            return
        by_name = {s.name: s for s in self.inputs}
        for t in req.inputs:
            spec = by_name.get(t.name)
            if spec is None:
                raise TensorError(f"unexpected input '{t.name}'; the model takes "
                                  f"{[s.name for s in self.inputs]}")
            if t.datatype != spec.datatype:
                raise TensorError(f"input '{t.name}': datatype {t.datatype}, "
                                  f"the model expects {spec.datatype}")
            if len(t.shape) != len(spec.shape) or any(
                    want not in (-1, got) for want, got in zip(spec.shape, t.shape)):
                raise TensorError(f"input '{t.name}': shape {t.shape} does not match the "
                                  f"model's {spec.shape}")
        missing = [s.name for s in self.inputs if s.name not in seen]
        if missing:
            raise TensorError(f"missing input(s) {missing}")
        if req.outputs is not None and self.outputs:
            names = {s.name for s in self.outputs}
            for out in req.outputs:
                if out.name not in names:
                    raise TensorError(f"unknown output '{out.name}'; the model has "
                                      f"{sorted(names)}")
