"""The ``dataloupe`` command line: a thin Typer layer over the Python API.

Each stage registers its commands from ``dataloupe/_cli/<stage>.py``; no command holds
logic of its own beyond parsing arguments and printing results.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated

import typer

from dataloupe.project import DataloupeError

app = typer.Typer(
    name="dataloupe",
    help="Data-centric image classification: versioned tables, training, analysis, the loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from dataloupe import __version__

        typer.echo(f"dataloupe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Data-centric image classification: versioned tables, training, analysis, the loop."""


def _register_all() -> None:
    # One module per stage; each adds its commands or sub-apps to ``app``. Analysis comes
    # after train because it adds ``runs export`` to train's ``runs`` group.
    from dataloupe._cli import analysis, demo, loop, pretrain, serve, tables, train, ui

    for stage in (tables, train, pretrain, analysis, loop, ui, serve, demo):
        stage.register(app)


_register_all()


def main() -> None:
    """Entry point: run the app, turning expected errors into one-line messages (exit 2)."""
    try:
        rv = app(standalone_mode=False)
        # Without standalone mode click returns the exit code of typer.Exit instead of exiting.
        if isinstance(rv, int) and rv != 0:
            sys.exit(rv)
    except DataloupeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except _CLICK_ERRORS as e:  # usage mistakes: one line, then where the help is
        typer.echo(f"error: {_usage_line(e)}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        typer.echo(f"error: disk full ({e.filename or 'writing'}): {e.strerror}; free some space and retry", err=True)
        sys.exit(2)


def _click_errors() -> tuple[type, ...]:
    """Click's error base class, as typer raises it (typer may vendor its own copy of click)."""
    found = {c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"}
    try:
        import click

        found.add(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


_CLICK_ERRORS = _click_errors()


def _usage_line(e: Exception) -> str:
    msg = " ".join(e.format_message().split())  # one line
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "dataloupe"
    if type(e).__name__ in ("UsageError", "NoSuchOption", "BadOptionUsage", "BadArgumentUsage",
                            "MissingParameter", "BadParameter"):
        return f"{msg} (see `{path} --help`)"
    return msg
