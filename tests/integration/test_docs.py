"""The manual (docs/, mkdocs.yml, README.md): every example it shows runs, and it builds.

Every shell and Python example a page shows is a file under docs/examples/, included in a
fenced block with ``--8<-- "examples/NAME"``. Each is run here (``bash`` for .sh, ``python`` for
.py) against a real server with token authorization on, from a directory laid out like a
checkout after ``make serve`` (``.venv/bin/modelserve``, ``.modelserve/key_file.json``,
``model_store/``, ``docs/``), with ``MS_INFERENCE``, ``MS_MANAGEMENT``, ``MS_METRICS`` and
``MS_GRPC`` set to the server's addresses (the examples default to 8080, 8081, 8082, 8085).
A fenced shell or Python block that is not such an include must follow a line
``<!-- not-run: REASON -->``. README.md follows the same rule; its runnable blocks run with
the test server's addresses in place of the default ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = sorted(p for p in DOCS.rglob("*.md") if EXAMPLES not in p.parents)

# Every runnable example -> what its output must contain.
RUNNABLE: dict[str, list[str]] = {
    "quickstart.sh": ['{"status":"Healthy"}', '"label":"zero"', '"modelName":"digits"',
                      'ts_inference_requests_total{'],
    "register_model.sh": ['"digits_copy\\" Version: 1.0 registered with 1 initial workers',
                          "Workers scaled to 2 for model: digits_copy", '"label":"zero"',
                          '"digits_copy\\" unregistered'],
    "auth.sh": ['{"status":"Healthy"}', "\n401\n", '"modelName":"digits"',
                '{"inference":{"key":"'],
    "metrics.sh": ["ts_inference_requests_total{", "modelserve_workers{",
                   "modelserve_request_latency_seconds_count{"],
    "custom_handler.sh": ['"stats\\" Version: 1.0 registered', '"mean":6.0,"max":12.0',
                          '"code":400', "expected a JSON list of numbers"],
    "streaming.sh": ['"words\\" Version: 1.0 registered', '{"index":1,"word":"arrive"',
                     '{"index":4,"word":"word"', 'data: {"index":1,"word":"there"'],
    "v2_rest.sh": ['"platform":"onnxruntime_onnx"', '"shape":[-1,1,8,8]', "\n200\n",
                   '"shape":[1,10]', '"id":"zero"'],
    "kserve_v1.sh": ['{"predictions":[['],
    "workflow.sh": ["Workflow digits_wf has been registered and scaled successfully.",
                    '{"label":"zero","models_agree":true}',
                    '"workflowDag":"{pre=[digits, onnx], digits=[agg], onnx=[agg]}"',
                    '"modelName":"digits_wf__agg"', 'Workflow \\"digits_wf\\" unregistered'],
    "v2_client.py": ["'name': 'digits_onnx'", "(4, 10)"],
    "tritonclient_grpc.py": ["True", "'shape': ['-1', '1', '8', '8']", "(4, 10)"],
    "v2_grpc_stream.py": ["r1 0 streams\nr1 1 over\nr1 2 grpc\n"],
}
# Files the runnable examples use (handlers, model-config.yaml) -> the example that uses them.
SUPPORT = {
    "streaming_handler.py": "streaming.sh",
    "custom_handler.py": "custom_handler.sh",
    "custom_handler.yaml": "custom_handler.sh",
    "workflow_handler.py": "workflow.sh",
    "workflow.yaml": "workflow.sh",
}
# An example that needs another one's model -> that example (run first when not yet run).
NEEDS = {"v2_grpc_stream.py": "streaming.sh"}

RUNNABLE_LANGUAGES = {"sh", "bash", "shell", "console", "zsh", "python", "py", "python3",
                      "pycon"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
INCLUDE = re.compile(r'^\s*--8<--\s+"examples/([^"]+)"\s*$')
NOT_RUN = re.compile(r"^<!-- not-run: \S.* -->$")
DEFAULT_ADDRESSES = {"inference": "http://127.0.0.1:8080", "management": "http://127.0.0.1:8081",
                     "metrics": "http://127.0.0.1:8082", "grpc": "127.0.0.1:8085"}


def fenced_blocks(path: Path) -> list[tuple[int, str, list[str], str]]:
    """(line number, language, lines, the non-blank line before) of each fenced block."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        assert end < len(lines), f"{path.name}:{i + 1}: unclosed fence"
        blocks.append((i + 1, language, lines[i + 1:end], before))
        i = end + 1
    return blocks


def includes(path: Path) -> list[str]:
    return [m.group(1) for _, _, body, _ in fenced_blocks(path) for line in body
            if (m := INCLUDE.match(line))]


# -- what the pages show ----------------------------------------------------------------------

def test_every_fence_names_its_language():
    """A command in a block without a language would escape the checks below."""
    for path in [*PAGES, ROOT / "README.md"]:
        for line, language, _, _ in fenced_blocks(path):
            assert language, f"{path.relative_to(ROOT)}:{line}: fence without a language"


@pytest.mark.parametrize("path", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_pages_show_only_code_that_runs(path: Path):
    """A shell or Python block is an include of docs/examples/ (run below), or says why not."""
    for line, language, body, before in fenced_blocks(path):
        if language not in RUNNABLE_LANGUAGES or NOT_RUN.match(before):
            continue
        where = f"{path.relative_to(ROOT)}:{line}"
        if path.name == "README.md" and path.parent == ROOT:
            continue  # run by test_readme_commands_run
        content = [text for text in body if text.strip()]
        assert content and all(INCLUDE.match(text) for text in content), (
            f'{where}: a {language} block must be --8<-- "examples/NAME" (a file the tests '
            "run) or follow <!-- not-run: REASON -->")


def test_every_example_is_shown_known_and_run():
    shown = {name for path in PAGES for name in includes(path)}
    files = {p.name for p in EXAMPLES.iterdir() if p.is_file()}
    assert shown - files == set(), "pages include example files that do not exist"
    assert files - set(RUNNABLE) - set(SUPPORT) == set(), "an example the test does not run"
    assert set(RUNNABLE) | set(SUPPORT) <= files
    assert files - shown == set(), "an example file no page shows"
    for name, user in SUPPORT.items():
        assert f"docs/examples/{name}" in (EXAMPLES / user).read_text(), (name, user)


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"^[a-z]+:", target):
            assert (ROOT / target).exists(), f"README.md links to missing {target}"


