"""Settings precedence: flags > environment > config file > defaults; and per-model config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelserve.config import ModelConfig, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_torchserve_ports():
    s = Settings()
    assert (s.host, s.inference_port, s.management_port, s.metrics_port) == (
        "127.0.0.1", 8080, 8081, 8082)


def test_precedence(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"inference_port": 9000, "management_port": 9001,
                                    "batch_size": 4}))
    monkeypatch.setenv("MODELSERVE_MANAGEMENT_PORT", "9101")
    monkeypatch.setenv("MODELSERVE_BATCH_SIZE", "16")
    monkeypatch.setenv("MODELSERVE_LOAD_MODELS", '["a.mar"]')
    s = load_settings(path, batch_size=32, metrics_port=None)
    assert s.inference_port == 9000          # file
    assert s.management_port == 9101         # env beats file
    assert s.batch_size == 32                # flag beats env
    assert s.metrics_port == 8082            # None means "not given"
    assert s.load_models == ["a.mar"]


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inference_prot: 1\n")
    with pytest.raises(ValueError, match="inference_prot"):
        load_settings(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.yaml")


def test_repository_config_documents_every_key():
    """config.yaml must mention every setting, and hold only valid values."""
    text = (REPO / "config.yaml").read_text()
    for name in Settings.model_fields:
        assert f"\n{name}:" in text or text.startswith(f"{name}:"), name
    load_settings(REPO / "config.yaml")


def test_model_config_precedence():
    settings = Settings(batch_size=2, max_batch_delay=50, default_workers_per_model=1)
    cfg = ModelConfig.resolve(settings, {"batchSize": 8, "minWorkers": 2, "pt2": {}},
                              {"max_batch_delay": 5, "batch_size": None})
    assert cfg.batch_size == 8          # archive beats server default
    assert cfg.max_batch_delay == 5     # API beats archive and default
    assert cfg.min_workers == 2 and cfg.max_workers == 2


def test_model_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ModelConfig.resolve(Settings(), {"batchSize": 0}, {})


def test_ts_config_sits_between_env_and_yaml(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"inference_port": 9000, "metrics_port": 9002,
                                    "batch_size": 4}))
    ts_values = {"inference_port": 7000, "management_port": 7001, "job_queue_size": 5}
    monkeypatch.setenv("MODELSERVE_MANAGEMENT_PORT", "9101")
    s = load_settings(path, ts_values=ts_values, job_queue_size=6)
    assert s.inference_port == 7000      # ts-config beats the YAML file
    assert s.management_port == 9101     # the environment beats ts-config
    assert s.metrics_port == 9002        # the YAML file still applies
    assert s.job_queue_size == 6         # flags beat everything
