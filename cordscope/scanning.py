"""``cordscope scan``: build the core and plan, run the scan session (scan + live analysis), show progress."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from acquisition.controller import ScanProgress, ScanResult, read_stored_plan
from acquisition.demo.plans import demo_plan
from acquisition.errors import CordScopeError
from acquisition.hardware import CordScopeCore, build_core
from acquisition.plan import ScanPlan, load_plan, validate_plan
from acquisition.session import ScanSession, SessionResult
from analysis.figures import save_section_figure
from analysis.live import AnalysisProcess
from analysis.results import load_scan_results
from analysis.scan_analysis import region_csv_path
from analysis.settings import load_flat_fields
from cordscope.calibration_tables import print_calibration_line
from cordscope.paths_cli import check_not_an_input, check_output_folder
from cordscope.tables import print_region_tables

DEMO_SENSOR_PX = 512
#: Sensor sizes ``--sensor-px`` accepts (the demo camera's limits).
MIN_SENSOR_PX, MAX_SENSOR_PX = 16, 8192
#: What ``cordscope scan --demo`` scans: one animal of each group at C5, Th7 and
#: L2, and one lesion section (about 1,000 tiles at 10x with a 512² sensor).
DEMO_SCAN_SECTIONS = (
    "rat01-C5",
    "rat01-Th7",
    "rat01-L2",
    "rat03-C5",
    "rat03-Th7",
    "rat03-L2",
    "rat05-C5",
    "rat05-Th7",
    "rat05-L2",
    "rat03-lesion",
)


def _demo_core(sensor_px: int) -> CordScopeCore:
    core = build_core()
    core.setProperty("Camera", "SensorWidth", sensor_px)
    core.setProperty("Camera", "SensorHeight", sensor_px)
    return core


def run_scan_cli(
    console: Console,
    *,
    plan_file: Path | None,
    demo: bool,
    resume: Path | None,
    config: Path | None,
    trust_config: bool,
    out: Path | None,
    overwrite: bool,
    sensor_px: int | None,
    analysis: bool = True,
    figures: Path | None = None,
    groups: tuple[str | None, str | None] = (None, None),
) -> int:
    """Run one scan session from the command line; return the exit code (0 = all tiles done).

    With ``analysis`` the tiles stream into the live analysis (its own
    process); at the end the region tables are printed, written into the
    file's ``analysis/`` groups and a CSV beside it, and (with ``figures``) a
    PNG per section. ``groups`` (channel, objective) name the configuration
    groups when the plan's (or the config's) would not do.

    Returns 1 when tiles failed or the scan was stopped (Ctrl-C); raises a
    :class:`CordScopeError` (exit code 2) when the scan cannot start or stops
    on its own (a device not answering, a full disk).
    """
    chosen = sum(x is not None and x is not False for x in (plan_file, resume)) + int(demo)
    if chosen != 1:
        raise ValueError("give exactly one of: a PLAN.yaml, --demo, or --resume FILE.h5")
    if resume is not None and (out is not None or overwrite):
        raise ValueError("--resume continues the file it names: do not combine it with --out or --overwrite")
    if demo and config is not None:
        raise ValueError("--demo uses the demo microscope; do not combine it with --config")
    if sensor_px is not None and not MIN_SENSOR_PX <= sensor_px <= MAX_SENSOR_PX:
        raise ValueError(f"--sensor-px must be {MIN_SENSOR_PX}..{MAX_SENSOR_PX} (got {sensor_px})")
    if figures is not None:
        check_output_folder(figures, "--figures")
    live = AnalysisProcess if analysis else None
    if demo:
        core = _demo_core(sensor_px or DEMO_SENSOR_PX)
        output = out or Path(tempfile.gettempdir()) / "cordscope-demo-scan.h5"
        the_plan = demo_plan(output=output, section_ids=DEMO_SCAN_SECTIONS)
        session = ScanSession(core, the_plan, overwrite=overwrite, analysis=live)
    elif resume is not None:
        stored = read_stored_plan(resume)
        core = build_core(config or stored.hardware_config, trust_config=trust_config)
        _set_sensor(core, sensor_px)
        _check_resume_camera(resume, core)
        session = ScanSession.resume(resume, core, analysis=live)
    else:
        assert plan_file is not None
        the_plan = load_plan(plan_file)
        if out is not None:
            the_plan = the_plan.model_copy(update={"output": out.expanduser().absolute()})
        if config is not None:  # stored with the plan, so --resume uses the same microscope
            the_plan = the_plan.model_copy(update={"hardware_config": config.expanduser().absolute()})
        named = {k: v for k, v in zip(("channel_group", "objective_group"), groups, strict=True) if v}
        if named:  # stored with the plan too
            the_plan = the_plan.model_copy(update=named)
        check_plan_paths(the_plan, plan_file)
        core = build_core(config or the_plan.hardware_config, trust_config=trust_config)
        _set_sensor(core, sensor_px)
        session = ScanSession(core, the_plan, overwrite=overwrite, analysis=live)
    if figures is not None:
        check_not_an_input(figures, {"the scan file": session.output_path})
    # bad input is reported before a progress bar appears (the session checks again)
    if analysis:
        check_analysis_settings(session.plan, session.core)
    validate_plan(session.plan, session.core, overwrite=overwrite, resume=session.resuming)
    result = _run_with_progress(console, session)
    scan = result.scan
    if scan.tiles_total == 0:
        if scan.state == "failed":  # nothing was scanned: the plan or file could not be used
            raise CordScopeError(scan.message)
        console.print(f"[yellow]{scan.message}", highlight=False)
        return 1
    _print_summary(console, scan)
    print_calibration_line(console, result.path)
    if result.tables is not None:
        print_region_tables(console, result.path.name, dict(result.tables), sections=tuple(scan.sections))
        console.print(f"region tables: {region_csv_path(result.path)} and the file's analysis groups")
        if figures is not None:
            _save_figures(console, result.path, figures)
    elif figures is not None and analysis:
        console.print(f"[yellow]no figures written to {figures}: the final analysis did not finish")
    if scan.state == "failed":  # stopped on its own: a dead device, a full disk (resumable)
        raise CordScopeError(scan.message)
    return 0 if result.complete else 1


def _check_resume_camera(path: Path, core: CordScopeCore) -> None:
    """A scan resumes only with the camera image size its tiles have (read-only, before anything moves)."""
    from acquisition.storage import ScanFile

    width, height = int(core.getImageWidth()), int(core.getImageHeight())
    with ScanFile.open(path) as scan:
        for sid in scan.section_ids:
            h, w = scan.section(sid).tile_shape_px
            if (h, w) != (height, width):
                raise CordScopeError(
                    f"cannot resume {path.name}: its tiles are {w}×{h} px but the camera now gives "
                    f"{width}×{height} px; set the same camera size (--sensor-px, or the camera's ROI)"
                )


def _set_sensor(core: CordScopeCore, sensor_px: int | None) -> None:
    camera = core.getCameraDevice()
    if sensor_px and core.hasProperty(camera, "SensorWidth"):
        core.setProperty(camera, "SensorWidth", sensor_px)
        core.setProperty(camera, "SensorHeight", sensor_px)


def _save_figures(console: Console, scan_path: Path, figures: Path) -> None:
    """A PNG per analysed section: its mosaic with the % axonal area heatmap."""
    for section_id, saved in load_scan_results(scan_path).items():
        res = saved.analysis
        if res is None or res.mosaic is None or res.mosaic_origin_um is None or res.mosaic_pixel_um is None:
            continue
        attrs = saved.attrs
        title = " · ".join(
            str(v)
            for v in (section_id, attrs.get("group"), attrs.get("level"), attrs.get("orientation"))
            if v
        )
        anatomy = int(res.parameters["anatomy_channel"])
        png = save_section_figure(
            figures / f"{scan_path.stem}-{section_id}.png",
            anatomy_mosaic=res.mosaic[anatomy],
            mosaic_origin_um=(float(res.mosaic_origin_um[0]), float(res.mosaic_origin_um[1])),
            mosaic_pixel_um=res.mosaic_pixel_um,
            pct_axonal_area_map=res.maps.pct_axonal_area,
            map_origin_um=(float(res.maps.origin_um[0]), float(res.maps.origin_um[1])),
            map_bin_um=res.maps.bin_um,
            title=title,
        )
        console.print(f"figure: {png}")


def check_plan_paths(plan: ScanPlan, plan_file: Path) -> None:
    """The scan file a plan writes must not be one of its inputs (the plan, its config, flat fields)."""
    check_not_an_input(
        plan.output,
        {"the plan": plan_file, "the hardware config": plan.hardware_config}
        | {f"the flat field of {ch}": p for ch, p in plan.analysis.flat_fields.items()},
    )


def check_analysis_settings(plan: ScanPlan, core: Any) -> None:
    """Check the plan's flat-field images (they must exist and fit the camera) before anything moves."""
    if plan.analysis.flat_fields:
        shape = (int(core.getImageHeight()), int(core.getImageWidth()))
        load_flat_fields(
            plan.analysis,
            tuple(c.preset for c in plan.channels),
            tile_shape=shape,
            base_dir=Path(plan.output).parent,
        )


