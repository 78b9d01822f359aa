r"""Triton's perf_analyzer (2.41, C++) against modelserve, over OIP v2 HTTP and gRPC.

For each model, protocol and batch size (``-b``, up to the model's ``max_batch_size``) it runs
perf_analyzer once per concurrency (2.41's ``--concurrency-range`` steps by adding, so the
doubling 1, 2, 4 ... 32 is one run each), in ``count_windows`` mode, with ``--shape`` for each
input's non-batch dimensions, and merges the CSVs (``-f``) into
``<out>/perf_analyzer-<model>-<protocol>-b<batch>.csv``. The table it prints has perf_analyzer's
client numbers and its server-side breakdown (overhead / queue / compute), which perf_analyzer
reads from ``/v2/models/{m}/stats`` (gRPC: ModelStatistics) before and after each window.

    make perf-analyzer examples        # the venv (bench/out/perf-analyzer-venv) and archives
    .venv/bin/python bench/perf_analyzer.py --model-store model_store \
        [--models digits_onnx digits] [--protocols http grpc] [--batch 1 4] \
        [--concurrency 1 2 4 8 16 32] [--request-count 500] [--auth] [--record]

``--auth`` starts the server with token auth and sends ``-H 'authorization: Bearer KEY'``
(lower case: gRPC refuses upper-case metadata keys, and perf_analyzer's gRPC client aborts on
one). ``--record`` appends the table to bench/RESULTS.md: use it on a quiet machine only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_analyzer_install  # noqa: E402
import results_md  # noqa: E402
from serve_bench import HOST, ServerUnderTest  # noqa: E402

HERE = Path(__file__).resolve().parent
SERVER_LINE = re.compile(
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ "
    r"compute input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)")


class PassFailed(RuntimeError):
    """perf_analyzer exited with an error; the message ends with its output."""


@dataclass
class PassResult:
    """One perf_analyzer run at one concurrency: its CSV row and its server-side breakdown
    (microseconds per request, from the model's statistics)."""

    csv_header: list[str]
    csv_row: list[str]
    server_us: dict[str, int]
    stdout: str

    def client(self, column: str) -> float:
        return float(self.csv_row[self.csv_header.index(column)])


def model_shapes(base_url: str, model: str, headers: dict[str, str]) -> dict[str, list[int]]:
    """Each input's dimensions after the batch dimension, from the v2 metadata."""
    request = urllib.request.Request(f"{base_url}/v2/models/{model}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        meta = json.loads(r.read())
    return {t["name"]: t["shape"][1:] for t in meta["inputs"]}


def max_batch_size(base_url: str, model: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{base_url}/v2/models/{model}/config", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        return int(json.loads(r.read())["max_batch_size"])


def run_pass(pa: perf_analyzer_install.PerfAnalyzer, model: str, protocol: str, url: str,
             shapes: dict[str, list[int]], batch: int, concurrency: int, csv_path: Path,
             request_count: int = 500, stability_percent: float = 10, max_trials: int = 10,
             headers: dict[str, str] | None = None, timeout: float = 600) -> PassResult:
    """One perf_analyzer run; raises PassFailed with its output when it fails."""
    args = ["-m", model, "-u", url, "-i", protocol, "-b", str(batch),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-mode", "count_windows",
            "--measurement-request-count", str(request_count),
            "-s", f"{stability_percent:g}", "-r", str(max_trials), "-f", str(csv_path)]
    for name, dims in shapes.items():
        if dims:
            args += ["--shape", f"{name}:{','.join(str(d) for d in dims)}"]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    try:
        out = pa.run(args, timeout)
    except subprocess.TimeoutExpired as exc:
        raise PassFailed(f"perf_analyzer {' '.join(args)}: no answer in {timeout:g} s") from exc
    text = out.stdout + out.stderr
    if out.returncode != 0 or not csv_path.is_file():
        raise PassFailed(f"perf_analyzer {' '.join(args)} exited with {out.returncode}:\n"
                         f"{text[-3000:]}")
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))
    match = SERVER_LINE.search(text)
    server = {} if match is None else dict(zip(
        ("request", "overhead", "queue", "compute_input", "compute_infer", "compute_output"),
        (int(g) for g in match.groups()), strict=True))
    return PassResult(rows[0], rows[1], server, text)


def table(rows: list[dict]) -> str:
    lines = [f"{'model':12} {'proto':5} {'b':>2} {'c':>3} {'infer/s':>9} {'p50 ms':>7} "
             f"{'p99 ms':>7}   server us/request: {'total':>6} {'queue':>6} {'compute':>7} "
             f"{'overhead':>8}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:12} {r['protocol']:5} {r['batch']:>2} {r['c']:>3} "
                         f"FAILED: {r['error']}")
            continue
        s = r["server"]
        compute = s.get("compute_input", 0) + s.get("compute_infer", 0) + \
            s.get("compute_output", 0)
        lines.append(
            f"{r['model']:12} {r['protocol']:5} {r['batch']:>2} {r['c']:>3} "
            f"{r['infer_s']:>9.1f} {r['p50_us'] / 1e3:>7.2f} {r['p99_us'] / 1e3:>7.2f}   "
            f"{'':>19}{s.get('request', 0):>6} {s.get('queue', 0):>6} {compute:>7} "
            f"{s.get('overhead', 0):>8}")
    return "\n".join(lines)


def inference_key(workdir: Path) -> str:
    """The inference key the server wrote into its workdir (token auth on)."""
    key_file = workdir / "work" / "key_file.json"
    out = subprocess.run([sys.executable, "-m", "modelserve", "key", "inference",
                          "--key-file", str(key_file)], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def bench_model(pa: perf_analyzer_install.PerfAnalyzer, args: argparse.Namespace, model: str,
                out_dir: Path) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pa-bench-") as tmp:
        work = Path(tmp)
        server = ServerUnderTest(args.model_store.resolve(), model, work,
                                 extra={"disable_token_auth": not args.auth})
        try:
            headers = {}
            if args.auth:
                headers["authorization"] = f"Bearer {inference_key(work)}"
            base = f"http://{HOST}:{server.ports[0]}"
            shapes = model_shapes(base, model, headers)
            largest = max(1, max_batch_size(base, model, headers))
            urls = {"http": f"{HOST}:{server.ports[0]}", "grpc": f"{HOST}:{server.ports[3]}"}
            for protocol in args.protocols:
                for batch in [b for b in args.batch if b <= largest]:
                    merged: list[list[str]] = []
                    for c in args.concurrency:
                        row = {"model": model, "protocol": protocol, "batch": batch, "c": c}
                        try:
                            r = run_pass(pa, model, protocol, urls[protocol], shapes, batch, c,
                                         work / f"{protocol}-b{batch}-c{c}.csv",
                                         args.request_count, args.stability, args.max_trials,
                                         headers)
                        except PassFailed as exc:
                            print(exc, file=sys.stderr)
                            rows.append({**row, "error": str(exc).splitlines()[-1][:80]})
                            continue
                        merged = merged or [r.csv_header]
                        merged.append(r.csv_row)
                        rows.append({**row, "infer_s": r.client("Inferences/Second"),
                                     "p50_us": r.client("p50 latency"),
                                     "p99_us": r.client("p99 latency"), "server": r.server_us})
                        print(table(rows[-1:]).splitlines()[-1], flush=True)
                    if merged:
                        path = out_dir / f"perf_analyzer-{model}-{protocol}-b{batch}.csv"
                        with path.open("w", newline="") as f:
                            csv.writer(f).writerows(merged)
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--models", nargs="+", default=["digits_onnx", "digits"])
    parser.add_argument("--protocols", nargs="+", choices=["http", "grpc"],
                        default=["http", "grpc"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4],
                        help="perf_analyzer -b values (those above max_batch_size are skipped)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--request-count", type=int, default=500,
                        help="--measurement-request-count: requests per window")
    parser.add_argument("--stability", type=float, default=10,
                        help="-s: windows agree within this many percent (perf_analyzer's 10)")
    parser.add_argument("--max-trials", type=int, default=10, help="-r: windows at most")
    parser.add_argument("--auth", action="store_true",
                        help="token auth on; the key goes in perf_analyzer's -H")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="where the merged CSVs go")
    parser.add_argument("--record", action="store_true",
                        help="append the table to bench/RESULTS.md (quiet machine only)")
    args = parser.parse_args()
    try:
        pa = perf_analyzer_install.ensure()
    except perf_analyzer_install.InstallError as exc:
        sys.exit(f"perf_analyzer is not installable here: {exc}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row for model in args.models for row in bench_model(pa, args, model, args.out)]
    text = table(rows)
    print(f"\n{text}\nCSVs in {args.out}")
    if args.record:
        results_md.record("perf_analyzer 2.41 over OIP v2 HTTP and gRPC (issue 22)", [text],
                          "Client numbers are perf_analyzer's; the server breakdown is its "
                          "reading of the model's statistics (microseconds per request).")
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
