"""OIP v2 gRPC: ``grpc_service.proto`` and its generated modules.

The generated ``grpc_service_pb2*.py`` are committed rather than built at install time: a
plain ``pip install`` then needs only grpcio and protobuf at run time, not grpcio-tools and a
build step, and the exact stubs served are reviewable. ``make protos``
(``python -m modelserve.server.transport.v2.protos.generate``) regenerates them;
tests/integration/test_v2_grpc.py fails when they are out of date with the .proto.
"""
