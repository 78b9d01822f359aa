"""TorchServe's five log files, written through Python's logging (``log_dir``,
``metrics_log_dir``).

TorchServe 0.12's log4j2.xml writes, with these patterns (log shippers and alerts parse them):

=====================  ===============================  ===========================================
file                   logger here                      line
=====================  ===============================  ===========================================
``access_log.log``     ``modelserve.access``            ``%d - %m``: one line per HTTP request
``model_log.log``      ``modelserve.workers.output``    ``%d [%-5p] %t %c - %m``: worker stdout/err
``ts_log.log``         the root logger (everything)     ``%d [%-5p] %t %c - %m``
``ts_metrics.log``     ``modelserve.ts_metrics``        ``%d - %m``: frontend and host metrics
``model_metrics.log``  ``modelserve.model_metrics``     ``%d - %m``: handler metrics
=====================  ===============================  ===========================================

``%d`` is log4j's ISO8601 (``2024-06-10T14:03:11,532``, local time). The first three go to
``log_dir``, the metrics files to ``metrics_log_dir`` (default ``log_dir``). As in TorchServe,
the dedicated loggers' lines also reach ts_log.log and the console (log4j's additivity), a
worker's output lines read ``W-<worker id>-<model>_<version>-stdout MODEL_LOG - <line>``, and
each file rolls over at 100 MB keeping 5 (TorchServe also rolls daily and gzips: not here).
A file that cannot be created is reported and skipped; the server still starts.
"""

from __future__ import annotations

import logging
import logging.handlers
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelserve import ts_log4j
from modelserve.config import Settings
from modelserve.server.observability.metrics_log import MODEL_METRICS, TS_METRICS

ACCESS = "modelserve.access"  # transport/http/access_log.py
WORKER_OUTPUT = "modelserve.workers.output"  # engine/workers.py: each line a worker prints
MAX_BYTES = 100 * 2**20  # log4j2.xml: SizeBasedTriggeringPolicy 100 MB, DefaultRolloverStrategy 5
BACKUPS = 5
_LEVELS = {"WARNING": "WARN", "CRITICAL": "FATAL"}
log = logging.getLogger("modelserve")


class Log4jFormatter(logging.Formatter):
    """log4j2's ``%d{ISO8601} [%-5p] %t %c - %m%n`` (``message_only``: ``%d{ISO8601} - %m%n``).
    A worker's output line names the worker as its thread and MODEL_LOG as its logger."""

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s,%03d"

    def __init__(self, message_only: bool = False) -> None:
        super().__init__()
        self.message_only = message_only
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format,
                                                  self.converter(record.created)))
        return f"{self._second[1]},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record)
        worker = getattr(record, "worker", None)
        message = getattr(record, "worker_line", None) if worker else None
        if message is None:
            message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if self.message_only:
            return f"{when} - {message}"
        level = _LEVELS.get(record.levelname, record.levelname)
        thread, name = (f"{worker}-stdout", "MODEL_LOG") if worker else \
            (record.threadName, record.name)
        return f"{when} [{level:<5}] {thread} {name} - {message}"


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that counts what it writes instead of asking the file system
    before every line (a stat and a seek per line cost more than the line)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        self.written = path.stat().st_size

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return self.written >= self.maxBytes

    def doRollover(self) -> None:
        super().doRollover()
        self.written = 0

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        self.written += len(text) + 1
        return text


@dataclass
class LogFiles:
    """The handlers opened at start; ``close`` takes them off their loggers again."""

    handlers: list[tuple[logging.Logger, logging.Handler]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    levels: dict[str, int] = field(default_factory=dict)  # the loggers' levels before

    def close(self) -> None:
        for logger, handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        self.handlers.clear()
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        self.levels.clear()


def _attach(files: LogFiles, directory: Path, name: str, logger: logging.Logger,
            message_only: bool) -> None:
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handler = _RotatingFile(path)
    except OSError as exc:
        log.error("cannot write the log file %s: %s", path, exc)
        return
    handler.setFormatter(Log4jFormatter(message_only))
    logger.addHandler(handler)
    files.handlers.append((logger, handler))
    files.paths.append(path)


def open_log_files(settings: Settings) -> LogFiles:
    """Attach a file handler per TorchServe log file whose directory is set; none when
    neither ``log_dir`` nor ``metrics_log_dir`` is."""
    files = LogFiles()
    logs = settings.log_dir
    metrics = settings.metrics_log_dir if settings.metrics_log_dir is not None else logs
    if logs is not None:
        _attach(files, logs, "ts_log.log", logging.getLogger(), False)
        _attach(files, logs, "access_log.log", logging.getLogger(ACCESS), True)
        _attach(files, logs, "model_log.log", logging.getLogger(WORKER_OUTPUT), False)
    if metrics is not None:
        _attach(files, metrics, "ts_metrics.log", logging.getLogger(TS_METRICS), True)
        _attach(files, metrics, "model_metrics.log", logging.getLogger(MODEL_METRICS), True)
    # log4j2.xml's levels for these loggers, whatever log_level says for the rest: TorchServe's
    # default (INFO), or those of the deployment's own log4j2 file
    levels = ts_log4j.levels(settings.log4j_config) if settings.log4j_config else {}
    for name in (ACCESS, WORKER_OUTPUT, TS_METRICS, MODEL_METRICS):
        if any(logger.name == name for logger, _ in files.handlers):
            files.levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(levels.get(name, logging.INFO))
    return files
