"""Worker process: load the handler once, then answer batches until the frontend says stop.

The batch loops (``lanes``: one, or several threads for a thread-safe handler) are blocking;
the frontend pipelines batches into the socket so the next one is already waiting when a lane
finishes.
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
from pathlib import Path

from modelserve import ipc
from modelserve.worker import envelopes, lanes, ts_compat
from modelserve.worker.batch import BatchRunner
from modelserve.worker.channel import Channel
from modelserve.worker.context import Context
from modelserve.worker.loader import Handler, HandlerLoadError, find_handler
from modelserve.worker.process import die_with_parent, preset_thread_env
from modelserve.worker.streaming import Streamer

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
    p.add_argument("--metrics-config", default=None,
                   help="TorchServe metrics.yaml: its model_metrics are declared up front")
    p.add_argument("--index", type=int, default=0, help="worker number, picks the GPU")
    p.add_argument("--device-type", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--threads", type=int, default=1, help="torch threads, all lanes together")
    p.add_argument("--most-threads", type=int, default=0,
                   help="the most threads the frontend may give it later (0: --threads); "
                        "auto plans its lanes for them")
    p.add_argument("--batch-threads", type=int, default=lanes.AUTO,
                   help="batches run at once (lanes); 0: auto")
    p.add_argument("--envelope", default=None, choices=envelopes.NAMES,
                   help="TorchServe's service_envelope around the handler")
    return p.parse_args(argv)


def _context(args: argparse.Namespace, gpu: int | None) -> Context:
    return Context(
        model_name=args.model_name,
        model_dir=str(args.model_dir),
        manifest=json.loads(args.manifest),
        batch_size=args.batch_size,
        gpu=gpu,
        model_yaml_config=json.loads(args.model_yaml_config),
        metrics_config=args.metrics_config,
    )


def _more_lanes(handler: Handler, count: int, args: argparse.Namespace, gpu: int | None,
                channel: Channel) -> list[BatchRunner]:
    """Batch runners for lanes 1..count-1: each with a copy of the handler, its own context."""
    return [BatchRunner(handler.copy(), _context(args, gpu), Streamer(channel), args.envelope)
            for _ in range(count - 1)]


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
    channel = Channel(sock)
    started = time.perf_counter()
    try:
        preset_thread_env(args.threads)
        gpu = _pick_gpu(args.index, args.device_type)
        context = _context(args, gpu)
        os.chdir(args.model_dir)
        ts_compat.install()  # TorchServe handler files import ts.*
        source = find_handler(args.handler, args.model_dir)
        # lanes for the most threads it may get: a worker started in a pool of several that
        # later serves alone would otherwise stay one lane (issue 29's step at 66 %)
        count = lanes.plan(args.batch_threads, source.thread_safe, gpu,
                           max(args.threads, args.most_threads))
        # before the model loads: onnxruntime sizes its session's thread pool from this
        lanes.set_torch_threads(lanes.threads_each(args.threads, count))
        handler = source.start(context)
        if count > 1 and args.batch_threads == lanes.AUTO and not handler.thread_safe:
            count = 1  # the started handler took it back (a torch.compile'd model)
            lanes.set_torch_threads(args.threads)
        runner = BatchRunner(handler.entry, context, Streamer(channel), args.envelope)
    except BaseException as exc:
        log.error("model failed to load:\n%s", traceback.format_exc())
        message = "".join(traceback.format_exception_only(exc)).strip()
        try:
            # a handler the archive does not have is the client's mistake (400), the rest 500
            status = 400 if isinstance(exc, HandlerLoadError) else 500
            sock.sendall(ipc.encode({"op": "load_failed", "error": message, "status": status}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # nobody is waiting for it
        return 1
    load_ms = (time.perf_counter() - started) * 1000
    device = f"cuda:{gpu}" if gpu is not None else "cpu"
    log.info("loaded in %.0f ms on %s; %d batch lane(s) of %d torch thread(s)%s",
             load_ms, device, count, lanes.threads_each(args.threads, count),
             f" (auto: lane 0 alone on {args.threads} until the others pay)"
             if count > 1 and args.batch_threads == lanes.AUTO else "")
    try:
        signature = runner.v2.signature()
    except Exception:  # metadata is a nicety: serve without it
        log.warning("v2_signature() failed:\n%s", traceback.format_exc())
        signature = None
    # copies are made after the probe, so they share what it cached on the handler
    runners = [runner, *_more_lanes(handler, count, args, gpu, channel)]
    gate = lanes.Gate(channel, count, adaptive=args.batch_threads == lanes.AUTO,
                      threads=args.threads)
    channel.on_threads = gate.set_threads  # the frontend's pool grew or shrank
    ready = {"op": "ready", "pid": os.getpid(), "device": device, "load_ms": load_ms,
             "signature": signature, "batch_threads": gate.open,
             "batch_limit": getattr(handler.instance, "batch_limit", None)}
    try:
        channel.send(ready)
    except (BrokenPipeError, ConnectionResetError):
        # the frontend closed our socket (the model was unregistered while it loaded, or
        # the server stopped): nothing is waiting for an answer
        log.info("the frontend closed the connection; exiting")
        return 0
    lanes.serve(channel, runners, gate)
    return 0
