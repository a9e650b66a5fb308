"""The ``cordscope`` command: parses arguments and calls the packages.

Every user-facing error (a bad config, plan or file; a bad option or a
usage error; a device fault) is printed as one red line naming what is
wrong, with exit code 2; an error that is a bug in CordScope is one line
too, with exit code 3; a traceback never reaches the user unless
``CORDSCOPE_DEBUG=1`` is set. Outputs are checked against the inputs and
options against their ranges before any work (:mod:`cordscope.paths_cli`).
The process never waits at exit for a device call the watchdog gave up on.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Column, Table
from typer._click import exceptions as click_errors  # typer's own click (typer >= 0.24 vendors it)
from typer.core import TyperGroup

from acquisition.errors import CordScopeError
from cordscope.calibration_commands import calibrate, flatfield
from cordscope.options import ChannelGroupOpt, ConfigOpt, ObjectiveGroupOpt, TrustOpt
from cordscope.paths_cli import check_not_an_input, check_output_file, check_output_folder


class _Command(typer.Typer):
    """The typer app; as a process it never waits on a device that stopped answering when it exits."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as e:
            _leave(e)
            raise


def _leave(e: SystemExit) -> None:
    """End the process at once when a device call or a scan is still running (a hung device)."""
    from acquisition.engine import unanswered_device_calls
    from cordscope.scanning import _exit_now, scans_running

    if unanswered_device_calls() or scans_running():
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _exit_now(code)


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing argument, an unknown option, a value of the wrong type) in one line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click_errors.NoArgsIsHelpError as e:
            console.print(e.format_message(), highlight=False, markup=False)
            sys.exit(e.exit_code)
        except click_errors.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "cordscope"
            message = " ".join(e.format_message().split())
            err_console.print(
                f"[bold red]error:[/] {rich_escape(message)} (see: {where} --help)", highlight=False
            )
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            err_console.print(f"[bold red]error:[/] {rich_escape(e.format_message())}", highlight=False)
            sys.exit(e.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = _Command(
    name="cordscope",
    cls=_OneLineErrors,
    help="Microscope acquisition and live analysis for spinal cord tract tracing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(func: F) -> F:
    """Turn errors into one red line: exit code 2 for what a user can act on, 3 for a bug.

    CordScope's typed errors, bad values (``ValueError``, pydantic's in one
    line) and failed file operations (``OSError``) are the user's to fix; any
    other exception is a bug in CordScope, still shown in one line.
    ``CORDSCOPE_DEBUG=1`` shows the traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get("CORDSCOPE_DEBUG") == "1":
                raise
            text, code = _error_text(e)
            err_console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _error_text(e: Exception) -> tuple[str, int]:
    """The message of an error as the user sees it, and the exit code."""
    from pydantic import ValidationError

    from acquisition.plan import PlanError

    if isinstance(e, PlanError):
        return rich_escape(str(e)), 2  # one line per problem in the plan
    if isinstance(e, ValidationError):
        text = one_line_validation_error(e)
    elif isinstance(e, (CordScopeError, ValueError)):
        text = str(e)
    elif isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        text = f"{e.strerror}{where}" if e.strerror else (str(e) or type(e).__name__)
    else:
        return (
            rich_escape(
                f"internal error (a bug in CordScope; CORDSCOPE_DEBUG=1 shows where): {type(e).__name__}: "
                + " ".join(str(e).split())
            ),
            3,
        )
    return rich_escape(" ".join(text.split()) or type(e).__name__), 2


def one_line_validation_error(e: Any, *, option_names: dict[str, str] | None = None) -> str:
    """A pydantic ``ValidationError`` in one line: ``field: problem (got value)``, problems joined by ``;``.

    ``option_names`` maps a field to the command-line option that set it
    (``{"heatmap_bin_um": "--bin-um"}``), which is then named instead.
    """
    from acquisition.plan.yaml_io import _describe_error

    parts = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"])
        name = (option_names or {}).get(field, field)
        parts.append(f"{name}: {_describe_error(err)}" if name else _describe_error(err))
    return "; ".join(parts)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    # Importing pymmcore-plus sets the root logger to DEBUG; filter at our handler.
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # pymmcore-plus logs every MDA start/cancel with the whole sequence; its
    # warnings repeat what CordScope reports in one line, so show only errors.
    logging.getLogger("pymmcore-plus").setLevel(logging.INFO if verbose else logging.ERROR)


def _check_number(
    option: str, value: float | None, *, gt: float | None = None, lt: float | None = None
) -> None:
    """Refuse a non-finite number (typer reads ``inf`` and ``nan``) or one out of range, naming the option."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number (got {value})")
    if gt is not None and not value > gt:
        raise ValueError(f"{option} must be > {gt:g} (got {value:g})")
    if lt is not None and not value < lt:
        raise ValueError(f"{option} must be < {lt:g} (got {value:g})")


def _core(config: Path | None, trust_config: bool) -> Any:
    from acquisition.hardware import build_core

    return build_core(config, trust_config=trust_config)


@app.command()
@_user_errors
def devices(
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """List the devices and roles, and what CordScope decided about the rig, and why."""
    from acquisition.hardware import describe_hardware
    from acquisition.rig_profile import describe_rig

    core = _core(config, trust_config)
    hw = describe_hardware(core)
    console.print(f"[bold]{hw.config_file}[/]")
    table = Table("label", "type", "library", "device", title="Devices")
    for row in hw.devices:
        table.add_row(*row)
    console.print(table)
    roles = Table("role", "device", title="Roles")
    for role, label in hw.roles.items():
        roles.add_row(role, label or "—")
    console.print(roles)
    rig = describe_rig(core, config, channel_group=channel_group, objective_group=objective_group)
    for line in rig.lines():
        console.print(line, highlight=False, markup=False)
    console.print(
        f"Now: {hw.pixel_size_um:g} µm/px, image {hw.image_width_px} × {hw.image_height_px} px "
        f"({hw.image_width_px * hw.pixel_size_um:.0f} × {hw.image_height_px * hw.pixel_size_um:.0f} µm)"
    )


@app.command()
@_user_errors
def snap(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .tif (raw 16-bit) or .png (composite).")],
    demo: Annotated[
        bool, typer.Option("--demo", help="Use the demo microscope, over a demo section.")
    ] = False,
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    channel: Annotated[
        list[str] | None, typer.Option("--channel", help="Channel preset(s); default: all of them.")
    ] = None,
    objective: Annotated[str | None, typer.Option(help="Objective preset, e.g. 10x.")] = None,
    exposure_ms: Annotated[float | None, typer.Option(help="Exposure (ms) for every channel.")] = None,
    x_um: Annotated[float | None, typer.Option(help="Stage X (µm) to snap at.")] = None,
    y_um: Annotated[float | None, typer.Option(help="Stage Y (µm) to snap at.")] = None,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """Snap one field of view in one or more channels and write it to a file."""
    from acquisition.roles import decide_channel_group, decide_objective_group
    from acquisition.snap import snap_channels
    from analysis.figures import save_channel_image

    if demo and config is not None:
        raise ValueError("--demo uses the demo microscope; do not combine it with --config")
    if out.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise ValueError(f"--out {out}: use a .tif or .png file name")
    check_output_file(out, "--out", suffixes=(".tif", ".tiff", ".png"))
    _check_number("--exposure-ms", exposure_ms, gt=0)
    _check_number("--x-um", x_um)
    _check_number("--y-um", y_um)
    if (x_um is None) != (y_um is None):
        raise ValueError("give both --x-um and --y-um, or neither")
    core = _core(config, trust_config)
    channels_of = decide_channel_group(core, channel_group).group
    core.setChannelGroup(channels_of)  # snap_channels switches presets of the core's channel group
    channels = channel or list(core.getAvailableConfigs(channels_of))
    group = decide_objective_group(core, objective_group).group if objective else ""
    _check_snap_request(
        core, objective=objective, objective_group=group, channels=channels, x_um=x_um, y_um=y_um
    )
    if objective:
        core.setConfig(group, objective)
        core.waitForConfig(group, objective)
    xy = (x_um, y_um) if x_um is not None and y_um is not None else None
    if xy is None and demo:
        xy = _demo_snap_position(core)
    exposures = [exposure_ms] * len(channels) if exposure_ms is not None else None
    result = snap_channels(core, channels, exposures_ms=exposures, xy_um=xy)
    path = save_channel_image(out, result.images, result.channel_names, pixel_size_um=result.pixel_size_um)
    x, y = result.center_xy_um
    console.print(
        f"wrote {path} ({', '.join(result.channel_names)}; "
        f"{result.images.shape[2]}×{result.images.shape[1]} px at {result.pixel_size_um:g} µm/px; "
        f"stage {x:.0f}, {y:.0f} µm)"
    )


def _demo_objectives() -> list[str]:
    """Objective presets of the demo config, read from its text (no core needed)."""
    from acquisition.hardware import DEMO_CONFIG

    names = []
    for line in DEMO_CONFIG.read_text().splitlines():
        fields = line.removeprefix("#py ").split(",")
        if len(fields) >= 3 and fields[0] == "ConfigGroup" and fields[1] == "Objective":
            names.append(fields[2])
    return sorted(set(names), key=names.index)


def _check_snap_request(
    core: Any,
    *,
    objective: str | None,
    objective_group: str,
    channels: list[str],
    x_um: float | None,
    y_um: float | None,
) -> None:
    """Refuse an unknown objective or channel, or a position off the stage, before anything moves."""
    from acquisition.hardware import config_presets
    from acquisition.rig_profile import rig_profile_for

    if objective:
        group = objective_group
        if objective not in config_presets(core, group):
            raise ValueError(
                f"--objective {objective}: not a preset of {group} ({', '.join(config_presets(core, group))})"
            )
    group = core.getChannelGroup()  # decided from the config by the caller
    known = list(core.getAvailableConfigs(group))
    unknown = [c for c in channels if c not in known]
    if unknown:
        raise ValueError(f"--channel {unknown[0]}: not a preset of {group} ({', '.join(known)})")
    if x_um is not None and y_um is not None:
        travel, where = rig_profile_for(core).xy_limits_um()
        if not travel.contains(x_um, y_um):
            raise ValueError(
                f"--x-um {x_um:g} --y-um {y_um:g} is outside {where}: X {travel.x_min_um:g}.."
                f"{travel.x_max_um:g}, Y {travel.y_min_um:g}..{travel.y_max_um:g} µm"
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
def plan(
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan file to write (.yaml).")] = Path(
        "demo-plan.yaml"
    ),
    demo: Annotated[bool, typer.Option("--demo", help="The demo slide's plan (every section).")] = False,
    scan_file: Annotated[
        Path | None,
        typer.Option("--scan-file", help="Scan file the plan writes to (default: beside the plan)."),
    ] = None,
    objective: Annotated[str, typer.Option(help="Objective preset.")] = "10x",
) -> None:
    """Write a scan plan (for now: the demo slide's; see also ``overview``)."""
    from acquisition.demo.plans import demo_plan
    from acquisition.plan import save_plan

    if not demo:
        raise ValueError("only --demo plans are written directly; use `cordscope overview` for a real slide")
    check_output_file(out, "--out", suffixes=(".yaml", ".yml"))
    output = scan_file or out.with_suffix(".h5")
    check_not_an_input(output, {"the plan file written": out})
    objectives = _demo_objectives()
    if objective not in objectives:
        raise ValueError(f"--objective {objective}: the demo microscope has {', '.join(objectives)}")
    the_plan = demo_plan(output=output, objective=objective)
    save_plan(the_plan, out)
    n = len(the_plan.sections)
    console.print(f"wrote {out}: {n} sections of the demo slide at {objective}, scanning to {output}")


@app.command()
@_user_errors
def overview(
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan file to write (.yaml).")],
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    anatomy_channel: Annotated[str, typer.Option(help="Channel preset of the counterstain.")] = "DAPI",
    tracer_channel: Annotated[str, typer.Option(help="Channel preset of the tracer.")] = "tdTomato",
    objective: Annotated[str, typer.Option(help="Objective preset of the overview.")] = "4x",
    scan_objective: Annotated[str, typer.Option(help="Objective preset the plan scans with.")] = "10x",
    exposure_ms: Annotated[float, typer.Option(help="Overview exposure (ms).")] = 20.0,
    region_um: Annotated[
        tuple[float, float, float, float] | None,
        typer.Option(
            help="Slide area to survey: x0 y0 x1 y1 in stage µm (default: the slide beside its label, from "
            "the rig profile beside the config, within the stage travel)."
        ),
    ] = None,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """Survey the slide at low magnification, find the sections, write a plan for them."""
    from cordscope.overview_plan import overview_to_plan

    check_output_file(out, "--out", suffixes=(".yaml", ".yml"))
    _check_number("--exposure-ms", exposure_ms, gt=0)
    if region_um is not None:
        x0, y0, x1, y1 = region_um
        for v in region_um:
            _check_number("--region-um", v)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(
                f"--region-um x0 y0 x1 y1 needs x0 < x1 and y0 < y1 (got {x0:g} {y0:g} {x1:g} {y1:g})"
            )

    the_plan, tif, found = overview_to_plan(
        console,
        _core(config, trust_config),
        out=out,
        config=config,
        channel_group=channel_group,
        objective_group=objective_group,
        anatomy_channel=anatomy_channel,
        tracer_channel=tracer_channel,
        objective=objective,
        scan_objective=scan_objective,
        exposure_ms=exposure_ms,
        region_um=region_um,
    )
    table = Table("section", "centre x µm", "centre y µm", "area mm²", title=f"{len(found)} sections found")
    for section, f in zip(the_plan.sections, found, strict=True):
        table.add_row(
            section.id, f"{f.centroid_um[0]:.0f}", f"{f.centroid_um[1]:.0f}", f"{f.area_um2 / 1e6:.2f}"
        )
    console.print(table)
    console.print(
        f"wrote {out} and the overview image {tif}; fill in animal, group, level and injection side"
    )


@app.command()
@_user_errors
def validate(
    plan_file: Annotated[Path, typer.Argument(help="Plan (.yaml) to check.")],
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    overwrite: Annotated[bool, typer.Option(help="An existing output file will be replaced.")] = False,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """Check a plan against its hardware config without moving anything."""
    from acquisition.plan import load_plan, validate_plan
    from cordscope.scanning import check_analysis_settings, check_plan_paths

    the_plan = load_plan(plan_file)  # names a bad key (analysis: included) before the hardware loads
    the_plan = _with_groups(the_plan, channel_group, objective_group)
    if config is not None:
        the_plan = the_plan.model_copy(update={"hardware_config": config.expanduser().absolute()})
    check_plan_paths(the_plan, plan_file)
    core = _core(the_plan.hardware_config, trust_config)
    summary = validate_plan(the_plan, core, overwrite=overwrite)
    check_analysis_settings(the_plan, core)
    console.print(f"[green]ok[/]: {plan_file}")
    _print_plan_summary(summary)


def _with_groups(the_plan: Any, channel_group: str | None, objective_group: str | None) -> Any:
    """The plan with the groups given on the command line (they win over the plan's)."""
    update = {k: v for k, v in (("channel_group", channel_group), ("objective_group", objective_group)) if v}
    return the_plan.model_copy(update=update) if update else the_plan


def _print_plan_summary(summary: Any) -> None:
    table = Table("section", "tiles", "minimum", "tiles ÷ minimum", title="Plan")
    minimum = getattr(summary, "min_tiles_per_section", {}) or {}
    for sid, n in summary.tiles_per_section.items():
        least = minimum.get(sid)
        table.add_row(sid, str(n), str(least or ""), f"{n / least:.2f}" if least else "")
    console.print(table)
    w, h = summary.tile_size_um
    console.print(
        f"{summary.total_tiles} tiles of {w:.0f} × {h:.0f} µm at {summary.pixel_size_um:g} µm/px, "
        f"{summary.n_images} images, about {summary.estimated_bytes / 1e9:.2f} GB"
    )


@app.command()
@_user_errors
def scan(
    plan_file: Annotated[Path | None, typer.Argument(help="Plan (.yaml) to scan.")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Scan the demo slide on the demo microscope.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted scan file (.h5) from its stored plan."),
    ] = None,
    config: ConfigOpt = None,
    trust_config: TrustOpt = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Scan file to write (overrides the plan).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing scan file.")] = False,
    sensor_px: Annotated[
        int | None, typer.Option(help="Demo camera sensor size (px); --demo uses 512 to be quick.")
    ] = None,
    analysis: Annotated[
        bool, typer.Option("--analysis/--no-analysis", help="Analyse tiles live; print the region tables.")
    ] = True,
    figures: Annotated[
        Path | None, typer.Option(help="Folder for a PNG per section: mosaic with its heatmap.")
    ] = None,
    channel_group: ChannelGroupOpt = None,
    objective_group: ObjectiveGroupOpt = None,
) -> None:
    """Tile every section of a plan into one HDF5 file, with progress and a summary.

    Exits with code 1 when tiles failed or the scan stopped early (it is then
    resumable with --resume).
    """
    from cordscope.scanning import run_scan_cli

    code = run_scan_cli(
        console,
        plan_file=plan_file,
        demo=demo,
        resume=resume,
        config=config,
        trust_config=trust_config,
        out=out,
        overwrite=overwrite,
        sensor_px=sensor_px,
        analysis=analysis,
        figures=figures,
        groups=(channel_group, objective_group),
    )
    if code:
        raise typer.Exit(code)


@app.command()
@_user_errors
def info(
    scan_file: Annotated[Path, typer.Argument(help="Scan file (.h5).")],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Read every done tile and check it against its stored checksum; exit 1 if one is damaged.",
        ),
    ] = False,
) -> None:
    """Summarise a scan file: sections, tiles done/failed/pending, size, duration, calibration, tile flags."""
    from acquisition.storage import ScanFile, TileCheck
    from cordscope.calibration_tables import print_calibration, read_report

    checks: dict[str, TileCheck] = {}
    with ScanFile.open(scan_file) as scan_data:
        summary = scan_data.summary()
        attrs = {sid: scan_data.section(sid).attrs for sid in scan_data.section_ids}
        being_written = scan_data.live
        if verify:
            checks = {sid: scan_data.section(sid).check_done_tiles() for sid in scan_data.section_ids}
        report = read_report(scan_data)
    console.print(f"[bold]{summary.path}[/]  format v{summary.format_version}, created {summary.created}")
    width = max((len(sid) for sid in summary.sections), default=7)
    table = Table("animal", "group", "level", "orientation", "done", "failed", "pending", "tiles")
    table.columns.insert(0, Column("section", no_wrap=True, min_width=width))
    for sid, s in summary.sections.items():
        a = attrs[sid]
        table.add_row(
            sid,
            str(a.get("animal") or "—"),
            str(a.get("group") or "—"),
            str(a.get("level") or "—"),
            str(a.get("orientation") or "—"),
            str(s.done),
            str(s.failed),
            str(s.pending),
            str(s.n_tiles),
        )
    console.print(table)
    duration = f"{summary.duration_s:.1f} s" if summary.duration_s is not None else "—"
    if being_written:
        state = "being written by a running scan (read without disturbing it)"
    elif summary.complete:
        state = "complete"
    else:
        state = "incomplete (resume with: cordscope scan --resume FILE)"
    console.print(
        f"{summary.done}/{summary.n_tiles} tiles, {summary.file_size_bytes / 1e6:.1f} MB, {duration}; {state}"
    )
    print_calibration(console, report)
    if verify:
        _print_verification(scan_file, checks)


def _print_verification(scan_file: Path, checks: dict[str, Any]) -> None:
    """The outcome of ``info --verify``; exit code 1 when a done tile is damaged."""
    from acquisition.storage import tile_name

    verified = sum(c.verified for c in checks.values())
    unverified = sum(c.unverified for c in checks.values())
    damaged = [tile_name(sid, t) for sid, c in checks.items() for t in c.damaged]
    note = f"; {unverified} done tiles have no checksum (written before checksums)" if unverified else ""
    if not damaged:
        console.print(f"verified: {verified} done tiles match their checksums{note}")
        return
    shown = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
    console.print(
        f"[red]damaged: {len(damaged)} done tiles no longer match their checksums ({shown})[/]; "
        f"{verified} verified{note}. Resuming acquires them again: cordscope scan --resume {scan_file}",
        highlight=False,
    )
    raise typer.Exit(1)


app.command()(_user_errors(calibrate))
app.command()(_user_errors(flatfield))


@app.command()
@_user_errors
def export(
    scan_file: Annotated[Path, typer.Argument(help="Scan file (.h5).")],
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="bdv (Fiji BigDataViewer/BigStitcher), ome-zarr, csv, or qupath (OME-TIFF + GeoJSON).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (csv: a file or folder; default beside the scan)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export of this scan in --out.")] = False,
) -> None:
    """Export a scan for other tools: Fiji BigStitcher (bdv), OME-Zarr viewers, spreadsheets (csv), QuPath."""
    from cordscope.export_cli import run_export

    for path in run_export(scan_file, export_format, out, overwrite=overwrite, console=console):
        console.print(f"wrote {path}")


@app.command()
@_user_errors
def view(
    scan_file: Annotated[Path, typer.Argument(help="Scan file (.h5).")],
    tiles: Annotated[bool, typer.Option(help="Also add every done tile at full resolution.")] = False,
) -> None:
    """Open a scan's section mosaics, heatmaps (and tiles) as napari layers (needs napari installed)."""
    from gui.napari_view import NapariMissingError, view_scan

    try:
        view_scan(scan_file, tiles=tiles)
    except NapariMissingError as e:
        err_console.print(str(e), highlight=False, markup=False)
        raise typer.Exit(2) from None


@app.command()
@_user_errors
def regions(
    scan_file: Annotated[Path, typer.Argument(help="Analysed scan file (.h5).")],
    export_path: Annotated[
        Path, typer.Option("--export", help="GeoJSON file to write: every section's regions in stage µm.")
    ],
) -> None:
    """Write a scan's regions (stage µm, with kind, who and when) to GeoJSON; edit, then analyze --regions."""
    from analysis.qupath import export_regions_geojson

    check_not_an_input(export_path, {"the scan file": scan_file})
    check_output_file(export_path, "--export", suffixes=(".geojson", ".json"))
    out = export_regions_geojson(scan_file, export_path)
    console.print(f"wrote {out}")


@app.command()
@_user_errors
def analyze(
    scan_files: Annotated[list[Path], typer.Argument(help="Finished scan file(s) (.h5).")],
    dark_offset_adu: Annotated[
        float | None,
        typer.Option(help="Camera offset subtracted from every tile (ADU); default: the scan's dark frames."),
    ] = None,
    bin_um: Annotated[
        float | None, typer.Option(help="Heatmap bin size (µm); default: the plan's (50).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Analyse the files in parallel on a local Dask cluster of N worker processes."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Analyse the files on an existing Dask cluster (scheduler address, e.g. tcp://host:8786)."
        ),
    ] = None,
    regions_file: Annotated[
        Path | None,
        typer.Option(
            "--regions",
            help="GeoJSON regions to apply (cordscope regions --export, or QuPath's) and re-analyse "
            "from the stored sums, without segmenting tiles again.",
        ),
    ] = None,
    section: Annotated[
        str | None, typer.Option(help="Section a QuPath GeoJSON belongs to (default: from its file name).")
    ] = None,
) -> None:
    """Rerun the regional analysis of scan files offline (same code as the live run).

    Writes each section's ``analysis/`` group into the file and a
    ``<scan>.regions.csv`` beside it, and prints the region tables. Regions
    edited, drawn or imported by hand are applied again. With
    ``--workers N`` or ``--scheduler ADDRESS`` the files are analysed in
    parallel with Dask, one file per task (identical results).
    """
    from analysis.region_edits import analyze_keeping_regions
    from analysis.scan_analysis import region_csv_path
    from cordscope.tables import print_region_tables

    if regions_file is not None:
        from cordscope.regions_cli import run_regions_import

        if len(scan_files) != 1 or workers is not None or scheduler is not None:
            raise ValueError("--regions applies to one scan file, without --workers/--scheduler")
        run_regions_import(console, scan_files[0], regions_file, section=section)
        return
    overrides = {
        k: v for k, v in (("dark_offset_adu", dark_offset_adu), ("heatmap_bin_um", bin_um)) if v is not None
    }
    if overrides:
        _check_analysis_overrides(overrides)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {workers})")
    if workers is None and scheduler is None:
        for path in scan_files:
            settings = None
            if overrides:
                from acquisition.storage import ScanFile
                from analysis.settings import AnalysisSettings, settings_of_scan

                with ScanFile.open(path) as scan:
                    stored = settings_of_scan(scan.plan_yaml).model_dump()
                # an offset given here is the one subtracted, not the scan's dark frames'
                fixed = {"dark_offset_from": "plan"} if dark_offset_adu is not None else {}
                settings = AnalysisSettings.model_validate({**stored, **overrides, **fixed})
            tables, kept, problems = analyze_keeping_regions(path, settings=settings)
            print_region_tables(console, path.name, tables, sections=_section_ids(path))
            console.print(f"wrote the analysis into {path} and {region_csv_path(path)}")
            if kept:
                console.print(f"kept {kept} region(s) edited, drawn or imported by hand")
            for problem in problems:
                console.print(f"[yellow]hand-made region not applied again: {problem}", highlight=False)
        return
    if overrides:
        raise ValueError(
            "--dark-offset-adu and --bin-um apply to serial runs; with --workers/--scheduler set them "
            "in the plan's analysis: settings"
        )
    from analysis.distributed import analyze_many

    missing = [str(p) for p in scan_files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such scan file: {', '.join(missing)}")
    # analyze_scan's own defaults (the plan's analysis settings stored in each file)
    results = analyze_many(
        scan_files,
        workers=workers,
        scheduler=scheduler,
        on_file=lambda p, _: console.print(f"analysed {p.name}"),
    )
    for path, tables in results.items():
        print_region_tables(console, path.name, tables)
        console.print(f"wrote the analysis into {path} and {region_csv_path(path)}")


def _section_ids(path: Path) -> tuple[str, ...]:
    from acquisition.storage import ScanFile

    with ScanFile.open(path) as scan:
        return scan.section_ids


#: The plan's analysis settings that ``cordscope analyze`` options override.
_ANALYZE_OPTIONS = {"dark_offset_adu": "--dark-offset-adu", "heatmap_bin_um": "--bin-um"}


def _check_analysis_overrides(overrides: dict[str, float]) -> None:
    """Refuse override values the plan's analysis settings would refuse, naming the option."""
    from pydantic import ValidationError

    from acquisition.plan import AnalysisSettings

    try:
        AnalysisSettings.model_validate(overrides)
    except ValidationError as e:
        raise ValueError(one_line_validation_error(e, option_names=_ANALYZE_OPTIONS)) from None


@app.command()
@_user_errors
def study(
    scan_files: Annotated[list[Path], typer.Argument(help="Analysed scan file(s) (.h5) of the study.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the study's tables, figures and report.")
    ],
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
) -> None:
    """Compare groups: per-animal table, statistics per level × region, figures and an HTML report.

    Sections of the same animal and level are averaged; files or sections that
    cannot be used (no analysis, no group or level) and groups with fewer than
    two animals are left out and listed.
    """
    check_output_folder(out, "--out")
    for path in scan_files:
        check_not_an_input(out, {"a scan file of the study": path})
    _check_number("--alpha", alpha, gt=0, lt=1)
    from cordscope.study_cli import print_study_summary, run_study

    print_study_summary(console, run_study(scan_files, out, alpha=alpha))


@app.command()
@_user_errors
def gui(config: ConfigOpt = None, trust_config: TrustOpt = False) -> None:
    """Open the CordScope window (default: on the demo microscope)."""
    from gui.app import main as gui_main  # Qt only when the window is wanted

    raise typer.Exit(gui_main(config, trust_config=trust_config))


@app.command("demo-cohort")
@_user_errors
def demo_cohort(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the scan files (one per animal).")],
    animals_per_group: Annotated[int, typer.Option(help="Animals in each of intact, vehicle, treated.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the virtual slides and the camera noise.")] = 2026,
    sensor_px: Annotated[int, typer.Option(help="Demo camera sensor size (px).")] = 512,
    objective: Annotated[
        str, typer.Option(help="Objective preset (4x is fast; 10x resolves axons better).")
    ] = "4x",
) -> None:
    """Scan a virtual cohort on the demo microscope: C5, Th7 and L2 of every animal, one file per animal.

    Writes ``<animal>.h5`` with the live analysis and ``cohort-truth.csv``
    (the slides' true numbers per animal, level and region).
    """
    from cordscope.cohort import scan_demo_cohort

    check_output_folder(out, "--out")
    if animals_per_group < 1:  # before the folder is made
        raise ValueError(
            f"--animals-per-group: animals_per_group must be at least 1, got {animals_per_group}"
        )
    if not 16 <= sensor_px <= 8192:
        raise ValueError(f"--sensor-px must be 16..8192 (got {sensor_px})")

    def done(slide: Any, path: Path, tiles: int, seconds: float) -> None:
        console.print(f"{slide.animal} ({slide.group}): {tiles} tiles in {seconds:.1f} s → {path}")

    result = scan_demo_cohort(
        out,
        animals_per_group=animals_per_group,
        seed=seed,
        sensor_px=sensor_px,
        objective=objective,
        on_slide=done,
    )
    console.print(
        f"scanned {len(result.scan_files)} animals ({result.tiles} tiles) in {result.elapsed_s:.0f} s; "
        f"truth: {result.truth_csv}"
    )


@app.command()
@_user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where to write the demo's files.")] = Path(
        "demo-output"
    ),
) -> None:
    """Run the demo on the simulated microscope (what ``make demo`` runs): scan the demo slide."""
    out_dir.mkdir(parents=True, exist_ok=True)
    snap(out=out_dir / "demo-snap.png", demo=True)
    scan(demo=True, out=out_dir / "demo-scan.h5", overwrite=True, figures=out_dir)


def main() -> None:
    """Entry point for ``python -m cordscope``."""
    app()


if __name__ == "__main__":
    main()
