"""TorchServe's own management-API test collection (test/postman, the management cases of
TorchServe 0.12's `test_api.py` run), replayed in order against `modelserve start --ts-config`.

The requests and the statuses TorchServe's collection expects are its own; only what cannot
run here is replaced: the archives are built locally by torch-model-archiver 0.12 under the
collection's names (nothing can be downloaded), and its https URLs point at a loopback HTTP
server that serves the same archives (a missing one answers 404, as the collection's
"invalid" URL does). Four cases answer otherwise on purpose, each a row in README's
Differences: TorchServe answers 500 to a client's mistake, modelserve the 4xx it is.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.integration.test_ts_management_semantics import NOOP_HANDLER, ts_properties

ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]
NAMES = ["squeezenet1_1", "mnist", "densenet161", "resnet-152-batch", "resnet-18"]

# (method, path with {URL} for the HTTP server's address and {name} for a local archive,
#  status TorchServe's collection expects, status modelserve answers where it differs)
SQZ = "/models?url=squeezenet1_1.mar&model_name=squeezenet1_1"
CASES: list[tuple[str, str, int, int | None]] = [
    ("POST", SQZ, 200, None),
    ("POST", "/models?url=mnist.mar&model_name=mnist", 200, None),
    ("POST", "/models?url={URL}/densenet161.mar&model_name=densenet161", 200, None),
    # re-registration from a URL whose file is already in the store: TorchServe's
    # FileAlreadyExistsException is a 500; the model is registered, so 409
    ("POST", "/models?url={URL}/densenet161.mar&model_name=densenet161", 500, 409),
    ("DELETE", "/models/densenet161", 200, None),
    ("POST", "/models", 400, None),
    ("DELETE", "/models/mnist", 200, None),
    ("POST", "/models?url=mnist.mar&model_name=mnist&handler=invalidHandler", 200, None),
    ("DELETE", "/models/mnist", 200, None),
    ("POST", "/models?url=mnist.mar&model_name=mnist&handler=invalidHandler", 200, None),
    # a handler the archive does not have: TorchServe 500 "Failed to start workers", 400
    ("PUT", "/models/mnist?min_worker=1&synchronous=true", 500, 400),
    ("DELETE", "/models/mnist", 200, None),
    ("GET", "/models/squeezenet1_1/all", 200, None),
    ("GET", "/models/squeezenet1_1/1.0", 200, None),
    ("GET", "/models/squeezenet1_1", 200, None),
    ("DELETE", "/models/squeezenet1_1", 200, None),
    ("POST", SQZ + "&runtime=python4", 400, None),
    ("GET", "/models?limit=&next_page_token=", 200, None),
    ("POST", SQZ, 200, None),
    ("PUT", "/models/squeezenet1_1?min_worker=1", 202, None),
    ("PUT", "/models/squeezenet1_1?min_worker=1&synchronous=true", 200, None),
    ("PUT", "/models/squeezenet1_1/1.0?min_worker=1&synchronous=true", 200, None),
    ("PUT", "/models/squeezenet1_1/0.0?min_worker=1&synchronous=true", 404, None),
    ("PUT", "/models/squeezenet1_1?min_worker=1&number_gpu=1", 202, None),
    ("PUT", "/models/squeezenet1_1/1.0/set-default", 200, None),
    ("PUT", "/models/squeezenet1_1/0.0/set-default", 404, None),
    ("PUT", "/models/squeezenet0_1/1.0/set-default", 404, None),
    ("DELETE", "/models/squeezenet1_1", 200, None),
    ("POST", SQZ + "&handler=serve/ts/torch_handler/image_classifier.py:handle", 200, None),
    ("DELETE", "/models/squeezenet1_1", 200, None),
    # 3 workers with 0 s to load: TorchServe's workers all fail (500); refused up front
    ("POST", SQZ + "&batch_size=3&initial_workers=3&startup_timeout=0", 500, 400),
    ("POST", SQZ + "&startup_timeout=0", 200, None),
    ("DELETE", "/models/squeezenet1_1", 200, None),
    ("POST", "/models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2", 200, None),
    ("DELETE", "/models/resnet152", 200, None),
    ("POST", "/models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=dd"
             "&initial_workers=1", 200, None),
    ("DELETE", "/models/resnet152", 200, None),
    ("POST", "/models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2"
             "&initial_workers=1&max_batch_delay=junk", 200, None),
    ("DELETE", "/models/resnet152", 200, None),
    ("POST", SQZ + "&initial_workers=-1", 200, None),
    ("DELETE", "/models/squeezenet1_1", 200, None),
    ("POST", "/models?url=resnet-18.mar&model_name=resnet-18&synchronous=true", 200, None),
    ("DELETE", "/models/resnet-18", 200, None),
    ("POST", "/models?url=resnet-18.mar&model_name=resnet-18&synchronous=-1", 200, None),
    ("DELETE", "/models/resnet-18", 200, None),
    ("POST", "/models?url=resnet-18.mar&model_name=resnet-18&synchronous=false", 200, None),
    ("GET", "/models?limit=1", 200, None),
    ("GET", "/models?limit=-1", 200, None),
    ("GET", "/models?limit=1&next_page_token=1", 200, None),
    ("GET", "/models?limit=1&next_page_token=-1", 200, None),
    ("PUT", "/models/resnet-18?number_gpu=10", 202, None),
    ("PUT", "/models/resnet-18?number_gpu=-1", 202, None),
    ("PUT", "/models/resnet-18?min_worker=1&max_worker=1&synchronous=true", 200, None),
    ("PUT", "/models/resnet-18?min_worker=1&max_worker=1&synchronous=false", 202, None),
    ("PUT", "/models/resnet-18?timeout=-1", 202, None),
    ("PUT", "/models/resnet-18?timeout=0", 202, None),
    ("POST", "/models?url=&model_name=resnet-18", 404, None),
    ("POST", "/models?url={URL}/invalid-resnet-18.mar&model_name=invalid-resnet18", 400, None),
    ("GET", "/models/invalid_squeezenet1_1", 404, None),
    ("GET", "/models/squeezenet1_1/0.0", 404, None),
    ("GET", "/models?next_page_token=12", 200, None),
    ("PUT", "/models/resnet-18?min_worker=1&synchronous=Nan", 202, None),
    ("PUT", "/models/resnet-18?min_worker=nan&synchronous=nan", 202, None),
    ("PUT", "/models/resnet-18", 202, None),
    ("PUT", "/models/resnet181?min_worker=1", 404, None),
    ("PUT", "/models/resnet-18?min_worker=2&max_worker=1", 400, None),
    ("PUT", "/models/resnet-18?min_worker=1", 202, None),
    ("PUT", "/models/resnet-18?min_worker=0", 202, None),
    # TorchServe: IndexOutOfBoundsException in WorkLoadManager, 500, every worker killed
    ("PUT", "/models/resnet-18?min_worker=-1", 500, 400),
    ("PUT", "/models/resnet-18?max_worker=-1", 400, None),
    ("PUT", "/models/invalid_squeezenet1_1/1.0/set-default", 404, None),
    ("DELETE", "/models/resnet-18", 200, None),
    ("DELETE", "/models/squeezenet1_1/0.0", 404, None),
    ("POST", SQZ, 200, None),
    ("DELETE", "/models/squeezenet1_1/?synchronous=true", 200, None),
    ("POST", SQZ, 200, None),
    ("DELETE", "/models/squeezenet1_1/?synchronous=nan", 200, None),
    ("POST", SQZ, 200, None),
    ("DELETE", "/models/squeezenet1_1/?timeout=true", 200, None),
    ("POST", SQZ, 200, None),
    ("DELETE", "/models/squeezenet1_1/?timeout=true&synchronous=-1", 200, None),
    ("DELETE", "/models/invalid_squeezenet1_1", 404, None),
]


@pytest.fixture(scope="module")
def postman_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("postman-src")
    store = tmp_path_factory.mktemp("postman-store")
    (src / "handler.py").write_text(NOOP_HANDLER)
    for name in NAMES:
        subprocess.run([*ARCHIVER, "--model-name", name, "--version", "1.0", "--handler",
                        str(src / "handler.py"), "--export-path", str(store)],
                       check=True, capture_output=True)
    return store


@pytest.fixture(scope="module")
def archive_host(postman_store: Path) -> Iterator[str]:
    """A loopback HTTP server in place of the collection's download site."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(postman_store))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_torchserve_management_collection(postman_store: Path, archive_host: str,
                                          tmp_path: Path):
    props = ts_properties(tmp_path / "config.properties",
                          allowed_urls="http://127\\\\.0\\\\.0\\\\.1:.*")
    srv = Server(tmp_path, postman_store, [], extra_args=["--ts-config", str(props)]).start()
    outcome = []
    try:
        for number, (method, path, torchserve, ours) in enumerate(CASES, 1):
            r = httpx.request(method, srv.management + path.replace("{URL}", archive_host),
                              timeout=120)
            expected = torchserve if ours is None else ours
            outcome.append((number, method, path, expected, r.status_code,
                            r.text[:200] if r.status_code != expected else ""))
            assert r.status_code < 500, (number, method, path, r.text)
    finally:
        assert not srv.stop()
    wrong = [row for row in outcome if row[3] != row[4]]
    assert wrong == [], "\n".join(map(str, wrong))
    same = sum(ours is None for *_, ours in CASES)
    print(f"\n{len(CASES)} cases: {same} answered as TorchServe's collection expects, "
          f"{len(CASES) - same} with the 4xx listed in Differences")
