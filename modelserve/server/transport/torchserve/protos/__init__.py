"""TorchServe's gRPC APIs: its ``inference.proto`` and ``management.proto``, and their modules.

The two .proto files are TorchServe 0.12.0's (``frontend/server/src/main/resources/proto/``,
https://github.com/pytorch/serve, Apache License 2.0), unmodified, so that the services served
here are the ones TorchServe's clients were generated from. ``google/rpc/status.proto``, which
``inference.proto`` imports, is googleapis' (Apache License 2.0, its header kept), as
googleapis-common-protos ships it.

The generated ``*_pb2*.py`` are committed, like the OIP v2 stubs (``transport/v2/protos``):
``make protos`` (``python -m modelserve.server.transport.torchserve.protos.generate``)
regenerates them, and tests/integration/test_ts_grpc.py fails when they are stale.
"""
