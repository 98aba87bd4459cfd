"""The ``visionloop`` command line: one verb per step of the loop.

Each command module exposes ``register(app)``; heavy imports stay inside the commands so that
``visionloop --help`` answers fast.
"""

from __future__ import annotations

import importlib

import typer

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
]

for _module in COMMAND_MODULES:
    importlib.import_module(f"visionloop.cli.{_module}").register(app)
