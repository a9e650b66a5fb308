"""Options shared by the ``cordscope`` commands (the microscope they load and its groups)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ChannelGroupOpt", "ConfigOpt", "ObjectiveGroupOpt", "TrustOpt"]

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Micro-Manager .cfg file (default: the demo microscope)."),
]
ChannelGroupOpt = Annotated[
    str | None,
    typer.Option(help="Config group that selects the channel (default: decided from the config)."),
]
ObjectiveGroupOpt = Annotated[
    str | None,
    typer.Option(help="Config group that selects the objective (default: decided from the config)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-config", help="Allow the .cfg to load Python device code outside acquisition.demo."
    ),
]
