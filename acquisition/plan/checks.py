"""Checking a validated plan against the hardware and the disk, before anything moves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..storage.format import FREE_SPACE_RESERVE_BYTES, in_use, required_free_bytes
from .compile import section_tiles
from .model import (
    _STORED_BYTES_PER_PIXEL,
    DISK_MARGIN,
    PlanError,
    PlanProblem,
    ScanPlan,
    _show,
    _xy,
)

if TYPE_CHECKING:
    from pymmcore_plus import CMMCorePlus

# ============================================================ hardware checks


def _binning(core: CMMCorePlus) -> float:
    cam = core.getCameraDevice()
    if not cam or not core.hasProperty(cam, "Binning"):
        return 1.0
    value = str(core.getProperty(cam, "Binning"))
    try:
        return float(value.split("x")[0])  # "2" or "2x2"
    except ValueError:
        return 1.0


def pixel_size_for_objective(core: CMMCorePlus, objective_group: str, objective: str) -> float:
    """Image pixel size (µm) the camera will have with ``objective``, without moving anything.

    The pixel-size configuration used is the one whose settings agree with
    the objective preset's settings (settings the preset does not touch, e.g.
    a magnifier, must agree with the devices' current state). The result is
    scaled by the camera's binning and the magnification factor, as
    ``getPixelSizeUm`` does for the current configuration.

    Raises
    ------
    PlanError
        If the group or preset does not exist, or no pixel-size
        configuration matches the preset.
    """
    if objective_group not in core.getAvailableConfigGroups():
        raise PlanError(
            [
                PlanProblem(
                    "objective_group",
                    f"no config group {objective_group!r} in this hardware config "
                    f"(available: {', '.join(core.getAvailableConfigGroups())})",
                )
            ]
        )
    if objective not in core.getAvailableConfigs(objective_group):
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"unknown objective {objective!r} in config group {objective_group!r} "
                    f"(available: {', '.join(core.getAvailableConfigs(objective_group))})",
                )
            ]
        )
    preset = {(str(d), str(p)): str(v) for d, p, v in core.getConfigData(objective_group, objective)}
    best: tuple[int, str] | None = None
    for config in core.getAvailablePixelSizeConfigs():
        settings = [(str(d), str(p), str(v)) for d, p, v in core.getPixelSizeConfigData(config)]
        if not settings:
            continue
        shared = 0
        agrees = True
        for dev, prop, value in settings:
            if (dev, prop) in preset:
                shared += 1
                agrees = preset[(dev, prop)] == value
            else:
                try:
                    agrees = str(core.getPropertyFromCache(dev, prop)) == value
                except Exception:  # a device the config names but did not load
                    agrees = False
            if not agrees:
                break
        if agrees and (best is None or shared > best[0]):
            best = (shared, str(config))
    if best is None:
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"no pixel-size configuration matches objective {objective!r} (group "
                    f"{objective_group!r}); add a ConfigPixelSize for it to the hardware config",
                )
            ]
        )
    size = float(core.getPixelSizeUmByID(best[1])) * _binning(core) / float(core.getMagnificationFactor())
    if not size > 0:
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"pixel-size configuration {best[1]!r} of objective {objective!r} has "
                    f"pixel size {size:g} µm",
                )
            ]
        )
    return size


def tile_size_um(core: CMMCorePlus, plan: ScanPlan) -> tuple[float, float]:
    """Field of view (width, height) in µm: the camera's current ROI × the objective's pixel size.

    Raises
    ------
    PlanError
        If the plan's objective has no pixel size on this core.
    """
    _, _, width_px, height_px = core.getROI()
    px = pixel_size_for_objective(core, plan.objective_group, plan.objective)
    return (float(width_px) * px, float(height_px) * px)


def _demo_stage_limits() -> tuple[tuple[float, float], tuple[float, float]]:
    from acquisition.demo.devices import XY_TRAVEL_UM

    (x0, x1), (y0, y1) = XY_TRAVEL_UM
    return ((float(x0), float(x1)), (float(y0), float(y1)))


@dataclass(frozen=True)
class PlanSummary:
    """What a validated plan will do on this microscope.

    Attributes
    ----------
    tiles_per_section : dict of str to int
        Tiles of each section, in plan order.
    total_tiles : int
    n_images : int
        Images in the scan (tiles × channels × z-slices).
    tile_size_um : (float, float)
        Field of view (width, height), µm.
    pixel_size_um : float
        Image pixel size with the plan's objective, µm.
    image_size_px : (int, int)
        Camera ROI (width, height), pixels.
    estimated_bytes : int
        Size of the tile data in the scan file (uint16).
    """

    tiles_per_section: dict[str, int]
    total_tiles: int
    n_images: int
    tile_size_um: tuple[float, float]
    pixel_size_um: float
    image_size_px: tuple[int, int]
    estimated_bytes: int


def _format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _output_problems(
    output: Path,
    *,
    overwrite: bool,
    resume: bool,
    estimated_bytes: int | None,
    disk_free_bytes: Callable[[Path], int],
) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    out = Path(output).expanduser()
    shown = _show(str(output))
    if overwrite and resume:
        problems.append(PlanProblem("output", "overwrite and resume cannot both be asked for"))
    existing_bytes = 0
    if out.is_dir():
        problems.append(
            PlanProblem(
                "output", f"{shown} is a folder; name the scan file, e.g. {_show(str(out / 'scan.h5'))}"
            )
        )
    elif out.exists():
        if not (overwrite or resume):
            problems.append(
                PlanProblem(
                    "output",
                    f"{shown} already exists; ask to overwrite it (--overwrite) or to resume "
                    "that scan (--resume)",
                )
            )
        elif not os.access(out, os.W_OK):
            problems.append(PlanProblem("output", f"{shown} exists and is not writable"))
        elif in_use(out):
            problems.append(
                PlanProblem(
                    "output",
                    f"{shown} is in use (a running scan writes it, or a program has it open); "
                    "wait for that scan to end or choose another file",
                )
            )
        if resume:  # tiles already on disk (the file is sparse until they arrive)
            blocks = getattr(out.stat(), "st_blocks", None)
            existing_bytes = 512 * blocks if blocks is not None else out.stat().st_size
    folder = out.parent
    anchor = _nearest_existing(folder)
    if not anchor.is_dir():
        problems.append(
            PlanProblem(
                "output",
                f"cannot create folder {_show(str(folder))} for {shown}: "
                f"{_show(str(anchor))} is a file, not a folder",
            )
        )
        return problems
    if not os.access(anchor, os.W_OK | os.X_OK):
        if anchor == folder:
            problems.append(
                PlanProblem("output", f"folder {_show(str(folder))} is not writable (for {shown})")
            )
        else:
            problems.append(
                PlanProblem(
                    "output",
                    f"cannot create folder {_show(str(folder))} for {shown}: "
                    f"{_show(str(anchor))} is not writable",
                )
            )
        return problems
    if estimated_bytes is not None:
        needed = required_free_bytes(estimated_bytes - existing_bytes)
        try:
            free = int(disk_free_bytes(anchor))
        except OSError as e:
            problems.append(
                PlanProblem(
                    "output", f"cannot read the free disk space at {_show(str(anchor))}: {e.strerror or e}"
                )
            )
        else:
            if free < needed:
                problems.append(
                    PlanProblem(
                        "output",
                        f"not enough free disk for {shown}: the scan needs about {_format_bytes(needed)} "
                        f"(estimated {_format_bytes(estimated_bytes)} + {round((DISK_MARGIN - 1) * 100)} % "
                        f"+ the writer's {_format_bytes(FREE_SPACE_RESERVE_BYTES)} reserve), "
                        f"{_format_bytes(free)} free at {_show(str(anchor))}",
                    )
                )
    return problems


#: Share of the machine's memory one section's live analysis may take (the scan, the
#: system and other programs need the rest).
ANALYSIS_MEMORY_FRACTION = 0.5
#: Bytes per cell of a section's analysis grid (``analysis.mosaic_pixel_um``) per channel, and
#: for the channel-independent grids, as held while the section is analysed. Checked against
#: ``analyze_scan``'s peak memory above its baseline: demo rat03-lesion at 10x, 256² sensor, 965
#: tiles: estimate 273 MB, measured 270 MB; a 196-tile square at 128²: 13 MB vs 17 MB.
ANALYSIS_BYTES_PER_CELL_CHANNEL = 16
ANALYSIS_BYTES_PER_CELL = 120
#: Bytes per tile of the registration's position solve: a dense least-squares system of
#: (pairs + tiles) × tiles float64 values with about two pairs per tile, and its work space.
REGISTRATION_BYTES_PER_TILE_SQUARED = 48


def section_analysis_bytes(plan: ScanPlan, tile_xy_um: np.ndarray, tile_size_um: tuple[float, float]) -> int:
    """Memory (bytes) the live analysis needs for one section of ``plan`` with these tiles.

    The section's grids at ``analysis.mosaic_pixel_um`` over the tiles' extent
    (plus the registration margin), per channel and shared, and the
    registration's position solve, which grows with the square of the tiles.
    """
    a = plan.analysis
    xy = np.asarray(tile_xy_um, dtype=np.float64).reshape(-1, 2)
    if xy.size == 0:
        return 0
    margin = a.max_registration_correction_um if a.register_tiles else 0.0
    span = xy.max(axis=0) - xy.min(axis=0) + np.asarray(tile_size_um) + 2 * margin
    cells = float(np.prod(np.ceil(span / a.mosaic_pixel_um)))
    per_cell = ANALYSIS_BYTES_PER_CELL + ANALYSIS_BYTES_PER_CELL_CHANNEL * len(plan.channels)
    n = xy.shape[0]
    solve = REGISTRATION_BYTES_PER_TILE_SQUARED * n * n if a.register_tiles else 0
    return int(cells * per_cell + solve)


def _physical_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None


def _memory_problems(
    plan: ScanPlan,
    tiles: dict[str, np.ndarray],
    tile_size_um: tuple[float, float],
    memory_bytes: int | None,
) -> list[PlanProblem]:
    """A section whose live analysis would not fit in the machine's memory is refused up front."""
    total = memory_bytes if memory_bytes is not None else _physical_memory_bytes()
    if total is None:
        return []
    limit = total * ANALYSIS_MEMORY_FRACTION
    problems = []
    for i, section in enumerate(plan.sections):
        xy = tiles.get(section.id)
        if xy is None:
            continue
        needed = section_analysis_bytes(plan, xy, tile_size_um)
        if needed > limit:
            problems.append(
                PlanProblem(
                    f"sections[{i}]",
                    f"section {section.id!r} has {len(xy):,} tiles; its live analysis would need about "
                    f"{_format_bytes(needed)} of memory, more than {ANALYSIS_MEMORY_FRACTION:.0%} of this "
                    f"machine's {_format_bytes(total)}: split it into smaller sections, or raise "
                    "analysis.mosaic_pixel_um",
                )
            )
    return problems


