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

# Modules under visionloop/ that add commands; each defines register(app: typer.Typer).
COMMAND_MODULES = [
    "cli_data",
    "cli_train",
    "cli_loop",
    "cli_drift",
    "cli_monitor",
    "cli_serve",
    "cli_batch",
    "cli_registry",
    "cli_label",
]

for _module in COMMAND_MODULES:
    importlib.import_module(f"visionloop.{_module}").register(app)
