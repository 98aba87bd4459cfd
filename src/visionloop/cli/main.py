"""The ``visionloop`` command line: one verb per step of the loop.

Each command module exposes ``register(app)``; heavy imports stay inside the commands so that
``visionloop --help`` answers fast.
"""

from __future__ import annotations

import importlib

import typer

from visionloop.config import Settings, find_project_root
from visionloop.params import ParamsError

app = typer.Typer(
    name="visionloop",
    help="Data → train → register → serve → monitor → heal, for an image classifier.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Modules under visionloop/cli/ that add commands; each defines register(app: typer.Typer).
COMMAND_MODULES = [
    "data",
    "train",
    "loop",
    "drift",
    "monitor",
    "serve",
    "batch",
    "registry",
    "label",
    "db",
    "export",
    "init",
    "stream",
    "diff",
    "shadow",
]



@app.callback()
def validate_project_params() -> None:
    """Check params.yaml before any command runs: a misspelled key or a wrong type stops here, named."""
    try:
        root = find_project_root()
    except FileNotFoundError:
        return  # not inside a project: commands that need one say so themselves
    try:
        Settings.load(root)
    except ParamsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None


for _module in COMMAND_MODULES:
    importlib.import_module(f"visionloop.cli.{_module}").register(app)