def _focus_problems(plan: ScanPlan, core: CMMCorePlus) -> list[PlanProblem]:
    """A focus position the plan fixes (``focus.z_um``) must lie in the focus drive's travel."""
    z = plan.focus.z_um
    if z is None:
        return []
    from acquisition.rig_profile import rig_profile_for

    rig = rig_profile_for(core)
    travel = rig.focus_travel
    if travel is None:
        return []
    half_stack = (
        plan.z_stack.range_um / 2 if plan.z_stack is not None and plan.focus.strategy == "fixed" else 0.0
    )
    lo, hi = z - half_stack, z + half_stack
    if travel.z_min_um <= lo and hi <= travel.z_max_um:
        return []
    what = f"{z:g} µm" if not half_stack else f"{z:g} µm ± {half_stack:g} µm of z-stack"
    return [
        PlanProblem(
            "focus.z_um",
            f"{what} is outside the focus travel ({travel.z_min_um:g}..{travel.z_max_um:g} µm; "
            f"{rig.focus_travel_source})",
        )
    ]


def _disk_free(path: Path) -> int:
    return int(shutil.disk_usage(path).free)


def _outside(x: float, y: float, limits: tuple[tuple[float, float], tuple[float, float]]) -> bool:
    (x0, x1), (y0, y1) = limits
    return not (x0 <= x <= x1 and y0 <= y <= y1)


