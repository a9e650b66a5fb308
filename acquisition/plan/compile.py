"""Compiling a plan into a useq.MDASequence: tiles per section, one stage position per tile."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import useq

from .model import (
    PlanError,
    PlanProblem,
    ScanPlan,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

# ================================================================== compiling


def section_tiles(plan: ScanPlan, *, tile_size_um: tuple[float, float]) -> dict[str, NDArray[np.float64]]:
    """Tile centres covering each section's polygon, in scan order.

    Tiles come from useq's polygon grid (``GridFromPolygon``): a grid
    anchored at the polygon's bounding box, keeping only tiles that touch
    the polygon, visited row by row in serpentine order. Every point of the
    polygon lies in at least one tile.

    Parameters
    ----------
    plan : ScanPlan
    tile_size_um : (float, float)
        Field of view (width, height) in µm, see :func:`tile_size_um`.

    Returns
    -------
    dict of str to (n_tiles, 2) float64 array
        Stage (x, y) of each tile centre (µm), per section id in plan order.
    """
    width, height = (float(v) for v in tile_size_um)
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"tile_size_um must be two positive numbers, got {tile_size_um!r}")
    out: dict[str, NDArray[np.float64]] = {}
    for section in plan.sections:
        grid = useq.GridFromPolygon(
            vertices=section.polygon_um,
            fov_width=width,
            fov_height=height,
            overlap=(plan.overlap_pct, plan.overlap_pct),
            mode=useq.OrderMode.row_wise_snake,
        )
        centres = np.array([(p.x, p.y) for p in grid.iter_grid_positions()], dtype=np.float64).reshape(-1, 2)
        if len(centres) == 0:  # cannot happen for a valid polygon; never scan nothing silently
            raise ValueError(f"section {section.id!r}: the polygon grid has no tiles")
        out[section.id] = centres
    return out


class PlannedTile(NamedTuple):
    """One tile to acquire: which section, which tile, where and at what focus."""

    section_id: str
    tile_index: int
    x_um: float
    y_um: float
    z_um: float | None  # None: the current focus


def plan_tiles(
    plan: ScanPlan,
    *,
    tile_size_um: tuple[float, float],
    focus_z_um: Callable[[str, float, float], float] | None = None,
) -> list[PlannedTile]:
    """Every tile of the plan in scan order, with its focus.

    Parameters
    ----------
    plan : ScanPlan
    tile_size_um : (float, float)
        Field of view (width, height) in µm, see :func:`tile_size_um`.
    focus_z_um : callable, optional
        ``f(section_id, x_um, y_um) -> z_um``: the focus of each tile (e.g.
        from a focus map). Without it, tiles use ``plan.focus.z_um`` (None:
        the current focus).

    Raises
    ------
    PlanError
        If the plan asks for a focus map and no ``focus_z_um`` is given.
    """
    if plan.focus.strategy == "focus_map" and focus_z_um is None:
        raise PlanError(
            [
                PlanProblem(
                    "focus.strategy",
                    "is 'focus_map': the focus of each tile (focus_z_um) must be given to compile the plan",
                )
            ]
        )
    tiles: list[PlannedTile] = []
    for section_id, centres in section_tiles(plan, tile_size_um=tile_size_um).items():
        for k, (x, y) in enumerate(centres):
            xf, yf = float(x), float(y)
            z = float(focus_z_um(section_id, xf, yf)) if focus_z_um is not None else plan.focus.z_um
            tiles.append(PlannedTile(section_id, k, xf, yf, z))
    return tiles


def sequence_for_tiles(
    plan: ScanPlan,
    tiles: Sequence[PlannedTile],
    *,
    tile_size_um: tuple[float, float] | None = None,
) -> useq.MDASequence:
    """Build the ``useq.MDASequence`` that acquires ``tiles`` (a whole plan, or what is left to resume).

    One stage position per tile, in the given order, named
    ``"<section id>/<tile index:04d>"``. The axis order ``"pcz"`` images
    every channel (and, per channel, every z-slice) at a tile before the
    stage moves on, changing the filter once per channel and tile. A z-stack
    is relative to each tile's z.

    Returns
    -------
    useq.MDASequence
        With ``metadata["cordscope"]`` = ``{"plan_name", "objective",
        "objective_group", "tile_size_um" (None if not given), "overlap_pct",
        "sections": {id: {"n_tiles", "first_position"}}, "tiles":
        [[section_id, tile_index, x_um, y_um], ...]}``: ``tiles[event.index
        ["p"]]`` names the tile of an event; ``n_tiles`` counts the section's
        tiles in this sequence.
    """
    positions: list[useq.Position] = []
    tile_table: list[list[Any]] = []
    sections_meta: dict[str, dict[str, int]] = {}
    for p, tile in enumerate(tiles):
        sid, k = str(tile.section_id), int(tile.tile_index)
        x, y = float(tile.x_um), float(tile.y_um)
        z = float(tile.z_um) if tile.z_um is not None else None
        positions.append(useq.Position(x=x, y=y, z=z, name=f"{sid}/{k:04d}"))
        tile_table.append([sid, k, x, y])
        meta = sections_meta.setdefault(sid, {"n_tiles": 0, "first_position": p})
        meta["n_tiles"] += 1
    channels = [
        useq.Channel(config=ch.preset, group=plan.groups[0], exposure=ch.exposure_ms) for ch in plan.channels
    ]
    metadata = {
        "cordscope": {
            "plan_name": plan.name,
            "objective": plan.objective,
            "objective_group": plan.objective_group,
            "tile_size_um": [float(v) for v in tile_size_um] if tile_size_um is not None else None,
            "overlap_pct": plan.overlap_pct,
            "sections": sections_meta,
            "tiles": tile_table,
        }
    }
    return useq.MDASequence(
        stage_positions=tuple(positions),
        channels=tuple(channels),
        z_plan=plan.z_stack.to_useq() if plan.z_stack is not None else None,
        axis_order=("p", "c", "z"),
        metadata=metadata,
    )


def compile_plan(
    plan: ScanPlan,
    *,
    tile_size_um: tuple[float, float],
    focus_z_um: Callable[[str, float, float], float] | None = None,
) -> useq.MDASequence:
    """Turn a plan into the ``useq.MDASequence`` the MDA runner executes.

    Every tile of every section (:func:`section_tiles`), sections in plan
    order, tiles in serpentine order within a section, all channels (and
    z-slices) at a tile before the stage moves on; see
    :func:`sequence_for_tiles` for the positions, names and the tile table
    in ``metadata["cordscope"]``.

    Parameters
    ----------
    plan : ScanPlan
        A validated plan (see :func:`validate_plan`).
    tile_size_um : (float, float)
        Field of view (width, height) in µm, see :func:`tile_size_um`.
    focus_z_um : callable, optional
        ``f(section_id, x_um, y_um) -> z_um``: the focus of each tile (e.g.
        from a focus map). Without it, tiles use ``plan.focus.z_um`` (None:
        the current focus).

    Raises
    ------
    PlanError
        If the plan asks for a focus map and no ``focus_z_um`` is given.
    """
    tiles = plan_tiles(plan, tile_size_um=tile_size_um, focus_z_um=focus_z_um)
    return sequence_for_tiles(plan, tiles, tile_size_um=tile_size_um)
