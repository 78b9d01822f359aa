"""Fuzz the inference and management APIs from their own OpenAPI descriptions (schemathesis).

Every operation gets ``--examples`` generated calls, positive and negative (bad types, missing
parameters, odd bodies); any 5xx, or a server that stops answering /ping, is a failure.
tests/integration/test_fuzz.py runs a short pass in the suite; this script runs a longer one:

    python bench/fuzz_api.py --model-store model_store --examples 200

It starts its own server (token auth off) with the echo-like models of the store, unless
``--inference URL --management URL`` point at a running one.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

# 5xx that are answers, not bugs: 501 (handler has no explain_handle), 503 (no worker,
# overloaded, worker died) and 504 (timeout)
EXPECTED_5XX = {501, 503, 504}


def fuzz(api: str, examples: int, ping: str, headers: dict[str, str] | None = None,
         path_values: dict[str, str] | None = None) -> dict[str, Any]:
    """Fuzz every operation of the API at ``api``; returns counts and failures.

    ``path_values`` (e.g. a registered model's name) are used for the path parameters of a
    third pass, so that generated bodies reach a real handler instead of a 404."""
    schema = schemathesis.openapi.from_url(f"{api}/api-description")
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    start = time.monotonic()
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        names = {p.name for p in op.path_parameters}
        passes: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if names and path_values and names <= path_values.keys():
            passes.append((GenerationMode.POSITIVE, {n: path_values[n] for n in names}))
        for mode, fixed in passes:
            @settings(max_examples=examples, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode, path_parameters=fixed))
            def call(case: Any) -> None:
                response = case.call(base_url=api, headers=headers, timeout=30)
                statuses[response.status_code] += 1
                if response.status_code >= 500 and response.status_code not in EXPECTED_5XX:
                    failures.append(f"{case.method} {case.formatted_path} -> "
                                    f"{response.status_code}: {response.text[:200]}")

            try:
                call()
            except Unsatisfiable:
                pass  # no invalid input exists (e.g. an operation without parameters)
            except Exception as exc:
                failures.append(f"{op.label} ({mode.value}): generation error: {exc!r:.200}")
    alive = httpx.get(ping, timeout=10).status_code < 500
    return {"operations": operations, "calls": sum(statuses.values()),
            "statuses": dict(sorted(statuses.items())), "failures": failures, "alive": alive,
            "seconds": round(time.monotonic() - start, 1)}


def main() -> int:
    import sys
    import tempfile
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--examples", type=int, default=100, help="calls per operation and mode")
    p.add_argument("--inference", help="a running server's inference URL")
    p.add_argument("--management", help="a running server's management URL")
    args = p.parse_args()
    if args.inference and args.management:
        apis = {"inference": args.inference, "management": args.management}
        ping = f"{args.inference}/ping"
        server = None
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.conftest import Server

        server = Server(Path(tempfile.mkdtemp(prefix="fuzz-")), args.model_store.resolve(),
                        ["digits=digits.mar"])
        server.start()
        apis = {"inference": server.inference, "management": server.management}
        ping = f"{server.inference}/ping"
    try:
        report = {
            "inference": fuzz(apis["inference"], args.examples, ping,
                              path_values={"model_name": "digits", "model_version": "1.0"}),
            "management": fuzz(apis["management"], args.examples, ping),
        }
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(report, indent=2))
    return 0 if all(not r["failures"] and r["alive"] for r in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
