"""``dataloupe export`` / ``predict`` / ``serve``: inference commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import JsonOpt, ProjectOpt, print_json
from dataloupe.project import Project

ModelArg = Annotated[
    str, typer.Argument(help="A run id (uses runs/<run>/checkpoints/best.pt) or an exported model file.")
]


def _bundle(model: str, project: Optional[Path]):
    from dataloupe.serve import load_bundle

    # Only open (and so create) the project store when MODEL is not a file.
    return load_bundle(model, None if Path(model).is_file() else Project.open(project))


def export(
    run: Annotated[str, typer.Argument(help="Run id.")],
    format: Annotated[str, typer.Option("--format", help="state_dict | torchscript | onnx")] = "onnx",
    out: Annotated[Path, typer.Option("--out", help="File to write; metadata also goes to <out>.json.")] = ...,
    project: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Export a run's best checkpoint with its class names and preprocessing."""
    from dataloupe.serve import export_model

    info = export_model(Project.open(project), run, format=format, out=out)
    if json:
        print_json(info)
    else:
        typer.echo(f"exported run {run} as {info['format']} -> {info['path']} ({info['bytes']:,} bytes); "
                   f"metadata {info['metadata_path']}")


def predict(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to show per image.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    project: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Classify images; unreadable files are reported one by one (exit status 1 if any)."""
    from dataloupe.serve import predict_files

    bundle = _bundle(model, project)
    results = predict_files(bundle, images, top_k_count=top_k, batch_size=batch_size)
    failed = sum("error" in r for r in results)
    if json:
        print_json({"model": bundle.metadata.get("run") or bundle.source, "backend": bundle.backend,
                    "results": results, "failed": failed})
    else:
        for r in results:
            if "error" in r:
                typer.echo(f"{r['image']}: error: {r['error']}")
            else:
                top = ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in r["predictions"])
                typer.echo(f"{r['image']}: {top}")
        if failed:
            typer.echo(f"{failed} of {len(results)} images could not be read", err=True)
    if failed:
        raise typer.Exit(1)


def serve(
    model: ModelArg,
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    host: Annotated[str, typer.Option("--host", help="Any non-loopback host requires a token.")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option(
        "--token", help="API token (generated when the host is not loopback).")] = None,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, help="Images per forward pass (1 = no batching).")] = 16,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", min=0, help="How long a batch waits for more requests, ms.")] = 5.0,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.001, help="Largest accepted image file, MiB.")] = 10.0,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="uvicorn log level (warning hides the access log).")] = "info",
    project: ProjectOpt = None,
) -> None:
    """Serve a demo page and a JSON API (GET /health, POST /predict with field 'file')."""
    from dataloupe._netsafety import access_rule, check_port_free
    from dataloupe.serve import ServeConfig, run_server

    access = access_rule(host, token)
    token, generated = access.token, access.generated

    check_port_free(host, port)  # before loading the model and printing an address
    bundle = _bundle(model, project)
    config = ServeConfig(token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_batch=max_batch, max_wait_ms=max_wait_ms)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    if generated:
        typer.echo(f"host {host} is not loopback: generated API token {token}")
    typer.echo(f"serving {bundle.metadata.get('run') or bundle.source} ({bundle.backend}, "
               f"{len(bundle.classes)} classes) at {url}", err=False)
    run_server(bundle, host=host, port=port, config=config, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("predict")(predict)
    app.command("serve")(serve)