def validate_plan(
    plan: ScanPlan,
    core: CMMCorePlus,
    *,
    stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    disk_free_bytes: Callable[[Path], int] | None = None,
    memory_bytes: int | None = None,
) -> PlanSummary:
    """Check a plan against the loaded hardware and the disk, before anything moves.

    Nothing is moved or written: presets are read from the core, the folder
    is not created.

    Parameters
    ----------
    plan : ScanPlan
    core : CMMCorePlus
        The loaded microscope.
    stage_limits_um : ((xmin, xmax), (ymin, ymax)), optional
        XY stage travel in µm. Default: the demo stage's travel (a 75 × 25 mm
        slide); pass a real rig's travel.
    overwrite, resume : bool
        Whether an existing output file may be replaced / continued.
    disk_free_bytes : callable, optional
        ``f(folder) -> free bytes``; default ``shutil.disk_usage(folder).free``.
    memory_bytes : int, optional
        Memory of the machine (bytes) a section's live analysis must fit in
        (:data:`ANALYSIS_MEMORY_FRACTION` of it); default: the physical memory.

    Returns
    -------
    PlanSummary
        Tiles, images and file size the scan will have.

    Raises
    ------
    PlanError
        Listing every problem found: unknown channel group or preset, unknown
        objective or objective without pixel size, section polygons (or tile
        centres) outside the stage travel, output file that exists, output
        folder not writable or not creatable, output file in use by a running
        scan, not enough free disk (the writer's rule,
        :func:`acquisition.storage.required_free_bytes`).
    """
    problems: list[PlanProblem] = []
    groups = list(core.getAvailableConfigGroups())

    if plan.channel_group not in groups:
        problems.append(
            PlanProblem(
                "channel_group",
                f"no config group {plan.channel_group!r} in this hardware config "
                f"(available: {', '.join(groups)})",
            )
        )
    else:
        presets = list(core.getAvailableConfigs(plan.channel_group))
        for i, ch in enumerate(plan.channels):
            if ch.preset not in presets:
                problems.append(
                    PlanProblem(
                        f"channels[{i}].preset",
                        f"unknown channel preset {ch.preset!r} in config group "
                        f"{plan.channel_group!r} (available: {', '.join(presets)})",
                    )
                )

    pixel_size: float | None = None
    try:
        pixel_size = pixel_size_for_objective(core, plan.objective_group, plan.objective)
    except PlanError as e:
        problems.extend(e.problems)

    limits = stage_limits_um if stage_limits_um is not None else _demo_stage_limits()
    (x0, x1), (y0, y1) = limits
    travel = f"the stage travel (x {x0:g}..{x1:g}, y {y0:g}..{y1:g} µm)"
    polygon_inside: dict[str, bool] = {}
    for i, section in enumerate(plan.sections):
        bad = [(j, v) for j, v in enumerate(section.polygon_um) if _outside(v[0], v[1], limits)]
        polygon_inside[section.id] = not bad
        if bad:
            j, (x, y) = bad[0]
            more = f" (and {len(bad) - 1} more vertices)" if len(bad) > 1 else ""
            problems.append(
                PlanProblem(
                    f"sections[{i}].polygon_um[{j}]",
                    f"vertex {_xy(x, y)} of section {section.id!r} is outside {travel}{more}",
                )
            )

    summary: PlanSummary | None = None
    tiles: dict[str, np.ndarray] | None = None
    if pixel_size is not None:
        _, _, width_px, height_px = (int(v) for v in core.getROI())
        tile = (width_px * pixel_size, height_px * pixel_size)
        tiles = section_tiles(plan, tile_size_um=tile)
        for i, section in enumerate(plan.sections):
            if not polygon_inside[section.id]:
                continue
            centres = tiles[section.id]
            bad_tiles = [k for k, (x, y) in enumerate(centres) if _outside(float(x), float(y), limits)]
            if bad_tiles:
                k = bad_tiles[0]
                more = f" (and {len(bad_tiles) - 1} more tiles)" if len(bad_tiles) > 1 else ""
                problems.append(
                    PlanProblem(
                        f"sections[{i}].polygon_um",
                        f"tile {k:04d} of section {section.id!r} is centred at "
                        f"{_xy(float(centres[k][0]), float(centres[k][1]))}, outside {travel}{more}; "
                        "keep the polygon farther from the edge of travel",
                    )
                )
        per_section = {sid: len(c) for sid, c in tiles.items()}
        total = sum(per_section.values())
        n_images = total * len(plan.channels) * plan.n_z_slices
        bytes_per_pixel = max(_STORED_BYTES_PER_PIXEL, int(core.getBytesPerPixel()))
        summary = PlanSummary(
            tiles_per_section=per_section,
            total_tiles=total,
            n_images=n_images,
            tile_size_um=tile,
            pixel_size_um=pixel_size,
            image_size_px=(width_px, height_px),
            estimated_bytes=n_images * width_px * height_px * bytes_per_pixel,
        )

    problems.extend(_focus_problems(plan, core))
    if summary is not None and tiles is not None:
        problems.extend(_memory_problems(plan, tiles, summary.tile_size_um, memory_bytes))
    problems.extend(
        _output_problems(
            plan.output,
            overwrite=overwrite,
            resume=resume,
            estimated_bytes=summary.estimated_bytes if summary is not None else None,
            disk_free_bytes=disk_free_bytes or _disk_free,
        )
    )
    if problems or summary is None:
        raise PlanError(problems)
    return summary
