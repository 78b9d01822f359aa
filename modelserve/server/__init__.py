"""The frontend process, never importing torch, in the stages a request passes through:

- ``transport``: the wire formats (TorchServe's REST APIs, OIP v2 REST and gRPC) and the HTTP
  plumbing they share (auth, limits, bodies, streaming, errors, the access log);
- ``engine``: the transport-neutral data plane, registry, batcher, worker pool and worker
  processes every transport calls;
- ``observability``: Prometheus metrics and the process readings behind them.

``app`` composes them: three HTTP listeners and the gRPC service over one data plane.
"""
