r"""TorchServe 0.12 and modelserve side by side: same archives, same settings, same load.

``--ts-handler``: the drop-in case instead (issue 19: the user's own TorchServe handler,
``torch-model-archiver`` archives and one config.properties for both servers, loaded as
``--models a=a.mar b=b.mar``): every other argument goes to ``bench/ts_dropin.py``, whose
docstring is the recipe.

Both servers get the same workers per model (``--workers``, default 1; with more, both get
``OMP_NUM_THREADS`` = cores / workers), batch size 8, ``max_batch_delay`` 5 ms, JSON bodies,
and the same TorchServe-style handler (``ts_tensor_handler.py``; modelserve runs it through its
``ts.*`` aliases), which modelserve runs one batch at a time as TorchServe does; a second
modelserve row serves it with ``batchThreads`` = cores / workers in its model-config.yaml
(batch lanes; README), where that is more than one. modelserve is also measured with its
built-in ``tensor_handler`` archives (batch lanes ``auto``).
TorchServe runs with a WARN-level log4j2 config and ``disable_system_metrics=true``.

Setup (not part of ``make test``; TorchServe needs Java 17):

    python3 -m venv bench/.ts-venv
    bench/.ts-venv/bin/pip install torch==2.13.0 torchserve==0.12.0 torch-model-archiver==0.12.0 \
        pyyaml psutil
    .venv/bin/python bench/compare_torchserve.py --model-store model_store [--workers 2] \
        [--rounds 3]
    .venv/bin/python bench/compare_torchserve.py --model-store model_store --memory-only

``--rounds N`` runs the servers N times in turn and reports the median of each number, with
every round's req/s beside it. ``--memory-only`` registers every model in one server of each
kind (one worker each, as a deployment serving both would) and prints the idle PSS of each
server's process tree.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench  # noqa: E402
from serve_bench import (  # noqa: E402
    HOST,
    bodies,
    descendants,
    free_port,
    pss_mb,
    run_load,
    scale,
)
from ts_dropin_setup import LOG4J2  # noqa: E402  (TorchServe's logging at WARN)

from modelserve.archive import create_archive  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPES = {"digits": [1, 8, 8], "resnet": [3, 64, 64]}
TOP_K = {"digits": 1, "resnet": 5}


def tree_pss_mb(pid: int) -> float:
    """Sum of PSS over a process tree: shared libraries count once across processes."""
    return pss_mb([pid, *descendants(pid)])


def ts_archive(store: Path, src_store: Path, model: str, work: Path,
               batch_threads: int | None = None) -> str:
    """The example's TorchScript model with the TorchServe-style handler; with
    ``batch_threads``, model-config.yaml also says ``batchThreads`` (modelserve's key: the
    handler may run that many batches at once in one worker)."""
    with zipfile.ZipFile(src_store / f"{model}.mar") as zf:
        zf.extract(f"{model}.pt", work)
    name = f"{model}_ts" if batch_threads is None else f"{model}_ts_bt{batch_threads}"
    config = work / f"{name}-config.yaml"
    config.write_text(yaml.safe_dump({
        "minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5,
        "responseTimeout": 120,
        "handler": {"input_shape": SHAPES[model], "top_k": TOP_K[model]},
        **({} if batch_threads is None else {"batchThreads": batch_threads}),
    }))
    create_archive(model_name=name, version="1.0",
                   handler=str(HERE / "ts_tensor_handler.py"), serialized_file=work / f"{model}.pt",
                   config_file=config, export_path=store, force=True)
    return f"{name}.mar"


def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                workers = json.loads(r.read())[0].get("workers", [])
                if workers and all(w["status"] == "READY" for w in workers):
                    return
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"model not ready: {url}")


def ready_or_stop(proc: subprocess.Popen, url: str) -> None:
    """Wait for the model; a server that never gets there is stopped, not left behind."""
    try:
        wait_ready(url)
    except BaseException:
        stop(proc)
        raise


def start_torchserve(ts_python: Path, store: Path, archives: list[str], work: Path,
                     extra_env: dict[str, str]) -> tuple:
    ports = [free_port() for _ in range(3)]
    (work / "log4j2.xml").write_text(LOG4J2)
    props = work / "config.properties"
    props.write_text("\n".join([
        f"inference_address=http://{HOST}:{ports[0]}",
        f"management_address=http://{HOST}:{ports[1]}",
        f"metrics_address=http://{HOST}:{ports[2]}",
        "disable_token_authorization=true", "enable_model_api=true",
        "disable_system_metrics=true", "default_workers_per_model=1",
        f"vmargs=-Dlog4j.configurationFile=file://{work / 'log4j2.xml'}",
    ]) + "\n")
    bin_dir = ts_python.parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG_LOCATION": str(work),
           "METRICS_LOCATION": str(work), **extra_env}
    # a previous run killed in foreground mode leaves a pid file that blocks the next start
    subprocess.run([str(bin_dir / "torchserve"), "--stop"], env=env, capture_output=True)
    proc = subprocess.Popen(
        [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--model-store",
         str(store), "--ts-config", str(props), "--models", *(f"{a[:-4]}={a}" for a in archives)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=work,
        start_new_session=True)
    for archive in archives:
        ready_or_stop(proc, f"http://{HOST}:{ports[1]}/models/{archive[:-4]}")
    return proc, ports


def start_modelserve(store: Path, archives: list[str], work: Path) -> tuple:
    ports = [free_port() for _ in range(3)]
    config = work / "modelserve.yaml"
    config.write_text(yaml.safe_dump({
        "inference_port": ports[0], "management_port": ports[1], "metrics_port": ports[2],
        "model_store": str(store), "load_models": [f"{a[:-4]}={a}" for a in archives],
        "workdir": str(work / f"ms-{archives[0][:-4]}"), "log_level": "warning",
        "model_snapshot": False, "grpc_inference_port": free_port(),
        "disable_token_auth": True,  # measure serving, not auth (test_auth.py covers it)
    }))
    proc = subprocess.Popen([sys.executable, "-m", "modelserve", "start", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for archive in archives:
        ready_or_stop(proc, f"http://{HOST}:{ports[1]}/models/{archive[:-4]}")
    return proc, ports


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def measure(name: str, proc: subprocess.Popen, port: int, model: str, path_model: str,
            concurrencies: list[int], duration: float) -> list[dict]:
    body, ctype = bodies(model)["json"]
    time.sleep(2)  # let start-up work settle before measuring idle memory
    idle = tree_pss_mb(proc.pid)
    rows = []
    for c in concurrencies:
        r = run_load(port, f"/predictions/{path_model}", body, ctype, c, duration)
        rows.append({"server": name, "model": model, "c": c, "rps": r.rps,
                     "p50": r.percentile(50) * 1e3, "p99": r.percentile(99) * 1e3,
                     "errors": r.errors, "idle_pss_mb": idle, "pss_mb": tree_pss_mb(proc.pid)})
    return rows


def main() -> None:
    if "--ts-handler" in sys.argv[1:]:
        import ts_dropin

        ts_dropin.main([a for a in sys.argv[1:] if a != "--ts-handler"])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--ts-python", type=Path, default=HERE / ".ts-venv" / "bin" / "python")
    parser.add_argument("--models", nargs="+", default=["digits", "resnet"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--loadgen", choices=["wrk", "python"], default=serve_bench.LOADGEN,
                        help="load generator (default: wrk when installed)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="workers per model, both servers")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times, interleaved; report medians")
    parser.add_argument("--memory-only", action="store_true",
                        help="idle PSS with every model registered in one server of each kind")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.memory_only:
        memory_only(args)
        return
    serve_bench.LOADGEN = args.loadgen
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ts-compare-") as tmp:
        work = Path(tmp)
        store = work / "store"
        store.mkdir()
        src = args.model_store.resolve()
        per_worker = max(1, len(os.sched_getaffinity(0)) // args.workers)
        threads = {} if args.workers == 1 else {"OMP_NUM_THREADS": str(per_worker)}
        ts_archives = {model: ts_archive(store, src, model, work) for model in args.models}
        # the same handler, declared safe to run one batch per torch thread at once
        lane_archives = {model: ts_archive(store, src, model, work, per_worker)
                         for model in args.models} if per_worker > 1 else {}
        for model, round_ in itertools.product(args.models, range(args.rounds)):
            archive = ts_archives[model]
            for name, starter, run_store, run_archive in (
                ("torchserve", lambda a, s: start_torchserve(args.ts_python, s, [a], work,
                                                             threads),
                 store, archive),
                # modelserve's workers sleep idle OpenMP threads; give TorchServe the same
                ("torchserve OMP_WAIT_POLICY=PASSIVE",
                 lambda a, s: start_torchserve(args.ts_python, s, [a], work,
                                               {"OMP_WAIT_POLICY": "PASSIVE", **threads}),
                 store, archive),
                ("modelserve (same ts handler)", lambda a, s: start_modelserve(s, [a], work),
                 store, archive),
                *([(f"modelserve (ts handler, {per_worker} lanes)",
                    lambda a, s: start_modelserve(s, [a], work), store, lane_archives[model])]
                  if model in lane_archives else []),
                ("modelserve (tensor_handler)", lambda a, s: start_modelserve(s, [a], work),
                 src, f"{model}.mar"),
            ):
                proc, ports = starter(run_archive, run_store)
                try:
                    if args.workers != 1:
                        scale(ports[1], run_archive[:-4], args.workers)
                    rows += [{**row, "round": round_} for row in measure(
                        name, proc, ports[0], model, run_archive[:-4], args.concurrency,
                        args.duration)]
                finally:
                    stop(proc)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if args.rounds > 1:
        print(f"each row: round {' / '.join(str(r) for r in range(args.rounds))}; "
              "the ratios compare medians")
        rows = medians(rows)
    print(f"{'server':34} {'model':7} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'err':>4} {'PSS idle':>9} {'PSS load':>9}")
    for r in rows:
        print(f"{r['server']:34} {r['model']:7} {r['c']:>3} {r['rps']:>8.1f} {r['p50']:>8.2f} "
              f"{r['p99']:>8.2f} {r['errors']:>4} {r['idle_pss_mb']:>8.0f}M "
              f"{r['pss_mb']:>8.0f}M  {' / '.join(map(str, r.get('rounds', [])))}")
    base: dict[tuple[str, int], dict] = {}
    for r in rows:  # the better TorchServe configuration is the baseline
        key = (r["model"], r["c"])
        if r["server"].startswith("torchserve") and r["rps"] > base.get(key, {}).get("rps", -1):
            base[key] = r
    print("\nratios vs the faster TorchServe configuration (throughput x, p99 x, idle PSS x):")
    for r in rows:
        ts = base.get((r["model"], r["c"]))
        if ts and not r["server"].startswith("torchserve") and ts["rps"]:
            print(f"  {r['server']:34} {r['model']:7} c={r['c']:<3} "
                  f"{r['rps'] / ts['rps']:.2f}x throughput, {r['p99'] / ts['p99']:.2f}x p99, "
                  f"{r['idle_pss_mb'] / ts['idle_pss_mb']:.2f}x idle PSS")


def medians(rows: list[dict]) -> list[dict]:
    """One row per server, model and concurrency: the median of each number over the
    rounds (a machine whose speed drifts by ±10 % between runs needs more than one)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["server"], r["model"], r["c"]), []).append(r)
    out = []
    for group in groups.values():
        row = {**group[0], "rounds": [round(r["rps"], 1) for r in group]}
        for key in ("rps", "p50", "p99", "idle_pss_mb", "pss_mb"):
            row[key] = statistics.median(r[key] for r in group)
        row["errors"] = sum(r["errors"] for r in group)
        out.append(row)
    return out


