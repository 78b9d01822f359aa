"""``modelserve torchserve``: TorchServe 0.12's ``torchserve`` command, so that start and stop
scripts change one word.

It takes TorchServe's flags (``ts/arg_parser.py``) and behaves as its ``ts/model_server.py``:
``--start`` runs the server in the background (``modelserve start`` with the TorchServe
personality) and writes its pid to ``$TMPDIR/.model_server.pid``; ``--foreground`` waits for it;
``--stop`` stops the server that pid file names, removes ``key_file.json`` from the working
directory as TorchServe does, and waits until the server has exited (TorchServe returns at once;
waiting lets a script start a new server on the same ports right after). The messages and exit
codes are TorchServe's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelserve import __version__

PID_FILE = Path(tempfile.gettempdir()) / ".model_server.pid"
MARKER = "modelserve"  # in the server's command line: the pid file names one of ours
STOP_WAIT_S = 90.0  # the server drains first (shutdown_grace_period, 30 s by default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelserve torchserve",
        description="TorchServe's command line, served by modelserve.")
    action = p.add_mutually_exclusive_group()
    action.add_argument("-v", "--version", action="store_true", help="Print the version.")
    action.add_argument("--start", action="store_true", help="Start the model server "
                        "(the default when neither --start nor --stop is given).")
    action.add_argument("--stop", action="store_true", help="Stop the model server.")
    p.add_argument("--ts-config", help="config.properties (or TS_CONFIG_FILE).")
    p.add_argument("--model-store", help="Directory of model archives.")
    p.add_argument("--workflow-store", help="Directory of workflow archives (.war).")
    p.add_argument("--models", nargs="+", action="extend", metavar="[NAME=]ARCHIVE",
                   help="Models to load: NAME=ARCHIVE, ARCHIVE, a URL or 'all'.")
    p.add_argument("--log-config", help="A log4j2 file: its logger levels are those of "
                   "TorchServe's log files (log4j_config; the rest is Python's logging).")
    p.add_argument("--cpp-log-config", help="Not used: there is no C++ backend.")
    p.add_argument("--foreground", action="store_true", help="Run in the foreground.")
    p.add_argument("--no-config-snapshots", "--ncs", action="store_true",
                   help="Neither restore nor save the registered models.")
    p.add_argument("--plugins-path", "--ppath", help="Not used: Java plugins do not apply.")
    p.add_argument("--disable-token-auth", "--dt", action="store_true",
                   help="Serve without token authorization.")
    p.add_argument("--enable-model-api", action="store_true",
                   help="Allow registering and unregistering models.")
    return p


def _running_pid() -> int | None:
    """The pid in the pid file if it is a live modelserve server; an orphan file is removed."""
    try:
        pid = int(PID_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        print("Removing orphan pid file.")
        PID_FILE.unlink(missing_ok=True)
        return None
    if MARKER.encode() in cmdline:
        return pid
    PID_FILE.unlink(missing_ok=True)  # the pid was reused by another program
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop(pid: int | None) -> int:
    if pid is None:
        print("TorchServe is not currently running.")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):  # gone, or reused by another user's
        print("TorchServe already stopped.")
    else:
        Path("key_file.json").unlink(missing_ok=True)
        deadline = time.monotonic() + STOP_WAIT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        print("TorchServe has stopped." if not _alive(pid)
              else "Stopping TorchServe took too long.")
    PID_FILE.unlink(missing_ok=True)
    return 0


def _fail(message: str) -> int:
    print(message)
    return 1


def start_command(args: argparse.Namespace) -> list[str] | int:
    """``modelserve start`` arguments for TorchServe's flags, or an exit code after
    TorchServe's message for a flag it would refuse."""
    command = [sys.executable, "-m", "modelserve", "start", "--personality", "torchserve"]
    ts_config = os.environ.get("TS_CONFIG_FILE") or args.ts_config
    if ts_config:
        if not os.path.isfile(ts_config):
            return _fail(f"--ts-config file not found: {ts_config}")
        command += ["--ts-config", ts_config]
    if args.model_store:
        if not os.path.isdir(args.model_store):
            return _fail(f"--model-store directory not found: {args.model_store}")
        command += ["--model-store", args.model_store]
    elif not ts_config:  # TorchServe also takes model_store from the config file
        return _fail("Missing mandatory parameter --model-store")
    if args.workflow_store:
        if not os.path.isdir(args.workflow_store):
            return _fail(f"--workflow-store directory not found: {args.workflow_store}")
        command += ["--workflow-store", args.workflow_store]
    for flag, value in (("--log-config", args.log_config),
                        ("--cpp-log-config", args.cpp_log_config)):
        if value and not os.path.isfile(value):
            return _fail(f"{flag} file not found: {os.path.realpath(value)}")
    for flag, value, why in (
            ("--cpp-log-config", args.cpp_log_config, "there is no C++ backend"),
            ("--plugins-path", args.plugins_path, "TorchServe's Java plugins do not apply")):
        if value:
            print(f"Warning: {flag} is ignored: {why}.", file=sys.stderr)
    if args.models:
        command += ["--models", *args.models]
    for on, flag in ((args.no_config_snapshots, "--ncs"),
                     (args.disable_token_auth, "--disable-token-auth"),
                     (args.enable_model_api, "--enable-model-api")):
        if on:
            command.append(flag)
    return command


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    pid = _running_pid()
    if args.version:
        print(f"modelserve {__version__} (TorchServe 0.12 command line)")
        return 0
    if args.stop:
        return stop(pid)
    if pid is not None:
        return _fail("TorchServe is already running, please use torchserve --stop to stop "
                     "TorchServe.")
    command = start_command(args)
    if isinstance(command, int):
        return command
    # as TorchServe, --log-config wins over the file vmargs names (ts_log4j)
    env = ({**os.environ, "MODELSERVE_LOG4J_CONFIG": os.path.realpath(args.log_config)}
           if args.log_config else None)
    process = subprocess.Popen(command, env=env)
    PID_FILE.write_text(str(process.pid))
    if args.foreground:
        try:
            return process.wait()
        except KeyboardInterrupt:  # the server got the same Ctrl-C and drains
            return process.wait()
    return 0
