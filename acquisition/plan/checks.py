"""Checking a validated plan against the hardware and the disk, before anything moves."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..pixel_geometry import covered_extent_um, footprint_bbox_um, pixel_size_from_affine
from ..rig_profile import rig_profile_for
from ..roles import RoleError, camera_binning, decide_roles, pixel_affine_for_config_um
from ..storage.format import FREE_SPACE_RESERVE_BYTES, in_use, required_free_bytes
from .compile import minimum_tile_count, section_tiles
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
    from numpy.typing import NDArray
    from pymmcore_plus import CMMCorePlus

#: ((x_min, x_max), (y_min, y_max)) in stage µm.
StageLimits = tuple[tuple[float, float], tuple[float, float]]

# ============================================================ hardware checks


def _pixel_config_for_objective(core: CMMCorePlus, objective_group: str, objective: str) -> str:
    """The pixel-size configuration the camera will have with ``objective``, without moving anything.

    The configuration used is the one whose settings agree with the
    objective preset's settings (settings the preset does not touch, e.g. a
    magnifier, must agree with the devices' current state).

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
    return best[1]


def pixel_affine_for_objective(
    core: CMMCorePlus, objective_group: str, objective: str
) -> NDArray[np.float64]:
    """The 2×2 pixel affine (stage µm per pixel step) the camera will have with ``objective``.

    Micro-Manager's convention (see :mod:`acquisition.roles`), scaled by the
    camera's binning and the magnification factor, as ``getPixelSizeAffine``
    does for the current configuration.

    Raises
    ------
    PlanError
        If the objective has no usable pixel-size configuration.
    """
    config = _pixel_config_for_objective(core, objective_group, objective)
    affine = pixel_affine_for_config_um(core, config, binning=camera_binning(core))
    affine = affine / float(core.getMagnificationFactor())
    size = math.sqrt(abs(float(np.linalg.det(affine))))
    if not (math.isfinite(size) and size > 0):
        raise PlanError(
            [
                PlanProblem(
                    "objective",
                    f"pixel-size configuration {config!r} of objective {objective!r} has "
                    f"pixel size {size:g} µm",
                )
            ]
        )
    return affine


def pixel_size_for_objective(core: CMMCorePlus, objective_group: str, objective: str) -> float:
    """Image pixel size (µm) the camera will have with ``objective`` (√|det| of its pixel affine).

    Raises
    ------
    PlanError
        If the group or preset does not exist, or no pixel-size
        configuration matches the preset.
    """
    affine = pixel_affine_for_objective(core, objective_group, objective)
    return math.sqrt(abs(float(np.linalg.det(affine))))


def tile_size_um(core: CMMCorePlus, plan: ScanPlan) -> tuple[float, float]:
    """Stage extent (x, y) in µm that one tile surely covers: the camera's ROI through the pixel affine.

    Raises
    ------
    PlanError
        If the plan's groups cannot be decided or its objective has no pixel size on this core.
    """
    groups = resolve_plan_groups(plan, core)
    _, _, width_px, height_px = core.getROI()
    affine = pixel_affine_for_objective(core, groups.groups[1], plan.objective)
    return covered_extent_um(affine, (int(width_px), int(height_px)))


def resolve_plan_groups(plan: ScanPlan, core: CMMCorePlus) -> ScanPlan:
    """The plan with its channel and objective groups decided from the hardware config.

    Groups the plan names are checked; groups it leaves out are decided by
    what they do (:func:`acquisition.roles.decide_roles`). The scan file
    stores the resolved plan, so a resumed scan uses the same groups.

    Raises
    ------
    PlanError
        Naming the group that is unknown or cannot be decided, and the candidates.
    """
    try:
        roles = decide_roles(core, channel_group=plan.channel_group, objective_group=plan.objective_group)
    except RoleError as e:
        field = "objective_group" if "objective" in str(e).split(":")[0] else "channel_group"
        raise PlanError([PlanProblem(field, str(e))]) from None
    if (roles.channel.group, roles.objective.group) == (plan.channel_group, plan.objective_group):
        return plan
    return plan.model_copy(
        update={"channel_group": roles.channel.group, "objective_group": roles.objective.group}
    )


