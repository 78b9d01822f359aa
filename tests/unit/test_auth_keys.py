"""The key store's expiry (TorchServe's token_expiration_min) and rotation."""

from __future__ import annotations

import json

import pytest

from modelserve.server.transport import auth


def test_keys_expire_and_a_failed_rotation_changes_nothing(tmp_path, monkeypatch):
    store = auth.KeyStore(tmp_path / "key_file.json", expiration_min=1)
    header = b"Bearer " + store.keys["inference"].encode()
    data = json.loads((tmp_path / "key_file.json").read_text())
    assert data["inference"]["expiration time"].endswith("Z") and "expiration time" not in \
        data["API"]
    assert store.check("inference", header)
    clock = [auth.time.time()]
    monkeypatch.setattr(auth.time, "time", lambda: clock[0])
    clock[0] += 61
    assert not store.check("inference", header)  # expired

    def refuse(*args, **kwargs):
        raise OSError("read-only")

    monkeypatch.setattr(auth, "write_atomic", refuse)
    with pytest.raises(OSError):
        store.rotate("inference")
    assert not store.check("inference", header)  # the failed rotation revived nothing
    monkeypatch.undo()
    new = store.rotate("inference")
    assert store.check("inference", b"Bearer " + new.encode())
