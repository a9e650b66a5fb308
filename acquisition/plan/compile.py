"""Compiling a plan into a useq.MDASequence: tiles per section, one stage position per tile.

Tiling
------
``tiling: minimal`` (the default) covers each section's polygon with the
fewest tiles this module finds at the plan's overlap: the fewest rows of
tiles at a pitch of the tile height × (1 − overlap) that span the polygon;
each row covers the polygon's part within its band (from the middle of its
overlap with one neighbouring row to the middle of the other), with runs of
tiles at a pitch of the tile width × (1 − overlap) over each stretch of that
band's polygon, centred on it. Where the rows sit within their slack, and
whether rows run along x or along y, are chosen to minimise the count
(:func:`minimal_cover`); the count of that search is what
:func:`minimum_tile_count` reports and ``cordscope validate`` compares a
plan's tiles with. ``tiling: grid`` keeps useq's polygon grid (a grid
anchored at the polygon's bounding box).

Channel order
-------------
The compiled sequence images every channel at a tile before the stage moves
on. With ``channel_order: alternate`` the scan engine runs each tile's
channels starting with the channel the filter is already in
(:func:`channels_from_current`): one filter change per tile instead of one
per channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import shapely
import useq
from shapely.geometry.base import BaseGeometry

from .model import (
    ChannelSetting,
    PlanError,
    PlanProblem,
    ScanPlan,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Row placements tried per orientation by :func:`minimal_cover`.
N_PHASES = 25

# ================================================================== tiling


def _band_intervals(geom: BaseGeometry, lo: float, hi: float) -> list[tuple[float, float]]:
    """The x-extents of ``geom`` within the band ``lo <= y <= hi``, merged, sorted."""
    x0, _, x1, _ = geom.bounds
    part = geom.intersection(shapely.box(x0 - 1.0, lo, x1 + 1.0, hi))
    pieces = getattr(part, "geoms", [part])
    spans = sorted(
        (float(b[0]), float(b[2])) for g in pieces if g.area > 0 and not g.is_empty for b in [g.bounds]
    )
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def cover_intervals(
    intervals: Sequence[tuple[float, float]], *, tile_um: float, pitch_um: float
) -> list[float]:
    """Tile centres along a line covering ``intervals`` with the fewest tiles.

    Tiles of width ``tile_um`` over one stretch follow at ``pitch_um`` (so
    neighbours overlap by ``tile_um − pitch_um``); a stretch separated from the
    previous tiles by a gap starts a new run. Each run is centred on the
    stretch it covers. Greedy from the left, which is optimal for covering
    points of a line with fixed-length pieces.

    Parameters
    ----------
    intervals : sequence of (start, end)
        Sorted, non-overlapping stretches to cover (µm).
    tile_um, pitch_um : float
        Tile width and pitch (µm), ``0 < pitch_um <= tile_um``.

    Returns
    -------
    list of float
        Tile centres (µm), increasing.
    """
    runs: list[tuple[float, int, float]] = []  # (start, n tiles, end of what must be covered)
    for a, b in intervals:
        if runs:
            start, n, need = runs[-1]
            if a <= start + tile_um + (n - 1) * pitch_um:  # continues the run: overlap kept
                end = max(need, b)
                n = max(n, math.ceil((end - start - tile_um) / pitch_um - 1e-9) + 1)
                runs[-1] = (start, n, end)
                continue
        n = max(1, math.ceil((b - a - tile_um) / pitch_um - 1e-9) + 1)
        runs.append((a, n, b))
    centres: list[float] = []
    for start, n, end in runs:
        slack = start + tile_um + (n - 1) * pitch_um - end
        first = start - slack / 2 + tile_um / 2
        centres.extend(first + k * pitch_um for k in range(n))
    return centres


def _rows(
    geom: BaseGeometry, *, tile: tuple[float, float], overlap: float, phase: float
) -> list[tuple[float, list[float]]]:
    """Rows (centre y, tile centre xs) covering ``geom`` with the fewest rows.

    ``n`` rows of tiles of height ``h`` at pitch ``p`` span ``h + (n − 1)·p``,
    which leaves a slack over the polygon's height; ``phase`` (0..1) places the
    rows within it. Each row covers the polygon's part in its band of
    responsibility (from the middle of its overlap with the row below to the
    middle of its overlap with the row above; the outer rows to their tiles'
    outer edges), which its tiles contain.
    """
    w, h = tile
    pitch_x, pitch_y = w * (1.0 - overlap), h * (1.0 - overlap)
    _, y0, _, y1 = geom.bounds
    n_rows = max(1, math.ceil((y1 - y0 - h) / pitch_y - 1e-9) + 1)
    slack = h + (n_rows - 1) * pitch_y - (y1 - y0)
    first = y0 - phase * slack + h / 2  # centre of the first row
    rows: list[tuple[float, list[float]]] = []
    for k in range(n_rows):
        centre = first + k * pitch_y
        lo = centre - (h / 2 if k == 0 else pitch_y / 2)
        hi = centre + (h / 2 if k == n_rows - 1 else pitch_y / 2)
        xs = cover_intervals(_band_intervals(geom, lo, hi), tile_um=w, pitch_um=pitch_x)
        if xs:
            rows.append((centre, xs))
    return rows


def _swap(geom: BaseGeometry) -> BaseGeometry:
    return shapely.transform(geom, lambda xy: xy[:, ::-1])


def minimal_cover(
    polygon_um: Sequence[tuple[float, float]] | BaseGeometry,
    *,
    tile_size_um: tuple[float, float],
    overlap_pct: float,
    n_phases: int = N_PHASES,
) -> NDArray[np.float64]:
    """Tile centres covering a polygon with the fewest tiles at an overlap, in serpentine order.

    The fewest rows (or columns, whichever takes fewer tiles; rows on a tie)
    of tiles at a pitch of the tile size × (1 − overlap); each covers the
    polygon's part in its band (see the module docstring). ``n_phases``
    placements of the rows within their slack over the polygon are tried;
    the fewest tiles win, then the most centred. Rows are visited from the
    largest y down, the first row towards +x, then back (columns: from the
    smallest x, the first towards −y).

    Parameters
    ----------
    polygon_um : (n, 2) vertices or a shapely geometry
        What to cover, stage µm.
    tile_size_um : (float, float)
        Field of view (width, height), µm.
    overlap_pct : float
        Overlap of neighbouring tiles, % of the tile size (0–50).
    n_phases : int
        Row placements tried.

    Returns
    -------
    (n_tiles, 2) float64 array
        Tile centres (x, y), µm, in scan order.
    """
    geom = polygon_um if isinstance(polygon_um, BaseGeometry) else shapely.Polygon(polygon_um)
    if geom.is_empty or geom.area <= 0:
        raise ValueError("minimal_cover needs a polygon with an area")
    w, h = (float(v) for v in tile_size_um)
    overlap = float(overlap_pct) / 100.0
    n = max(2, n_phases)
    best: tuple[int, float, int, list[tuple[float, list[float]]]] | None = None
    for along_y, g, tile in ((0, geom, (w, h)), (1, _swap(geom), (h, w))):
        for i in range(n):
            phase = i / (n - 1)
            rows = _rows(g, tile=tile, overlap=overlap, phase=phase)
            key = (sum(len(xs) for _, xs in rows), abs(phase - 0.5))
            if best is None or key < best[:2]:
                best = (*key, along_y, rows)
    assert best is not None
    _, _, along_y, rows = best
    centres: list[tuple[float, float]] = []
    if not along_y:
        for k, (y, xs) in enumerate(sorted(rows, key=lambda r: -r[0])):
            centres.extend((x, y) for x in (xs if k % 2 == 0 else xs[::-1]))
    else:  # rows of the swapped geometry are columns: "y" is x, "xs" are ys
        for k, (x, ys) in enumerate(sorted(rows, key=lambda r: r[0])):
            centres.extend((x, y) for y in (ys[::-1] if k % 2 == 0 else ys))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def minimum_tile_count(
    polygon_um: Sequence[tuple[float, float]] | BaseGeometry,
    *,
    tile_size_um: tuple[float, float],
    overlap_pct: float,
) -> int:
    """The fewest tiles :func:`minimal_cover` finds for a polygon (``cordscope validate``'s reference)."""
    return len(minimal_cover(polygon_um, tile_size_um=tile_size_um, overlap_pct=overlap_pct))


def grid_cover(
    polygon_um: Sequence[tuple[float, float]], *, tile_size_um: tuple[float, float], overlap_pct: float
) -> NDArray[np.float64]:
    """The polygon grid of useq: tiles of a grid anchored at the bounding box that touch the polygon."""
    grid = useq.GridFromPolygon(
        vertices=list(polygon_um),
        fov_width=float(tile_size_um[0]),
        fov_height=float(tile_size_um[1]),
        overlap=(overlap_pct, overlap_pct),
        mode=useq.OrderMode.row_wise_snake,
    )
    return np.array([(p.x, p.y) for p in grid.iter_grid_positions()], dtype=np.float64).reshape(-1, 2)


# ================================================================== compiling


def section_tiles(plan: ScanPlan, *, tile_size_um: tuple[float, float]) -> dict[str, NDArray[np.float64]]:
    """Tile centres covering each section's polygon, in scan order.

    ``plan.tiling`` says how (see the module docstring): ``minimal``
    (:func:`minimal_cover`) or ``grid`` (:func:`grid_cover`, useq's polygon
    grid). Either way every point of the polygon lies in at least one tile,
    and tiles run in serpentine order.

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
        cover = minimal_cover if plan.tiling == "minimal" else grid_cover
        centres = cover(section.polygon_um, tile_size_um=(width, height), overlap_pct=plan.overlap_pct)
        if len(centres) == 0:  # cannot happen for a valid polygon; never scan nothing silently
            raise ValueError(f"section {section.id!r}: the polygon grid has no tiles")
        out[section.id] = centres
    return out


def channels_from_current(
    events: Iterable[useq.MDAEvent], current_channel: Callable[[], tuple[str, str] | None]
) -> Iterator[useq.MDAEvent]:
    """Each tile's events with its channels rotated to start with the channel the filter is in.

    Events of one stage position (``index["p"]``) stay together, and each
    channel's events (its z-slices) stay in order; only the order of the
    channels changes: a rotation of the plan's order that starts with
    ``current_channel()``, asked just before the tile's first event (after
    the previous tile's events ran). With two channels this alternates
    DAPI, tdTomato | tdTomato, DAPI | ..., one filter change per tile. An
    event keeps its ``index``, so every output stores it where it belongs.

    Parameters
    ----------
    events : iterable of useq.MDAEvent
        A compiled scan (:func:`sequence_for_tiles`), in its order.
    current_channel : callable
        ``() -> (group, config)`` of the channel the microscope is in, or None.
    """

    def rotated(tile: list[useq.MDAEvent]) -> list[useq.MDAEvent]:
        blocks: dict[tuple[str, str] | None, list[useq.MDAEvent]] = {}
        for e in tile:
            key = None if e.channel is None else (e.channel.group, e.channel.config)
            blocks.setdefault(key, []).append(e)
        order = list(blocks)
        now = current_channel()
        if now in blocks:
            k = order.index(now)
            order = order[k:] + order[:k]
        return [e for key in order for e in blocks[key]]

    tile: list[useq.MDAEvent] = []
    for event in events:
        if tile and event.index.get("p") != tile[0].index.get("p"):
            yield from rotated(tile)
            tile = []
        tile.append(event)
    if tile:
        yield from rotated(tile)


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
    channels: Sequence[ChannelSetting] | None = None,
) -> useq.MDASequence:
    """Build the ``useq.MDASequence`` that acquires ``tiles`` (a whole plan, or what is left to resume).

    One stage position per tile, in the given order, named
    ``"<section id>/<tile index:04d>"``. The axis order ``"pcz"`` images
    every channel (and, per channel, every z-slice) at a tile before the
    stage moves on, changing the filter once per channel and tile. A z-stack
    is relative to each tile's z.

    ``channels`` replaces the plan's channels (e.g. only the tracer, for an
    adaptive pass).

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
    useq_channels = [
        useq.Channel(config=ch.preset, group=plan.groups[0], exposure=ch.exposure_ms)
        for ch in (plan.channels if channels is None else channels)
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
        channels=tuple(useq_channels),
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
