"""The image of docker/Dockerfile built and run, and docker/compose.yaml started, for real.

docker/engine.sh sets the engine up (a Docker engine that answers, else podman, installed
with apt-get where it is missing) and builds the CPU image; these tests skip only when it
exits 3: no engine is there and none can be installed. The build runs once per session
(`make test` starts it in the background while the other tests run, and
tests/integration/conftest.py puts this module last), and every layer is reused.

As a user would: the image runs with the example model store as a volume, as a non-root
user; /ping, its HEALTHCHECK, a prediction and the management API with the keys the
container wrote, /metrics; `stop` drains in-flight requests and exits 0 within the grace
period; its compressed size is below TorchServe's CPU image. Compose: modelserve and
Prometheus started with `compose up` from the file as it is (a test override mounts the
model store and, where prom/prometheus cannot be pulled, names a Prometheus built from
Debian's package); Prometheus scrapes the server by its service name and loads the alerts.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from modelserve.cli import DIGIT_ZERO
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SH = ROOT / "docker" / "engine.sh"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
# pytorch/torchserve:0.12.0-cpu, linux/amd64: 702 MB of compressed layers (docker/README.md
# says where the figure comes from).
TORCHSERVE_CPU_MB = 702
STORE_ARCHIVES = ("digits.mar", "digits_onnx.mar", "echo.mar")
TIMINGS: dict[str, str] = {}

# The first test waits for the engine's set-up and the build (minutes on a new machine).
pytestmark = pytest.mark.timeout(1800)


@dataclass
class Engine:
    name: str  # docker or podman
    compose: list[str]
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([self.name, *args], timeout, check)

    def run(self, argv: list[str], timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(argv)}: exit {result.returncode}\n"
                                 f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result


@dataclass
class Image:
    tag: str
    compressed: Future[int] = field(repr=False)


def compose_file() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """The image's size and how long each part took, on the terminal at the end."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if TIMINGS and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\ncontainer tests: " +
                                "; ".join(f"{k} {v}" for k, v in TIMINGS.items()))


@pytest.fixture(scope="session")
def engine() -> Engine:
    started = time.monotonic()
    result = subprocess.run(["bash", str(ENGINE_SH), "env"], capture_output=True, text=True,
                            timeout=1500, stdin=subprocess.DEVNULL)
    if result.returncode == 3:
        pytest.skip(f"no container engine can be had here: {result.stderr.strip()}")
    assert result.returncode == 0, f"docker/engine.sh env:\n{result.stdout}{result.stderr}"
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    env = dict(os.environ)
    if values["CONTAINERS_CONF"]:
        env["CONTAINERS_CONF"] = values["CONTAINERS_CONF"]
    TIMINGS["engine set-up"] = f"{time.monotonic() - started:.0f} s"
    return Engine(values["ENGINE"], values["COMPOSE"].split(), env)


def gzip_size(proc: subprocess.Popen[bytes]) -> int:
    """Bytes of ``save``'s archive (``proc``'s output) compressed by zlib at level 1: no less
    than the gzip (level 6) layers a registry would store, so an upper bound of the download."""
    assert proc.stdout is not None
    compressor, size = zlib.compressobj(1), 0
    while chunk := proc.stdout.read(1 << 20):
        size += len(compressor.compress(chunk))
    size += len(compressor.flush())
    assert proc.wait() == 0, f"save failed: exit {proc.returncode}"
    return size


@pytest.fixture(scope="session")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """The CPU image, tagged as compose.yaml names it; its compressed size is measured in the
    background while the other tests run."""
    tag = compose_file()["services"]["modelserve"]["image"]
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(["bash", str(ENGINE_SH), "build", tag], stdout=out,
                              stderr=subprocess.STDOUT, timeout=1500,
                              stdin=subprocess.DEVNULL).returncode
    assert code == 0, f"docker/engine.sh build {tag}:\n{log.read_text()[-6000:]}"
    TIMINGS["build (cached layers reused)"] = f"{time.monotonic() - started:.0f} s"
    save = subprocess.Popen([engine.name, "save", tag], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=engine.env)
    with ThreadPoolExecutor(1) as pool:
        yield Image(tag, pool.submit(gzip_size, save))
        save.kill()  # when the size test did not run (a -k selection), stop measuring