def memory_only(args: argparse.Namespace) -> None:
    """Idle PSS of each server's whole process tree with every model registered."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="ts-compare-") as tmp:
        work = Path(tmp)
        store = work / "store"
        store.mkdir()
        src = args.model_store.resolve()
        archives = [ts_archive(store, src, model, work) for model in args.models]
        for name, starter in (
            ("torchserve", lambda: start_torchserve(args.ts_python, store, archives, work, {})),
            ("modelserve (same ts handler)", lambda: start_modelserve(store, archives, work)),
            ("modelserve (tensor_handler)",
             lambda: start_modelserve(src, [f"{m}.mar" for m in args.models], work)),
        ):
            proc, _ = starter()
            try:
                time.sleep(5)  # let start-up work settle
                pids = [proc.pid, *descendants(proc.pid)]
                rows.append({"server": name, "models": args.models, "processes": len(pids),
                             "idle_pss_mb": pss_mb(pids)})
            finally:
                stop(proc)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    base = rows[0]["idle_pss_mb"]
    print(f"idle PSS, models {' + '.join(args.models)}, one worker each:")
    for r in rows:
        print(f"  {r['server']:30} {r['processes']} processes {r['idle_pss_mb']:7.0f} MB "
              f"({r['idle_pss_mb'] / base:.2f}x TorchServe)")


if __name__ == "__main__":
    main()
