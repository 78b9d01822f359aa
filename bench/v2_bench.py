"""Benchmark: one model over OIP v2 REST (JSON), REST (binary tensors) and gRPC, and the
TorchServe route with a .npy body for reference, at one concurrency, on one real server.

Each row is closed-loop load from pre-encoded requests (REST: the raw HTTP/1.1 load generator
of loadgen.py; gRPC: grpc.aio with a pre-built ModelInferRequest), one sample per request.

    python bench/v2_bench.py --model-store model_store [--model resnet] [--duration 5] [-c 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, build_request, closed_loop  # noqa: E402
from serve_bench import SHAPES, free_port  # noqa: E402

HOST = "127.0.0.1"


def start_server(store: Path, model: str, work: Path) -> tuple[subprocess.Popen, dict]:
    ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc")}
    config = {"inference_port": ports["inference"], "management_port": ports["management"],
              "metrics_port": ports["metrics"], "grpc_inference_port": ports["grpc"],
              "model_store": str(store), "load_models": [f"{model}={model}.mar"],
              "workdir": str(work / "work"), "log_level": "warning",
              "disable_token_auth": True, "model_snapshot": False}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "modelserve", "start", "--config",
                             str(work / "config.yaml")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{ports['inference']}/v2/models/{model}/ready",
                         timeout=1).status_code == 200:
                return proc, ports
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError((work / "server.log").read_text())


def rest_requests(port: int, model: str, x: np.ndarray) -> dict[str, bytes]:
    path = f"/v2/models/{model}/infer"
    json_body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                        "datatype": "FP32", "data": x.ravel().tolist()}]})
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary = header + x.tobytes()
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(binary)}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode()
    npy = io.BytesIO()
    np.save(npy, x[0])
    return {
        "v2 REST JSON": build_request(HOST, port, "POST", path, json_body.encode()),
        "v2 REST binary": head + binary,
        "/predictions .npy": build_request(HOST, port, "POST", f"/predictions/{model}",
                                           npy.getvalue(), "application/x-npy"),
    }


async def grpc_load(port: int, model: str, x: np.ndarray, concurrency: int,
                    duration: float) -> LoadResult:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(
        model_name=model, raw_input_contents=[x.tobytes()],
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=list(x.shape))])
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def loop(stop_at: float, result: LoadResult) -> None:
            while (now := time.perf_counter()) < stop_at:
                await stub.ModelInfer(request)
                result.latencies_s.append(time.perf_counter() - now)
                result.statuses[200] = result.statuses.get(200, 0) + 1

        warm = LoadResult(concurrency, 1.0)
        await asyncio.gather(*(loop(time.perf_counter() + 1.0, warm)
                               for _ in range(concurrency)))
        result = LoadResult(concurrency, duration)
        start = time.perf_counter()
        await asyncio.gather(*(loop(start + duration, result) for _ in range(concurrency)))
        result.duration_s = time.perf_counter() - start
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--model", default="resnet", choices=sorted(SHAPES))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    args = parser.parse_args()
    x = np.random.default_rng(0).random((1, *SHAPES[args.model]), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="v2-bench-") as tmp:
        proc, ports = start_server(args.model_store.resolve(), args.model, Path(tmp))
        try:
            results: dict[str, LoadResult] = {}
            for label, request in rest_requests(ports["inference"], args.model, x).items():
                results[label] = asyncio.run(closed_loop(
                    HOST, ports["inference"], request, args.concurrency, args.duration))
            results["v2 gRPC"] = asyncio.run(grpc_load(
                ports["grpc"], args.model, x, args.concurrency, args.duration))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"{args.model}, one sample per request, concurrency {args.concurrency}, "
          f"{args.duration:g} s per row")
    print(f"{'protocol':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for label, r in results.items():
        print(f"{label:<20}{r.rps:>9.1f}{r.percentile(50) * 1e3:>9.2f}"
              f"{r.percentile(99) * 1e3:>9.2f}{r.errors:>8}")


if __name__ == "__main__":
    main()