def _run_with_progress(console: Console, session: ScanSession) -> SessionResult:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    lock = threading.Lock()
    with Progress(*columns, console=console, transient=False) as bar:
        overall = bar.add_task("scan", total=None)
        section_tasks: dict[str, Any] = {}

        def on_progress(p: ScanProgress) -> None:
            with lock:
                bar.update(overall, total=p.tiles_total, completed=p.tiles_done + p.tiles_failed)
                for sid, s in p.sections.items():
                    if sid not in section_tasks:
                        section_tasks[sid] = bar.add_task(f"  {sid}", total=s.total)
                    bar.update(section_tasks[sid], completed=s.done + s.failed)
                state = p.state if p.current_section is None else f"{p.state}: {p.current_section}"
                bar.update(overall, description=f"scan ({state})")

        session.events.progress.connect(on_progress)

        # Warnings (failed tiles, retries) print as they happen; errors end the
        # scan and are printed once, with the result.
        def on_message(level: str, text: str) -> None:
            if level == "warning":
                console.print(f"[yellow]{text}", highlight=False)

        session.events.message.connect(on_message)

        def on_state(state: str) -> None:
            if state == "finalizing":
                console.print(f"final analysis of {session.output_path.name}…", highlight=False)

        session.events.state_changed.connect(on_state)
        previous = signal.getsignal(signal.SIGINT)

        def on_interrupt(signum: int, frame: Any) -> None:
            console.print("[yellow]interrupted: stopping after the current image (Ctrl-C again to force)")
            session.abort("interrupted from the keyboard")
            signal.signal(signal.SIGINT, _forced_exit(console, session))

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_interrupt)
        # these log lines repeat the session's messages (retries, failed tiles, storage and
        # device faults, the demo's injected faults): keep the terminal to one of each
        quiet = {name: logging.getLogger(name) for name in _REPORTED_BY_THE_SESSION}
        previous_levels = {name: logger.level for name, logger in quiet.items()}
        for logger in quiet.values():
            logger.setLevel(logging.CRITICAL)
        try:
            _RUNNING.add(session)
            session.start()
            return session.wait()
        finally:
            _RUNNING.discard(session)
            for name, logger in quiet.items():
                logger.setLevel(previous_levels[name])
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)


