"""The ``dataloupe`` command line: a thin Typer layer over the Python API.

Each stage registers its commands from ``dataloupe/_cli/<stage>.py``; no command holds
logic of its own beyond parsing arguments and printing results.
"""

from __future__ import annotations

import sys

import typer

from dataloupe.project import DataloupeError

app = typer.Typer(
    name="dataloupe",
    help="Data-centric image classification: versioned tables, training, analysis, the loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    except Exception as e:  # click usage errors carry their own exit codes
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
