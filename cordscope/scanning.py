"""``cordscope scan``: build the core and plan, run the scan session (scan + live analysis), show progress."""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
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
from cordscope.tables import print_region_tables

DEMO_SENSOR_PX = 512
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
    """
    chosen = sum(x is not None and x is not False for x in (plan_file, resume)) + int(demo)
    if chosen != 1:
        raise ValueError("give exactly one of: a PLAN.yaml, --demo, or --resume FILE.h5")
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
        session = ScanSession.resume(resume, core, analysis=live)
    else:
        assert plan_file is not None
        the_plan = load_plan(plan_file)
        if out is not None:
            the_plan = the_plan.model_copy(update={"output": out})
        if config is not None:  # stored with the plan, so --resume uses the same microscope
            the_plan = the_plan.model_copy(update={"hardware_config": config})
        named = {k: v for k, v in zip(("channel_group", "objective_group"), groups, strict=True) if v}
        if named:  # stored with the plan too
            the_plan = the_plan.model_copy(update=named)
        core = build_core(config or the_plan.hardware_config, trust_config=trust_config)
        _set_sensor(core, sensor_px)
        session = ScanSession(core, the_plan, overwrite=overwrite, analysis=live)
    # bad input is reported before a progress bar appears (the session checks again)
    if analysis:
        check_analysis_settings(session.plan, session.core)
    validate_plan(session.plan, session.core, overwrite=overwrite, resume=session.resuming)
    result = _run_with_progress(console, session)
    if result.scan.state == "failed" and result.scan.tiles_total == 0:
        # nothing was scanned: the plan or file could not be used (already reported)
        raise CordScopeError(result.scan.message)
    _print_summary(console, result.scan)
    if result.tables is not None:
        print_region_tables(console, result.path.name, dict(result.tables))
        console.print(f"region tables: {region_csv_path(result.path)} and the file's analysis groups")
        if figures is not None:
            _save_figures(console, result.path, figures)
    return 0 if result.complete else 1


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
        previous = signal.getsignal(signal.SIGINT)

        def on_interrupt(signum: int, frame: Any) -> None:
            console.print("[yellow]interrupted: stopping after the current image (Ctrl-C again to force)")
            session.abort("interrupted from the keyboard")
            signal.signal(signal.SIGINT, previous)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_interrupt)
        # the controller's log lines repeat its messages: keep the terminal to one of each
        controller_logger = logging.getLogger("acquisition.controller")
        previous_level = controller_logger.level
        controller_logger.setLevel(logging.CRITICAL)
        try:
            session.start()
            return session.wait()
        finally:
            controller_logger.setLevel(previous_level)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)


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
    if result.message:
        console.print(f"[yellow]{result.message}")