# -- the examples, against a real server ------------------------------------------------------

class Examples:
    """A server with token auth on, a checkout-like directory, and the examples run so far."""

    def __init__(self, server: Server, cwd: Path) -> None:
        self.server, self.cwd, self.done = server, cwd, {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSERVE_",
                                                                            "MS_"))}
        self.env.update(MS_INFERENCE=server.inference, MS_MANAGEMENT=server.management,
                        MS_METRICS=server.metrics, MS_GRPC=server.grpc)

    def run(self, name: str) -> subprocess.CompletedProcess[str]:
        if name in NEEDS and NEEDS[name] not in self.done:
            self.run(NEEDS[name])
        path = EXAMPLES / name
        command = ["bash", "-e", "-o", "pipefail", str(path)] if name.endswith(".sh") \
            else [sys.executable, str(path)]
        result = self.script(command)
        self.done[name] = result
        return result

    def script(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=120)


@pytest.fixture(scope="module")
def examples(example_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    store = tmp_path_factory.mktemp("docs-store")
    for archive in ("digits.mar", "digits_onnx.mar"):
        shutil.copy(example_store / archive, store / archive)
    server = Server(tmp_path_factory.mktemp("docs-server"), store,
                    ["digits=digits.mar", "digits_onnx=digits_onnx.mar"], auth=True)
    # The directory a user runs the examples from, after `make serve`.
    cwd = tmp_path_factory.mktemp("checkout")
    (cwd / ".venv" / "bin").mkdir(parents=True)
    launcher = cwd / ".venv" / "bin" / "modelserve"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m modelserve "$@"\n')
    launcher.chmod(0o755)
    archiver = cwd / ".venv" / "bin" / "torch-workflow-archiver"  # a dev install has it
    archiver.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m '
                        'workflow_archiver.workflow_packaging "$@"\n')
    archiver.chmod(0o755)
    (cwd / ".modelserve").symlink_to(server.root / "work")
    (cwd / "model_store").symlink_to(store)
    (cwd / "docs").symlink_to(DOCS)
    server.start()
    try:
        yield Examples(server, cwd)
    finally:
        survivors = server.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


def check(result: subprocess.CompletedProcess[str], expected: list[str], what: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{output[-3000:]}"
    for piece in expected:
        assert piece in result.stdout, f"{what}: {piece!r} not in its output:\n{output[-3000:]}"


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_example_runs(examples: Examples, name: str):
    result = examples.done.get(name) or examples.run(name)
    check(result, RUNNABLE[name], f"docs/examples/{name}")


def test_examples_use_the_addresses_they_are_given():
    """No example may reach a fixed port: a developer's own `make serve` would answer it."""
    for path in EXAMPLES.iterdir():
        text = path.read_text()
        for address in DEFAULT_ADDRESSES.values():
            port = address.rsplit(":", 1)[1]
            for match in re.finditer(rf"127\.0\.0\.1:{port}", text):
                line = text[:match.start()].rsplit("\n", 1)[-1]
                assert re.search(r"\$\{MS_\w+:-|os\.environ\.get\(\"MS_\w+\", |^\s*#", line), (
                    f"{path.name}: {address} outside an MS_* default: {line}")


def test_readme_commands_run(examples: Examples, tmp_path: Path):
    """README.md's runnable blocks, with the test server's addresses for the default ones."""
    blocks = [body for _, language, body, before in fenced_blocks(ROOT / "README.md")
              if language in RUNNABLE_LANGUAGES and not NOT_RUN.match(before)]
    assert blocks, "README.md shows no request to run"
    server = examples.server
    actual = {"inference": server.inference, "management": server.management,
              "metrics": server.metrics, "grpc": server.grpc}
    for i, body in enumerate(blocks):
        text = "\n".join(body) + "\n"
        for key, address in DEFAULT_ADDRESSES.items():
            text = text.replace(address, actual[key])
        script = tmp_path / f"readme-{i}.sh"
        script.write_text(text)
        expected = [line.removeprefix("# ").split("...")[0] for line in body
                    if line.startswith("# {")]
        check(examples.script(["bash", "-e", "-o", "pipefail", str(script)]), expected,
              f"README.md block {i + 1}")


# -- the site ---------------------------------------------------------------------------------

def test_site_builds_strict(tmp_path: Path):
    """`make docs`: every page, include, generated table and link resolves; warnings fail."""
    pytest.importorskip("mkdocs", reason="mkdocs is a dev dependency (make install-dev)")
    pytest.importorskip("material", reason="mkdocs-material is a dev dependency")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    configuration = (site / "configuration" / "index.html").read_text()
    assert "<!-- generated:" not in configuration and "shutdown_grace_period" in configuration
    quickstart = (site / "getting-started" / "index.html").read_text()
    assert "--8&lt;--" not in quickstart and "MS_INFERENCE" in quickstart
    assert (site / "repo" / "bench" / "RESULTS" / "index.html").is_file()
    assert 'class="bar-chart"' in (site / "benchmarks" / "index.html").read_text()
