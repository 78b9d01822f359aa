"""``google.rpc.Status`` for ``inference_pb2`` (its StreamPredictions2 error field).

googleapis-common-protos' ``google.rpc.status_pb2`` when it is installed: a process holds one
``google/rpc/status.proto`` in protobuf's descriptor pool, and a program that imports both
that package and modelserve must not meet two. Otherwise the module generated here from the
same file (``status_pb2.py``, see ``generate.py``).
"""

from __future__ import annotations

try:
    from google.rpc import status_pb2
except ImportError:
    from modelserve.server.transport.torchserve.protos import status_pb2

__all__ = ["status_pb2"]