#: Loggers whose warnings the session reports as its own messages while a scan runs.
_REPORTED_BY_THE_SESSION = (
    "acquisition.controller",
    "acquisition.engine",
    "acquisition.storage",
    "acquisition.focus",
    "acquisition.demo.devices",
)

#: Sessions this process is running (the command's exit must not wait for them once forced).
_RUNNING: weakref.WeakSet[ScanSession] = weakref.WeakSet()


def scans_running() -> bool:
    """Whether a scan session started by :func:`run_scan_cli` is still running in this process."""
    return any(s.result is None for s in _RUNNING)


def _forced_exit(console: Console, session: ScanSession) -> Callable[[int, Any], None]:
    """The handler of a second Ctrl-C: end the process now (the file is left as a crash would)."""

    def handler(signum: int, frame: Any) -> None:
        console.print(
            f"[yellow]interrupted again: exiting now; {session.output_path} is resumable: "
            f"cordscope scan --resume {session.output_path}",
            highlight=False,
        )
        _exit_now(130)

    return handler


def _exit_now(code: int) -> None:
    """Leave the process at once (no device shutdown: a hung device would block it)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _print_summary(console: Console, result: ScanResult) -> None:
    table = Table("section", "done", "failed", "tiles", title=f"Scan {result.state}")
    for sid, s in result.sections.items():
        table.add_row(sid, str(s.done), str(s.failed) if not s.failed else f"[red]{s.failed}", str(s.total))
    console.print(table)
    console.print(
        f"{result.path}: {result.tiles_done}/{result.tiles_total} tiles done, {result.tiles_failed} failed, "
        f"{result.file_size_bytes / 1e6:.1f} MB, {result.elapsed_s:.1f} s"
    )
    retaken, retake_s = result.tiles_retaken, result.retake_time_s
    if retaken or retake_s:  # the sharpness checks ran (focus-map plans)
        console.print(
            f"sharpness checks: {retaken} tile{'s' if retaken != 1 else ''} refocused and retaken, "
            f"{retake_s:.1f} s on probes and retakes"
        )
    if result.retried_calls:
        console.print(f"{result.retried_calls} device calls retried (see the warnings above)")
    if result.message and result.state != "failed":  # a failure is the error line, printed once
        console.print(f"[yellow]{result.message}", highlight=False)
