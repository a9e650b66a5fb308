"""``cordscope calibrate`` and ``cordscope flatfield``: their options (the work: :mod:`.calibrate_cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cordscope.options import ChannelGroupOpt, ConfigOpt, ObjectiveGroupOpt, TrustOpt

__all__ = ["calibrate", "flatfield"]


def calibrate(
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    objective: Annotated[str, typer.Option(help="Objective preset to calibrate.")] = "10x",
    channel: Annotated[str, typer.Option(help="Channel preset of the beads (the tracer's).")] = "tdTomato",
    exposure_ms: Annotated[float, typer.Option(help="Exposure (ms).")] = 50.0,
    x_um: Annotated[
        float | None,
        typer.Option(help="Stage X (µm) of the bead area (default: the rig profile's, or the demo slide's)."),
    ] = None,
    y_um: Annotated[float | None, typer.Option(help="Stage Y (µm) of the bead area.")] = None,
    z_um: Annotated[float | None, typer.Option(help="Focus (µm) of the beads (default: autofocus).")] = None,
    z_range_um: Annotated[float, typer.Option(help="Extent of the bead z-stack (µm).")] = 2.0,
    z_step_um: Annotated[float, typer.Option(help="Step of the bead z-stack (µm).")] = 0.5,
    size_offset_um2: Annotated[
        float, typer.Option(help="Size offset (µm²) measured on size-standard beads, stored with the PSF.")
    ] = 0.0,
    dark_offset_adu: Annotated[
        float | None, typer.Option(help="Camera offset (ADU) when there is no shutter to take dark frames.")
    ] = None,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """Measure the PSF from beads; write <cfg stem>.calibration/<objective>-psf.h5, which scans then use."""
    from cordscope.calibrate_cli import run_calibrate
    from cordscope.cli import console

    run_calibrate(
        console,
        config=config,
        trust_config=trust_config,
        objective=objective,
        channel=channel,
        exposure_ms=exposure_ms,
        x_um=x_um,
        y_um=y_um,
        z_um=z_um,
        z_range_um=z_range_um,
        z_step_um=z_step_um,
        size_offset_um2=size_offset_um2,
        dark_offset_adu=dark_offset_adu,
        channel_group=channel_group,
        objective_group=objective_group,
    )


def flatfield(
    scan_file: Annotated[
        Path | None, typer.Argument(help="A scan file (.h5): estimate the flat fields from its tiles.")
    ] = None,
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    objective: Annotated[
        str | None, typer.Option(help="Objective preset (with --config: image a uniform dye slide).")
    ] = None,
    channel: Annotated[
        list[str] | None, typer.Option("--channel", help="Channel preset(s); default: all of them.")
    ] = None,
    exposure_ms: Annotated[float, typer.Option(help="Exposure (ms) of the blank field.")] = 20.0,
    x_um: Annotated[
        float | None,
        typer.Option(help="Stage X (µm) of the dye slide (default: the rig profile's, or here)."),
    ] = None,
    y_um: Annotated[float | None, typer.Option(help="Stage Y (µm) of the dye slide.")] = None,
    frames: Annotated[int, typer.Option(help="Blank-field frames to average per channel.")] = 8,
    dark_offset_adu: Annotated[
        float | None, typer.Option(help="Camera offset (ADU) when there is no shutter to take dark frames.")
    ] = None,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """Flat fields: from a uniform dye slide (--config, --objective) for every scan, or from a scan's tiles.

    With --objective, a uniformly fluorescent slide is imaged per channel and a flat field written
    per objective and channel beside the config (every scan copies it). With SCAN.h5 the flat
    fields are estimated from the scan's own tiles and stored in it (cordscope analyze applies them).
    """
    from cordscope.calibrate_cli import run_flatfield_from_config, run_flatfield_from_scan
    from cordscope.cli import console

    if scan_file is not None:
        if config is not None or objective is not None:
            raise ValueError("give a SCAN.h5 (flat fields from its tiles) or --config/--objective, not both")
        run_flatfield_from_scan(console, scan_file, channel or [])
        return
    if objective is None:
        raise ValueError("give a SCAN.h5, or --objective (and --config) to image a uniform dye slide")
    run_flatfield_from_config(
        console,
        config=config,
        trust_config=trust_config,
        objective=objective,
        channels=channel or [],
        exposure_ms=exposure_ms,
        x_um=x_um,
        y_um=y_um,
        n_frames=frames,
        dark_offset_adu=dark_offset_adu,
        channel_group=channel_group,
        objective_group=objective_group,
    )
