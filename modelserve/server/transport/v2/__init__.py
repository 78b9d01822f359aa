"""OIP v2 (KServe / Triton): REST routes, gRPC service, and the core both call."""

import os

# Workers are started with fork+exec while gRPC threads run; gRPC's fork handlers are not
# needed for that (the child execs at once) and only log warnings. Must precede `import grpc`.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