def stage_limits_for(
    core: CMMCorePlus, plan: ScanPlan
) -> tuple[tuple[tuple[float, float], tuple[float, float]], str]:
    """XY limits to check a plan's positions against, and what they are (the rig profile's words).

    The stage travel from the rig profile beside the plan's ``.cfg``, else
    the limits the XY stage adapter reports, else the slide frame only
    (:func:`acquisition.rig_profile.rig_profile_for`).
    """
    config = core.systemConfigurationFile() or plan.hardware_config
    travel, source = rig_profile_for(core, config).xy_limits_um()
    return ((travel.x_min_um, travel.x_max_um), (travel.y_min_um, travel.y_max_um)), source


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
    min_tiles_per_section : dict of str to int
        The fewest tiles covering each section's polygon at the plan's overlap
        (:func:`acquisition.plan.compile.minimum_tile_count`), to compare with
        ``tiles_per_section``.
    """

    tiles_per_section: dict[str, int]
    total_tiles: int
    n_images: int
    tile_size_um: tuple[float, float]
    pixel_size_um: float
    image_size_px: tuple[int, int]
    estimated_bytes: int
    min_tiles_per_section: dict[str, int] = field(default_factory=dict)


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
#: for the channel-independent grids, as held while the section is analysed (the grids' float64
#: sums and their working copies); the estimate bounds ``SectionAnalysis.memory_bytes()``
#: (``tests/analysis/test_section_analysis.py``).
ANALYSIS_BYTES_PER_CELL_CHANNEL = 16
ANALYSIS_BYTES_PER_CELL = 120
#: Bytes per block of a reduced tile kept for registration (float32 per channel, and a weight).
REDUCED_BLOCK_BYTES_PER_CHANNEL = 4
REDUCED_BLOCK_BYTES = 2


def section_analysis_bytes(
    plan: ScanPlan,
    tile_xy_um: np.ndarray,
    *,
    tile_shape_px: tuple[int, int],
    pixel_affine_um: NDArray[np.float64],
) -> int:
    """Memory (bytes) the live analysis holds at most for one section of ``plan`` with these tiles.

    The section's grids at ``analysis.mosaic_pixel_um`` over the tiles'
    footprints (plus the registration margin), per channel and shared; with
    registration, every tile reduced to its blocks (kept so tiles can be
    placed again at registered positions) and the overlap strips of about one
    row of tiles waiting for a neighbour. Linear in the number of tiles: the
    registration's solve is sparse (``analysis.registration``).
    """
    a = plan.analysis
    xy = np.asarray(tile_xy_um, dtype=np.float64).reshape(-1, 2)
    if xy.size == 0:
        return 0
    p = pixel_size_from_affine(pixel_affine_um)
    f = max(1, round(a.mosaic_pixel_um / p))  # the analysis grid's block (analysis.mosaic)
    margin = a.max_registration_correction_um if a.register_tiles else 0.0
    x0, y0, x1, y1 = footprint_bbox_um(xy, pixel_affine_um, tile_shape_px)
    cells = math.ceil((x1 - x0 + 2 * margin) / (f * p)) * math.ceil((y1 - y0 + 2 * margin) / (f * p))
    n_c = len(plan.channels)
    total = cells * (ANALYSIS_BYTES_PER_CELL + ANALYSIS_BYTES_PER_CELL_CHANNEL * n_c)
    if a.register_tiles:
        h, w = (int(v) for v in tile_shape_px)
        blocks = (h // f) * (w // f)
        total += len(xy) * blocks * (REDUCED_BLOCK_BYTES_PER_CHANNEL * n_c + REDUCED_BLOCK_BYTES)
        row = max(1, math.isqrt(len(xy)) + 1)
        strip_px = 2 * math.ceil(2 * margin / p) + 4
        total += row * 2 * (max(h, w) * strip_px * 2)
    return int(total)


def _physical_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None


def _memory_problems(
    plan: ScanPlan,
    tiles: dict[str, np.ndarray],
    *,
    tile_shape_px: tuple[int, int],
    pixel_affine_um: NDArray[np.float64],
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
        needed = section_analysis_bytes(
            plan, xy, tile_shape_px=tile_shape_px, pixel_affine_um=pixel_affine_um
        )
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
        XY stage travel in µm. Default: the rig's (:func:`stage_limits_for`:
        the rig profile beside the ``.cfg``, the adapter's limits, or the
        slide frame only).
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
        Listing every problem found: a channel or objective group that is
        unknown or cannot be decided, an unknown channel preset, unknown
        objective or objective without pixel size, section polygons (or tile
        centres) outside the stage travel, output file that exists, output
        folder not writable or not creatable, output file in use by a running
        scan, not enough free disk (the writer's rule,
        :func:`acquisition.storage.required_free_bytes`).
    """
    problems: list[PlanProblem] = []
    unresolved: set[str] = set()  # a group already reported is not checked again
    try:
        plan = resolve_plan_groups(plan, core)
    except PlanError as e:
        problems.extend(e.problems)
        unresolved = {p.field for p in e.problems}
    if plan.channel_group is not None and "channel_group" not in unresolved:
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

    affine: NDArray[np.float64] | None = None
    objective_group = plan.objective_group if "objective_group" not in unresolved else None
    if objective_group is not None:
        try:
            affine = pixel_affine_for_objective(core, objective_group, plan.objective)
        except PlanError as e:
            problems.extend(e.problems)
    if plan.adaptive is not None and objective_group is not None:
        try:
            pixel_affine_for_objective(core, objective_group, plan.adaptive.objective)
        except PlanError as e:
            problems.extend(
                replace(p, field="adaptive.objective") for p in e.problems if p.field == "objective"
            )

    if stage_limits_um is not None:
        limits, source = stage_limits_um, "stage travel (given)"
    else:
        limits, source = stage_limits_for(core, plan)
    (x0, x1), (y0, y1) = limits
    travel = f"the {source}: x {x0:g}..{x1:g}, y {y0:g}..{y1:g} µm"
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
    if affine is not None:
        _, _, width_px, height_px = (int(v) for v in core.getROI())
        pixel_size = math.sqrt(abs(float(np.linalg.det(affine))))
        tile = covered_extent_um(affine, (width_px, height_px))
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
        minimum = {
            s.id: per_section[s.id]
            if plan.tiling == "minimal"  # the tiles are the minimal cover already
            else minimum_tile_count(s.polygon_um, tile_size_um=tile, overlap_pct=plan.overlap_pct)
            for s in plan.sections
        }
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
            min_tiles_per_section=minimum,
        )

    problems.extend(_focus_problems(plan, core))
    if summary is not None and tiles is not None and affine is not None:
        h_w = (summary.image_size_px[1], summary.image_size_px[0])
        problems.extend(
            _memory_problems(
                plan, tiles, tile_shape_px=h_w, pixel_affine_um=affine, memory_bytes=memory_bytes
            )
        )
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
