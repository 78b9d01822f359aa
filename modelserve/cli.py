"""The ``modelserve`` command: start the server, build archives, build the examples."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelserve import __version__
from modelserve.ts_env import from_environment

if TYPE_CHECKING:
    from modelserve.ts_config import TsConfig

app = typer.Typer(
    help="modelserve: serve TorchScript and ONNX models over TorchServe's REST API.",
    no_args_is_help=True, add_completion=False,
)


# The first image of scikit-learn's digits data set (a zero), for the example curl line.
DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0,
              4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14,
              5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelserve {__version__}")
        raise typer.Exit()


class Personality(StrEnum):
    modelserve = "modelserve"
    torchserve = "torchserve"


def spread_multi_values(argv: list[str], option: str = "--models") -> list[str]:
    """TorchServe's ``--models a=a.mar b.mar`` (argparse nargs="+") as click's repeated
    ``--models a=a.mar --models b.mar``: every word after the option up to the next option."""
    out: list[str] = []
    taking = False
    for word in argv:
        if word == option:
            taking = True
            continue
        if word.startswith("-"):
            taking = False
        out += [option, word] if taking else [word]
    return out


def run() -> None:
    """The ``modelserve`` command (``python -m modelserve`` too)."""
    app(args=spread_multi_values(sys.argv[1:]), prog_name="modelserve")


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """modelserve command line."""


def _print_banner(settings: object, errors: list[str]) -> None:
    from modelserve.config import Settings

    assert isinstance(settings, Settings)
    host = settings.host
    http, mgmt, metrics = ("https" if settings.uses_tls(name) else "http"
                           for name in ("inference", "management", "metrics"))
    typer.echo(f"Inference API:  {http}://{host}:{settings.inference_port}  (/ping, /predictions)")
    typer.echo(f"Management API: {mgmt}://{host}:{settings.management_port}  (/models)")
    typer.echo(f"Metrics API:    {metrics}://{host}:{settings.metrics_port}/metrics")
    if settings.grpc_inference_port:
        tls = ", TLS" if settings.uses_tls("grpc") else ""
        typer.echo(f"OIP v2 gRPC:    {host}:{settings.grpc_inference_port}  "
                   f"(inference.GRPCInferenceService{tls}; REST /v2 on the inference port)")
    grpc_host = settings.grpc_torchserve_host or host
    grpc_tls = ", TLS" if settings.uses_tls("grpc") else ""
    for port, api in ((settings.grpc_torchserve_inference_port, "Inference"),
                      (settings.grpc_torchserve_management_port, "Management")):
        if port:
            typer.echo(f"TorchServe gRPC {api}: {grpc_host}:{port}  "
                       f"(org.pytorch.serve.grpc.{api.lower()}.{api}APIsService{grpc_tls})")
    for error in errors:
        typer.secho(f"failed to load {error}", fg=typer.colors.RED, err=True)
    sample = ",".join(str(v) for v in DIGIT_ZERO)
    auth = ""
    if not settings.disable_token_auth:
        typer.echo(f"Token keys (inference, management): {settings.key_path}")
        auth = (f"-H \"Authorization: Bearer $({sys.executable} -m modelserve key inference "
                f"--key-file {settings.key_path})\" ")
    serves_digits = any(
        item in ("digits.mar", "digits=digits.mar")
        or (item == "all" and (settings.model_store / "digits.mar").exists())
        for item in settings.load_models)
    if serves_digits:  # the example model: a request that answers "zero"
        typer.echo(
            f"Try: curl -s {http}://{host}:{settings.inference_port}/predictions/digits {auth}"
            f"-H 'Content-Type: application/json' -d '[{sample}]'"
        )
    else:
        typer.echo(f"Try: curl -s {http}://{host}:{settings.inference_port}/ping")
    typer.echo("Model server started.")  # the line TorchServe's scripts and tests wait for
    typer.echo("Press Ctrl-C to stop the server and its workers.")


def _ts_properties(ts: TsConfig | None, ts_file: Path | None, model_store: Path | None,
                   models: list[str] | None, enable_model_api: bool,
                   disable_token_auth: bool, workflow_store: Path | None = None,
                   env: frozenset[str] = frozenset()) -> dict[str, str]:
    """What TorchServe's ConfigManager holds of its config file and flags: the keys each of its
    snapshot files carries. ``env``: the keys TS_* variables set, which beat the flags."""
    props: dict[str, str] = {}
    if ts is not None and ts_file is not None:
        props = {**ts.properties, "tsConfigFile": str(ts_file)}
    flags = {"model_store": str(model_store) if model_store is not None else None,
             "load_models": ",".join(models) if models else None,
             "enable_model_api": "true" if enable_model_api else None,
             "disable_token_authorization": "true" if disable_token_auth else None,
             "workflow_store": str(workflow_store) if workflow_store is not None else None}
    props.update({key: value for key, value in flags.items()
                  if value is not None and key not in env})
    return props


@app.command()
def start(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML config file (see config.yaml for every key)."),
    model_store: Path | None = typer.Option(
        None, "--model-store", help="Directory that archive names resolve against."),
    workflow_store: Path | None = typer.Option(
        None, "--workflow-store", help="Directory that workflow archive (.war) names resolve "
        "against (default: the model store)."),
    models: list[str] | None = typer.Option(
        None, "--models", help="Archives to load at start: NAME=ARCHIVE, ARCHIVE or 'all', "
        "as TorchServe takes them (--models a=a.mar b.mar, or a.mar,b.mar) or repeated; "
        "replaces load_models from the config."),
    host: str | None = typer.Option(None, "--host", help="Address to bind the listeners to."),
    inference_port: int | None = typer.Option(None, help="Inference API port."),
    management_port: int | None = typer.Option(None, help="Management API port."),
    metrics_port: int | None = typer.Option(None, help="Metrics API port."),
    grpc_inference_port: int | None = typer.Option(
        None, help="OIP v2 gRPC port (GRPCInferenceService); 0 turns gRPC off."),
    log_level: str | None = typer.Option(None, help="debug, info, warning or error."),
    ts_config: Path | None = typer.Option(
        None, "--ts-config", help="A TorchServe config.properties to read (see "
        "docs/torchserve-config.md); the environment and flags still override it."),
    disable_token_auth: bool = typer.Option(
        False, "--disable-token-auth", "--dt", help="Serve without bearer tokens (by default "
        "the inference and management APIs need the keys in key_file; see `modelserve key`)."),
    enable_model_api: bool = typer.Option(
        False, "--enable-model-api", help="Allow POST/DELETE /models (enable_model_api)."),
    no_config_snapshots: bool = typer.Option(
        False, "--no-config-snapshots", "--ncs", help="Neither restore nor save the "
        "registered models (model_snapshot: false)."),
    personality: Personality | None = typer.Option(
        None, "--personality", help="Whose defaults: modelserve's, or TorchServe 0.12's "
        "(lenient query values, no workers at registration; see docs). Default: torchserve "
        "with --ts-config, else modelserve."),
    foreground: bool = typer.Option(
        False, "--foreground", hidden=True, help="Accepted for TorchServe's scripts: start "
        "always runs in the foreground (`modelserve torchserve --start` runs in the "
        "background)."),
) -> None:
    """Start the server in the foreground; Ctrl-C stops it and every worker."""
    from modelserve.config import Settings, load_settings
    from modelserve.personality import torchserve_defaults
    from modelserve.server.engine.ts_snapshot import (
        latest_snapshot,
        missing_archives,
        snapshot_dir,
    )
    from modelserve.ts_config import read_ts_config

    if models:  # TorchServe joins its --models words with commas, then splits on them
        models = [item.strip() for word in models for item in word.split(",") if item.strip()]

    def load(ts: TsConfig | None, ts_file: Path | None) -> Settings:
        ts_values = ts.settings if ts else {}
        # enable_envvars_config: TS_* variables beat these flags (ConfigManager reads them last)
        env = frozenset(from_environment(ts.properties, os.environ) if ts else ())
        return load_settings(
            config, ts_values=ts_values,
            personality=torchserve_defaults(ts_values) if as_torchserve else None,
            model_store=None if "model_store" in env else model_store,
            workflow_store=None if "workflow_store" in env else workflow_store,
            load_models=None if "load_models" in env else models or None, host=host,
            inference_port=inference_port,
            management_port=management_port, metrics_port=metrics_port,
            grpc_inference_port=grpc_inference_port, log_level=log_level,
            disable_token_auth=True if disable_token_auth
            and "disable_token_authorization" not in env else None,
            enable_model_api=True if enable_model_api and "enable_model_api" not in env else None,
            model_snapshot=False if no_config_snapshots else None,
            ts_config_snapshots=False if no_config_snapshots else None,
            ts_properties=_ts_properties(ts, ts_file, model_store, models, enable_model_api,
                                         disable_token_auth, workflow_store, env),
        )

    restored = None
    try:
        ts = read_ts_config(ts_config) if ts_config else None
        as_torchserve = (personality or (Personality.torchserve if ts else None)) \
            == Personality.torchserve
        settings = load(ts, ts_config)
        if ts is None and settings.ts_config_snapshots:
            # ConfigManager: started without a config file, TorchServe reads its latest snapshot
            restored = ts_config = latest_snapshot(snapshot_dir(settings))
            if ts_config is not None:
                ts = read_ts_config(ts_config)
                settings = load(ts, ts_config)
        if ts is None and as_torchserve and Path("config.properties").is_file():
            ts_config = Path("config.properties")  # ...else the working directory's config
            ts = read_ts_config(ts_config)
            settings = load(ts, ts_config)
        missing = missing_archives(settings)  # SnapshotManager.validate: no start without them
        if missing:
            raise ValueError("; ".join(missing))
    except (OSError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from modelserve.server.observability.logfiles import open_log_files

    open_log_files(settings)  # TorchServe's log files, when log_dir / metrics_log_dir are set
    if restored is not None:
        logging.getLogger("modelserve.snapshot").info("starting from the latest TorchServe "
                                                      "snapshot, %s", restored)
    for warning in ts.warnings if ts else []:
        level = logging.INFO if ": ignored, " in warning else logging.WARNING
        logging.getLogger("modelserve.ts_config").log(level, "%s: %s", ts_config, warning)
    zygote = None
    if settings.worker_start == "zygote" and settings.load_models:
        from modelserve.server.engine.zygote import launch

        with contextlib.suppress(OSError):  # else the first worker's launch starts it
            zygote = launch()  # its torch import runs beside the server's imports below
    from modelserve.server.app import run  # the server's imports, once the settings hold

    raise typer.Exit(run(settings, on_ready=_print_banner, zygote=zygote))


@app.command()
def key(
    key_type: str = typer.Argument(
        "inference", help="inference (port 8080), management (8081) or API (rotates keys)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The config file the server was started with."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="The key file itself (default: key_file from the config, "
        "else <workdir>/key_file.json)."),
) -> None:
    """Print a token key from the server's key file, for `Authorization: Bearer KEY`."""
    import json

    from modelserve.config import load_settings

    try:
        path = key_file or load_settings(config).key_path
        data = json.loads(path.read_text())
        typer.echo(data[key_type]["key"])
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc} (the server creates it at its first start, unless "
                    "token auth is disabled)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.secho(f"error: cannot read key {key_type!r}: {exc}", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(2) from None


@app.command()
def archive(
    model_name: str = typer.Option(..., "--model-name", help="Name of the model."),
    version: str = typer.Option("1.0", "--version", "-v", help="Model version."),
    handler: str = typer.Option(
        ..., "--handler", help="Built-in handler name, or path/to/handler.py[:function]."),
    serialized_file: Path | None = typer.Option(
        None, "--serialized-file", help="TorchScript (.pt), ONNX (.onnx), torch.export or "
        "AOTInductor (.pt2) file, or a state_dict (.pt/.pth) with --model-file."),
    model_file: Path | None = typer.Option(
        None, "--model-file", help="Python file defining the model class (eager mode)."),
    extra_files: str | None = typer.Option(
        None, "--extra-files", help="Comma-separated files or directories to include."),
    requirements_file: Path | None = typer.Option(
        None, "--requirements-file", "-r", help="requirements.txt for the model."),
    config_file: Path | None = typer.Option(
        None, "--config-file", "-c", help="model-config.yaml with serving parameters."),
    runtime: str = typer.Option("python", "--runtime", help="python, python3 or LSP."),
    export_path: Path = typer.Option(
        Path("."), "--export-path", help="Directory the archive is written to."),
    archive_format: str = typer.Option(
        "default", "--archive-format", help="default (.mar zip), tgz, no-archive or zip-store."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing archive."),
    aot_compile: bool = typer.Option(
        False, "--aot-compile", help="Compile the --serialized-file torch.export .pt2 with "
        "AOTInductor for this machine (CUDA if present, else CPU) and archive that package "
        "(modelserve's addition; minutes for large models)."),
) -> None:
    """Build a model archive (.mar) with torch-model-archiver's flags and layout."""
    from modelserve.archive import create_archive

    try:
        path = create_archive(
            model_name=model_name, version=version, handler=handler,
            serialized_file=serialized_file, model_file=model_file, extra_files=extra_files,
            requirements_file=requirements_file, config_file=config_file, runtime=runtime,
            export_path=export_path, archive_format=archive_format, force=force,
            aot_compile=aot_compile,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))


@app.command()
def examples(
    model_store: Path = typer.Option(
        Path("model_store"), "--model-store", help="Where to write the example archives."),
    formats: bool = typer.Option(
        False, "--formats", help="Also build resnet_ep, resnet_aoti, resnet_eager and "
        "resnet_compile: resnet as torch.export, AOTInductor, eager and torch.compile "
        "(about a minute more on 2 CPU cores)."),
) -> None:
    """Build the example models (digits, resnet; TorchScript and ONNX) and their archives."""
    from modelserve.examples.build import build_all

    for path in build_all(model_store):
        typer.echo(str(path))
    if formats:
        from modelserve.examples.formats import build_resnet_formats

        for path in build_resnet_formats(model_store):
            typer.echo(str(path))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def torchserve(ctx: typer.Context) -> None:
    """TorchServe's command line: `modelserve torchserve --start|--stop [TorchServe's flags]`
    (background server with a pid file, as `torchserve` does; --help lists the flags)."""
    from modelserve.torchserve_cli import main as torchserve_main

    raise typer.Exit(torchserve_main(ctx.args))
