"""The ``cordscope`` command: parses arguments and calls the packages.

Every user-facing error (a bad config, plan or file; a device fault) is
printed as one red line naming what is wrong, with exit code 2; a traceback
never reaches the user unless ``CORDSCOPE_DEBUG=1`` is set.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from acquisition.errors import CordScopeError

app = typer.Typer(
    name="cordscope",
    help="Microscope acquisition and live analysis for spinal cord tract tracing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Micro-Manager .cfg file (default: the demo microscope)."),
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-config", help="Allow the .cfg to load Python device code outside acquisition.demo."),
]


def _user_errors(func: F) -> F:
    """Turn CordScope's typed errors into one red line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (CordScopeError, FileNotFoundError, ValueError) as e:
            if os.environ.get("CORDSCOPE_DEBUG") == "1":
                raise
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _core(config: Path | None, trust_config: bool) -> Any:
    from acquisition.hardware import build_core

    return build_core(config, trust_config=trust_config)


@app.command()
@_user_errors
def devices(config: ConfigOpt = None, trust_config: TrustOpt = False) -> None:
    """List the loaded devices, their roles, channel presets, objectives and pixel sizes."""
    from acquisition.hardware import describe_hardware

    hw = describe_hardware(_core(config, trust_config))
    console.print(f"[bold]{hw.config_file}[/]")
    table = Table("label", "type", "library", "device", title="Devices")
    for row in hw.devices:
        table.add_row(*row)
    console.print(table)
    roles = Table("role", "device", title="Roles")
    for role, label in hw.roles.items():
        roles.add_row(role, label or "—")
    console.print(roles)
    console.print(f"Channel group [bold]{hw.channel_group or '—'}[/]: {', '.join(hw.channel_presets) or '—'}")
    console.print(
        f"Objective group [bold]{hw.objective_group or '—'}[/]: {', '.join(hw.objective_presets) or '—'}"
    )
    px = Table("pixel-size config", "µm/px", title="Pixel sizes")
    for name, size in sorted(hw.pixel_sizes_um.items(), key=lambda kv: -kv[1]):
        px.add_row(name, f"{size:g}")
    console.print(px)
    console.print(
        f"Now: {hw.pixel_size_um:g} µm/px, image {hw.image_width_px} × {hw.image_height_px} px "
        f"({hw.image_width_px * hw.pixel_size_um:.0f} × {hw.image_height_px * hw.pixel_size_um:.0f} µm)"
    )


@app.command()
@_user_errors
def snap(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .tif (raw 16-bit) or .png (composite).")],
    demo: Annotated[bool, typer.Option("--demo", help="Use the demo microscope, over a demo section.")] = False,
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    channel: Annotated[
        list[str] | None, typer.Option("--channel", help="Channel preset(s); default: all of them.")
    ] = None,
    objective: Annotated[str | None, typer.Option(help="Objective preset, e.g. 10x.")] = None,
    exposure_ms: Annotated[float | None, typer.Option(help="Exposure (ms) for every channel.")] = None,
    x_um: Annotated[float | None, typer.Option(help="Stage X (µm) to snap at.")] = None,
    y_um: Annotated[float | None, typer.Option(help="Stage Y (µm) to snap at.")] = None,
) -> None:
    """Snap one field of view in one or more channels and write it to a file."""
    from acquisition.hardware import objective_group
    from acquisition.snap import snap_channels
    from analysis.figures import save_channel_image

    if demo and config is not None:
        raise ValueError("--demo uses the demo microscope; do not combine it with --config")
    if out.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise ValueError(f"--out {out}: use a .tif or .png file name")
    core = _core(config, trust_config)
    if objective:
        group = objective_group(core)
        if not group:
            raise ValueError("this config has no Objective group; cannot set --objective")
        core.setConfig(group, objective)
    xy = (x_um, y_um) if x_um is not None and y_um is not None else None
    if xy is None and demo:
        xy = _demo_snap_position(core)
    channels = channel or list(core.getAvailableConfigs(core.getChannelGroup()))
    exposures = [exposure_ms] * len(channels) if exposure_ms is not None else None
    result = snap_channels(core, channels, exposures_ms=exposures, xy_um=xy)
    path = save_channel_image(out, result.images, result.channel_names, pixel_size_um=result.pixel_size_um)
    x, y = result.center_xy_um
    console.print(
        f"wrote {path} ({', '.join(result.channel_names)}; {result.images.shape[2]}×{result.images.shape[1]} px "
        f"at {result.pixel_size_um:g} µm/px; stage {x:.0f}, {y:.0f} µm)"
    )


def _demo_snap_position(core: Any) -> tuple[float, float]:
    """A point over white matter and rubrospinal axons of the demo slide's first section."""
    from acquisition.demo import find_demo_hub

    hub = find_demo_hub(core)
    if hub is None:
        raise ValueError("--demo needs the demo microscope (hardware_configs/demo.cfg)")
    section = hub.slide.sections[0]
    z = hub.slide.focal_plane_z_um(*section.spec.centre_um)
    core.setPosition(float(z))
    rst = getattr(section, "rubrospinal_territory", None)
    if rst is not None and len(rst):
        cx, cy = (float(v) for v in rst.mean(axis=0))
        return (cx, cy)
    return tuple(float(v) for v in section.spec.centre_um)  # type: ignore[return-value]


@app.command()
@_user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where to write the demo's files.")] = Path(
        "demo-output"
    ),
) -> None:
    """Run the demo on the simulated microscope (what ``make demo`` runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix in (".tif", ".png"):
        snap(out=out_dir / f"demo-snap{suffix}", demo=True)


def main() -> None:
    """Entry point for ``python -m cordscope``."""
    app()


if __name__ == "__main__":
    sys.exit(main())