@pytest.fixture(scope="module")
def store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example archives (and the echo one) in a folder the container's user can read."""
    folder = tmp_path_factory.mktemp("container-store")
    folder.chmod(0o755)
    for name in STORE_ARCHIVES:
        (folder / name).write_bytes((model_store / name).read_bytes())
        (folder / name).chmod(0o644)
    return folder


class Container:
    """``run -d`` of the image with the store as its volume, ports on free loopback ports."""

    def __init__(self, engine: Engine, image: Image, store: Path, load: list[str]) -> None:
        self.engine, self.image, self.store, self.load = engine, image, store, load
        self.name = f"modelserve-test-{os.getpid()}-{free_port()}"

    def start(self, timeout: float = 180) -> Container:
        for attempt in range(3):
            self.ports = {api: free_port() for api in (8080, 8081, 8082)}
            published = [f"-p=127.0.0.1:{host}:{api}" for api, host in self.ports.items()]
            run = self.engine("run", "-d", "--name", self.name, *published,
                              "-v", f"{self.store}:/home/model-server/model-store:ro",
                              "-e", f"MODELSERVE_LOAD_MODELS={json.dumps(self.load)}",
                              self.image.tag, check=False)
            if run.returncode == 0:
                break
            self.engine("rm", "-f", self.name, check=False)
            if attempt == 2 or "address already in use" not in run.stderr:
                raise AssertionError(f"{self.engine.name} run: {run.stderr[-3000:]}")
        self.inference = f"http://127.0.0.1:{self.ports[8080]}"
        self.management = f"http://127.0.0.1:{self.ports[8081]}"
        self.metrics = f"http://127.0.0.1:{self.ports[8082]}/metrics"
        try:
            wait_for(self._ready, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(f"not ready in {timeout} s:\n{self.logs()[-4000:]}") from None
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.inference}/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def exec(self, *argv: str) -> str:
        return self.engine("exec", self.name, *argv).stdout.strip()

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        self.engine("rm", "-f", self.name, check=False, timeout=60)


@pytest.fixture(scope="module")
def container(engine: Engine, image: Image, store: Path) -> Iterator[Container]:
    started = time.monotonic()
    running = Container(engine, image, store,
                        ["digits=digits.mar", "digits_onnx=digits_onnx.mar"])
    try:
        running.start()
        TIMINGS["run to ready"] = f"{time.monotonic() - started:.0f} s"
        yield running
    finally:
        running.remove()


