"""modelserve.ts_log4j: the levels a TorchServe deployment's log4j2 file gives the loggers behind
TorchServe's log files, and where config.properties' vmargs names that file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelserve import ts_log4j
from modelserve.ts_config import read_ts_config

ACCESS, MODEL_LOG = "modelserve.access", "modelserve.workers.output"
TS_METRICS, MODEL_METRICS = "modelserve.ts_metrics", "modelserve.model_metrics"

QUIET = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="STDOUT" target="SYSTEM_OUT">
    <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console></Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="STDOUT"/></Root></Loggers>
</Configuration>
"""
# TorchServe 0.12's own log4j2.xml, its loggers only
DEFAULT = """<Configuration>
  <Loggers>
    <Logger name="ACCESS_LOG" level="info"><AppenderRef ref="access_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="MODEL_LOG" level="all"><AppenderRef ref="model_log"/></Logger>
    <Logger name="MODEL_METRICS" level="all"><AppenderRef ref="model_metrics"/></Logger>
    <Logger name="org.pytorch.serve" level="debug"/>
    <AsyncLogger name="TS_METRICS" level="OFF"/>
    <Root level="info"/>
  </Loggers>
</Configuration>
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_root_at_warn_quiets_every_file_logger(tmp_path):
    levels = ts_log4j.levels(write(tmp_path, "log4j2.xml", QUIET))
    assert levels == dict.fromkeys([ACCESS, MODEL_LOG, TS_METRICS, MODEL_METRICS],
                                   logging.WARNING)


def test_named_loggers_win_over_root(tmp_path):
    levels = ts_log4j.levels(write(tmp_path, "log4j2.xml", DEFAULT))
    assert levels[ACCESS] == logging.INFO
    assert levels[MODEL_LOG] < logging.DEBUG and levels[MODEL_METRICS] < logging.DEBUG  # all
    assert levels[TS_METRICS] > logging.CRITICAL  # off
    logger = logging.getLogger("test_ts_log4j.off")
    logger.setLevel(levels[TS_METRICS])
    assert not logger.isEnabledFor(logging.CRITICAL)


def test_a_properties_file(tmp_path):
    text = ("rootLogger = ERROR, STDOUT\n"
            "logger.access.name = ACCESS_LOG\nlogger.access.level = debug\n")
    levels = ts_log4j.levels(write(tmp_path, "log4j2.properties", text))
    assert levels[ACCESS] == logging.DEBUG
    assert levels[TS_METRICS] == levels[MODEL_LOG] == logging.ERROR


def test_an_unreadable_file_keeps_torchserves_defaults(tmp_path, caplog):
    assert ts_log4j.levels(tmp_path / "missing.xml") == {}
    assert ts_log4j.levels(write(tmp_path, "bad.xml", "<Configuration><Loggers>")) == {}
    assert "default levels" in caplog.text
    no_root = "<Configuration><Loggers><Logger name='X' level='warn'/></Loggers></Configuration>"
    assert ts_log4j.levels(write(tmp_path, "x.xml", no_root)) == {}


@pytest.mark.parametrize("vmargs,path", [
    ("-Dlog4j.configurationFile=file:///etc/ts/log4j2.xml", "/etc/ts/log4j2.xml"),
    ("-Xmx4g -Dlog4j.configurationFile=conf/log4j2.xml -XX:+UseG1GC", "conf/log4j2.xml"),
    ("-Dlog4j2.configurationFile=file:/a%20b/l.xml", "/a b/l.xml"),
    ("-Dlog4j.configurationFile=one.xml,two.xml", "two.xml"),
    ("-Dlog4j.configurationFile=https://example.com/log4j2.xml", None),
    ("-Xmx4g", None),
])
def test_the_file_vmargs_names(vmargs, path):
    found = ts_log4j.config_from_vmargs(vmargs)
    assert found == (None if path is None else Path(path))


def test_config_properties_sets_log4j_config_and_still_reports_vmargs(tmp_path):
    props = write(tmp_path, "config.properties",
                  "vmargs=-Xmx1g -Dlog4j.configurationFile=file:///srv/log4j2.xml\n")
    config = read_ts_config(props)
    assert config.settings["log4j_config"] == Path("/srv/log4j2.xml")
    assert any(w.startswith("vmargs: ignored") and "log4j_config" in w
               for w in config.warnings)
    assert "log4j_config" not in read_ts_config(
        write(tmp_path, "plain.properties", "vmargs=-Xmx1g\n")).settings
