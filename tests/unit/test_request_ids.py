"""Request ids: the client's when it sends one, else unique per source and process start."""

from __future__ import annotations

import os

from modelserve.server.transport.request_ids import RequestIds


def test_ids_are_unique_tagged_and_yield_to_the_client_id():
    ids = RequestIds("v2-")
    first, second = ids.new(), ids.new(None)
    assert first != second
    assert first.startswith(f"v2-{os.getpid():x}-") and first.endswith("-0")
    assert second.rsplit("-", 1)[0] == first.rsplit("-", 1)[0] and second.endswith("-1")
    assert ids.new("client-7") == "client-7"
    assert RequestIds().new().split("-", 1)[0] == f"{os.getpid():x}"
    assert RequestIds().new() != RequestIds().new()  # each source has its own random part


def test_numbered_ids_share_the_client_id():
    ids = RequestIds("grpc-")
    assert [ids.numbered("s"), ids.numbered("s")] == ["s-0", "s-1"]
    assert ids.numbered(None).startswith("grpc-") and ids.numbered("").endswith("-3")