def test_runs_as_the_non_root_user(engine: Engine, image: Image, container: Container) -> None:
    config = json.loads(engine("image", "inspect", image.tag).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    uids = container.exec("python", "-c", "import os; print(sorted({os.stat(f'/proc/{p}')"
                          ".st_uid for p in os.listdir('/proc') if p.isdigit()}))")
    assert uids == "[1000]", "every process (server, zygote, workers) runs as uid 1000"
    assert container.exec("id", "-un") == "model-server"


def test_ping_and_the_image_healthcheck(engine: Engine, image: Image,
                                        container: Container) -> None:
    r = httpx.get(f"{container.inference}/ping", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}
    info = json.loads(engine("image", "inspect", image.tag).stdout)[0]
    check = info["Config"].get("Healthcheck") or info["Healthcheck"]  # docker's, podman's
    kind, *command = check["Test"]
    assert kind == "CMD"
    engine("exec", container.name, *command)  # exit 0, as the engine's health check needs


def test_prediction_with_the_inference_key(container: Container) -> None:
    key = container.exec("modelserve", "key", "inference")  # as docker/README.md says
    url = f"{container.inference}/predictions/digits"
    assert httpx.post(url, json=DIGIT_ZERO, timeout=60).status_code == 401
    for model in ("digits", "digits_onnx"):
        r = httpx.post(f"{container.inference}/predictions/{model}", json=DIGIT_ZERO,
                       headers=bearer(key), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["class"] == 0 and r.json()["label"] == "zero"


def test_management_api_with_the_key_the_container_wrote(container: Container) -> None:
    keys = json.loads(container.exec("cat", "/home/model-server/.modelserve/key_file.json"))
    key = keys["management"]["key"]
    assert httpx.get(f"{container.management}/models", timeout=10).status_code == 401
    r = httpx.get(f"{container.management}/models", headers=bearer(key), timeout=10)
    assert r.status_code == 200, r.text
    assert {m["modelName"] for m in r.json()["models"]} == {"digits", "digits_onnx"}
    r = httpx.get(f"{container.management}/models/digits", headers=bearer(key), timeout=10)
    assert r.status_code == 200 and r.json()[0]["workers"][0]["status"] == "READY"


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(url, timeout=10).text.splitlines():
        match = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_metrics(container: Container) -> None:
    key = container.exec("modelserve", "key", "inference")
    before = metric(container.metrics, "ts_inference_requests_total", model_name="digits")
    httpx.post(f"{container.inference}/predictions/digits", json=DIGIT_ZERO,
               headers=bearer(key), timeout=60).raise_for_status()
    wait_for(lambda: metric(container.metrics, "ts_inference_requests_total",
                            model_name="digits") == before + 1, timeout=10)
    assert metric(container.metrics, "modelserve_workers", model_name="digits") >= 1


def test_stop_drains_in_flight_requests(engine: Engine, image: Image, store: Path) -> None:
    """``stop -t 30`` (SIGTERM, then SIGKILL after 30 s, the server's own grace period): the
    requests in flight are answered, and the server exits 0 well before the engine's SIGKILL."""
    running = Container(engine, image, store, ["echo.mar"]).start()
    try:
        key = running.exec("modelserve", "key", "inference")

        def slow(i: int) -> tuple[httpx.Response, float]:
            r = httpx.post(f"{running.inference}/predictions/echo", json={"sleep": 1.5, "i": i},
                           headers=bearer(key), timeout=60)
            return r, time.monotonic()

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(slow, i) for i in range(3)]
            wait_for(lambda: metric(running.metrics, "modelserve_inflight_requests") >= 3,
                     timeout=30, interval=0.05)
            stop_at = time.monotonic()
            engine("stop", "-t", "30", running.name, timeout=90)
            stopped_in = time.monotonic() - stop_at
            answers = [f.result() for f in futures]
        for i, (r, answered_at) in enumerate(answers):
            assert r.status_code == 200, r.text
            assert r.json()["echo"] == {"sleep": 1.5, "i": i}
            assert answered_at > stop_at, "the request was in flight when the stop began"
        state = json.loads(engine("inspect", running.name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, running.logs()[-3000:]
        assert stopped_in < 25, f"stop took {stopped_in:.1f} s, near the engine's SIGKILL"
        assert "draining" in running.logs()
        TIMINGS["stop with 3 requests in flight"] = f"{stopped_in:.1f} s"
    finally:
        running.remove()


def test_image_is_smaller_than_torchserves(engine: Engine, image: Image) -> None:
    size = int(engine("image", "inspect", "--format", "{{.Size}}", image.tag).stdout)
    compressed = image.compressed.result(timeout=600)
    TIMINGS["image"] = f"{size / 1e6:.0f} MB, at most {compressed / 1e6:.0f} MB compressed"
    assert compressed < TORCHSERVE_CPU_MB * 1e6, TIMINGS["image"]


# ---------------------------------------------------------------------------------------------
# docker/compose.yaml

COMPOSE_PROJECT = "modelserve-test"


@dataclass
class Stack:
    engine: Engine
    argv: list[str]  # compose -p PROJECT -f compose.yaml -f override.yaml
    grafana: str  # "" when Grafana runs, else why it does not

    def compose(self, *args: str, timeout: float = 300) -> str:
        return self.engine.run([*self.argv, *args], timeout).stdout


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def stack(engine: Engine, image: Image, store: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    services = compose_file()["services"]
    prometheus = engine.run(["bash", str(ENGINE_SH), "prometheus"], timeout=900).stdout.strip()
    grafana = "docker.io/" + services["grafana"]["image"]  # podman pulls no short name
    have_grafana = engine("image", "inspect", grafana, check=False).returncode == 0 or \
        engine("pull", grafana, check=False, timeout=600).returncode == 0
    override = {"services": {
        "modelserve": {"volumes": [f"{store}:/home/model-server/model-store:ro"]},
        "prometheus": {"image": prometheus}, "grafana": {"image": grafana}}}
    path = tmp_path_factory.mktemp("compose") / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    why = "" if have_grafana else (
        f"{grafana} cannot be pulled here and no Grafana can be built instead: Debian bookworm, "
        "PyPI and npm (the registries this machine reaches) have no Grafana server package. "
        "tests/integration/test_deployment.py checks its provisioning and dashboard statically")
    run = ["modelserve", "prometheus"] + (["grafana"] if have_grafana else [])
    ports = [int(p.split(":")[1]) for name in run for p in services[name]["ports"]]
    started = time.monotonic()
    try:  # a server of another test may still be stopping
        wait_for(lambda: all(port_free(port) for port in ports), timeout=60, interval=1)
    except AssertionError:
        taken = [port for port in ports if not port_free(port)]
        raise AssertionError(f"compose.yaml publishes fixed ports; {taken} are taken") from None
    if time.monotonic() - started > 1:
        TIMINGS["waiting for compose's ports"] = f"{time.monotonic() - started:.0f} s"
    running = Stack(engine, [*engine.compose, "-p", COMPOSE_PROJECT, "-f", str(COMPOSE_FILE),
                             "-f", str(path)], why)
    started = time.monotonic()
    try:
        running.compose("up", "-d", *run)
        wait_for(lambda: _pings("http://127.0.0.1:8080"), timeout=180, interval=0.5)
        TIMINGS["compose up to ready"] = f"{time.monotonic() - started:.0f} s"
        yield running
    finally:
        engine.run([*running.argv, "down", "-v"], timeout=300, check=False)
        if engine.name == "podman":  # podman-compose 1.0 leaves the project's network
            engine("network", "rm", "-f", f"{COMPOSE_PROJECT}_default", check=False)


def _pings(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ping", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def prometheus_query(query: str) -> float:
    r = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": query}, timeout=10)
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_compose_serves_and_prometheus_scrapes_it(stack: Stack) -> None:
    out = stack.compose("exec", "-T", "modelserve", "modelserve", "key", "inference")
    # podman-compose 1.0 prints the podman command line before and its exit code after
    [key] = [line for line in out.splitlines() if re.fullmatch(r"[\w-]{20,}", line)]
    r = httpx.post("http://127.0.0.1:8080/predictions/digits", json=DIGIT_ZERO,
                   headers=bearer(key), timeout=60)
    assert r.status_code == 200 and r.json()["class"] == 0, r.text
    # scraped by its service name (modelserve:8082), every 5 s
    wait_for(lambda: prometheus_query('up{job="modelserve"}') == 1, timeout=90, interval=1)
    wait_for(lambda: prometheus_query(
        'sum(ts_inference_requests_total{model_name="digits"})') >= 1, timeout=90, interval=1)
    rules = httpx.get("http://127.0.0.1:9090/api/v1/rules", timeout=10).json()["data"]
    loaded = {rule["name"] for group in rules["groups"] for rule in group["rules"]}
    alerts = yaml.safe_load((ROOT / "docker" / "prometheus" / "alerts.yml").read_text())
    assert loaded == {r["alert"] for g in alerts["groups"] for r in g["rules"]}


def test_compose_grafana(stack: Stack) -> None:
    if stack.grafana:
        pytest.skip(stack.grafana)
    assert httpx.get("http://127.0.0.1:3000/api/health", timeout=10).status_code == 200
    found = wait_for(lambda: httpx.get("http://127.0.0.1:3000/api/search",
                                       params={"query": "modelserve"}, timeout=10).json(),
                     timeout=60, interval=1)
    assert "modelserve" in {d["title"] for d in found}
