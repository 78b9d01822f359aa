"""Worker process main loop: load once, then read a batch, run the handler, write results.

The loop is single-threaded and blocking; the frontend pipelines batches into the socket so
the next batch is already waiting when one finishes.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from modelserve import ipc
from modelserve.worker import streaming, ts_compat
from modelserve.worker.codec import StreamFound, decode_request, encode_response, error_response
from modelserve.worker.context import Context
from modelserve.worker.loader import Entry, load_entry
from modelserve.worker.process import die_with_parent, preset_thread_env
from modelserve.worker.v2 import V2Runner

log = logging.getLogger("modelserve.worker")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m modelserve.worker")
    p.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--model-version", required=True)
    p.add_argument("--handler", required=True)
    p.add_argument("--manifest", required=True, help="MANIFEST.json contents")
    p.add_argument("--model-yaml-config", default="{}", help="model-config.yaml as JSON")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--index", type=int, default=0, help="worker number, picks the GPU")
    p.add_argument("--device-type", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _apply_torch_threads(threads: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _pick_gpu(index: int, device_type: str) -> int | None:
    """Worker i uses cuda:(i mod count) when a GPU is present and not refused."""
    if device_type == "cpu" or not glob.glob("/dev/nvidia[0-9]*"):
        return None  # no NVIDIA device node: skip importing torch just to ask
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return index % torch.cuda.device_count()
    return None


class Worker:
    def __init__(self, entry: Entry, context: Context, streamer: streaming.Streamer) -> None:
        self.entry = entry
        self.context = context
        self.v2 = V2Runner(entry, streamer)
        self.streamer = streamer

    def run_batch(self, reqs: list[list[Any]]) -> list[list[Any]]:
        """Run one batch; on a handler error, retry each request alone so one bad request
        cannot fail the others (unless chunks of a streamed answer already went out)."""
        try:
            return self._call(reqs)
        except streaming.StreamCancelled:
            return self.streamer.placeholders(len(reqs))
        except Exception as exc:  # the handler's own failure
            if self.streamer.active:
                log.warning("handler failed mid-stream: %s",
                            "".join(traceback.format_exception_only(exc)))
                return self.streamer.fail(exc, len(reqs))
            if len(reqs) == 1:
                log.warning("handler failed: %s", "".join(traceback.format_exception_only(exc)))
                return [error_response(exc)]
        out: list[list[Any]] = []
        for i, req in enumerate(reqs):
            self.streamer.offset, self.streamer.active = i, False
            try:
                out.extend(self._call([req]))
            except streaming.StreamCancelled:
                out.extend(self.streamer.placeholders(1))
            except Exception as exc:
                if self.streamer.active:
                    out.extend(self.streamer.fail(exc, 1))
                    continue
                log.warning("handler failed: %s", "".join(traceback.format_exception_only(exc)))
                out.append(error_response(exc))
        return out

    def _call(self, reqs: list[list[Any]]) -> list[list[Any]]:
        """TorchServe requests and OIP v2 requests (a fifth item) of one batch each go to
        the handler as their own batch; answers keep the batch's order."""
        v2 = [len(r) > 4 for r in reqs]
        if not any(v2):
            return self._call_ts(reqs)
        if all(v2):
            return self._call_v2(reqs)
        # each part streams at its requests' own positions; "chunks went out" (no retry-alone
        # of the batch) holds for the batch when it holds for either part
        streamer, streamed = self.streamer, self.streamer.active
        try:
            with streamer.subset([i for i, is_v2 in enumerate(v2) if not is_v2]):
                ts_out = iter(self._call_ts([r for r, is_v2 in zip(reqs, v2) if not is_v2]))
            streamed, streamer.active = streamed or streamer.active, False
            with streamer.subset([i for i, is_v2 in enumerate(v2) if is_v2]):
                v2_out = iter(self._call_v2([r for r, is_v2 in zip(reqs, v2) if is_v2]))
        finally:
            streamer.active = streamed or streamer.active
        return [next(v2_out) if is_v2 else next(ts_out) for is_v2 in v2]

    def _call_v2(self, reqs: list[list[Any]]) -> list[list[Any]]:
        self.context.begin_batch([r[0] for r in reqs], [r[3] for r in reqs])
        return self.v2.run([r[4] for r in reqs], self.context)

    def _call_ts(self, reqs: list[list[Any]]) -> list[list[Any]]:
        ctx = self.context
        ctx.begin_batch([r[0] for r in reqs], [r[3] for r in reqs])
        data = [decode_request(content_type, body) for _, content_type, body, _ in reqs]
        results = self.entry(data, ctx)
        if not isinstance(results, list):
            if streaming.is_stream(results):
                return self.streamer.run_steps(results, len(reqs), ctx)
            raise TypeError(f"handler returned {type(results).__name__}, expected a list")
        if len(results) != len(reqs):
            raise ValueError(
                f"handler returned {len(results)} results for a batch of {len(reqs)} requests"
            )
        if self.streamer.active:  # it sent intermediate responses: these are the last chunks
            return self.streamer.finish(results, ctx)
        try:
            return [encode_response(result, idx, ctx) for idx, result in enumerate(results)]
        except StreamFound:  # some results are generators
            return self.streamer.run_list(results, ctx)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    die_with_parent()
    # Ctrl-C and a group-wide SIGTERM (systemd, `timeout`) are the frontend's to handle: it
    # drains and stops its workers; if the frontend dies, the socket closes and we exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format="%(levelname)s %(message)s",  # the frontend adds time and worker id
        stream=sys.stderr,
    )
    sock = socket.socket(fileno=args.fd)
    started = time.perf_counter()
    try:
        preset_thread_env(args.threads)
        gpu = _pick_gpu(args.index, args.device_type)
        context = Context(
            model_name=args.model_name,
            model_dir=str(args.model_dir),
            manifest=json.loads(args.manifest),
            batch_size=args.batch_size,
            gpu=gpu,
            model_yaml_config=json.loads(args.model_yaml_config),
        )
        os.chdir(args.model_dir)
        ts_compat.install()  # TorchServe handler files import ts.*
        inbox: deque[dict[str, Any] | None] = deque()  # frames read while streaming
        streamer = streaming.Streamer(sock, inbox)
        streaming.install(streamer)
        worker = Worker(load_entry(args.handler, args.model_dir, context), context, streamer)
        _apply_torch_threads(args.threads)
    except BaseException as exc:
        log.error("model failed to load:\n%s", traceback.format_exc())
        message = "".join(traceback.format_exception_only(exc)).strip()
        try:
            sock.sendall(ipc.encode({"op": "load_failed", "error": message}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # nobody is waiting for it
        return 1
    load_ms = (time.perf_counter() - started) * 1000
    device = f"cuda:{gpu}" if gpu is not None else "cpu"
    log.info("loaded in %.0f ms on %s", load_ms, device)
    try:
        signature = worker.v2.signature()
    except Exception:  # metadata is a nicety: serve without it
        log.warning("v2_signature() failed:\n%s", traceback.format_exc())
        signature = None
    ready = {"op": "ready", "pid": os.getpid(), "device": device, "load_ms": load_ms,
             "signature": signature}
    try:
        sock.sendall(ipc.encode(ready))
        return _serve(sock, inbox, worker, streamer, context)
    except (BrokenPipeError, ConnectionResetError):
        # the frontend closed our socket (the model was unregistered while it loaded, or
        # the server stopped): nothing is waiting for an answer
        log.info("the frontend closed the connection; exiting")
        return 0


def _serve(sock: socket.socket, inbox: deque[dict[str, Any] | None], worker: Worker,
           streamer: streaming.Streamer, context: Context) -> int:
    """Answer batches until the frontend says stop or closes the socket."""
    while True:
        msg = inbox.popleft() if inbox else ipc.recv_frame(sock)
        if msg is None or msg["op"] == "stop":
            return 0
        if msg["op"] == "infer":  # ("cancel" of a stream that already ended: nothing to do)
            streamer.begin(msg["id"], len(msg["reqs"]))
            t0 = time.perf_counter()
            out = worker.run_batch(msg["reqs"])
            ms = (time.perf_counter() - t0) * 1000
            metrics = context.metrics.drain()
            sock.sendall(ipc.encode({"op": "result", "id": msg["id"], "out": out, "ms": ms,
                                     "metrics": metrics}))
