"""20x where it matters: choosing what an adaptive pass images, and using its tiles in the tables.

A plan's ``adaptive:`` pass (:class:`acquisition.plan.AdaptiveSettings`)
images part of a section again at a higher magnification once the first
pass has been analysed live. This module holds the two analysis sides of it,
pure functions and a small accumulator on numpy arrays:

- **What to image again** (:func:`target_mask`, :func:`target_polygons`):
  the cells of the chosen region (e.g. ``rubrospinal_territory``) lying in
  bins of the region's own % axonal area map (the first pass's sums within
  the region, on ``heatmap_bin_um`` bins) at or above
  ``min_pct_axonal_area``, as polygons in stage µm for the scan to tile.
- **Using the pass** (:class:`HiresSection`, :func:`fold_hires`): each pass
  tile is corrected and segmented at its own resolution and accumulated on
  the section's analysis grid with the same overlap rule as the first pass
  (:class:`~analysis.maps.SectionAccumulator`). Cells the pass imaged
  completely take its numbers (pixel counts converted to first-pass pixels,
  ``(p_hires / p)²``); every other cell keeps the first pass's. The region
  table then says, per region, which part of the imaged area came from the
  pass (:attr:`~analysis.maps.RegionRow.imaged_at_hires_fraction`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray

from analysis.maps import RegionRow, SectionAccumulator, heatmaps
from analysis.tile import AxonSegmentationSettings, correct_tile, segment_axons

__all__ = [
    "HiresSection",
    "fold_hires",
    "hires_fractions",
    "pass_parameters",
    "target_mask",
    "target_polygons",
]

# the dyadic grids of analysis.section_analysis: sums do not depend on tile order
_PX_QUANTUM = 2.0**-24
_SIGNAL_QUANTUM = 2.0**-16

#: A cell counts as imaged by the pass when the pass covers at least this share of it.
FULL_CELL = 0.999


def _quantised(a: NDArray[np.float64], quantum: float) -> NDArray[np.float64]:
    return np.round(a / quantum) * quantum


# --------------------------------------------------------------- targets


def target_mask(
    acc: SectionAccumulator,
    region_mask: ArrayLike,
    *,
    min_pct_axonal_area: float,
    bin_um: float,
) -> NDArray[np.bool_]:
    """Cells of a region to image again: the region's cells in its bins at or above a % axonal area.

    Parameters
    ----------
    acc : SectionAccumulator
        The first pass's sums.
    region_mask : (rows, cols) bool
        The region on the accumulator's grid.
    min_pct_axonal_area : float
        Threshold (%): a bin is taken when the region's part of it shows at least this.
    bin_um : float
        Bin size (µm), rounded to whole cells as the heatmaps are.

    Returns
    -------
    (rows, cols) bool
    """
    region = np.asarray(region_mask, dtype=bool)
    maps = heatmaps(acc, bin_um=bin_um, tissue_mask=region)
    n = maps.cells_per_bin
    hot = np.nan_to_num(maps.pct_axonal_area, nan=-1.0) >= float(min_pct_axonal_area)
    cells = np.repeat(np.repeat(hot, n, axis=0), n, axis=1)[: region.shape[0], : region.shape[1]]
    return region & cells


def target_polygons(
    mask: ArrayLike, *, origin_um: ArrayLike, cell_um: float
) -> list[list[tuple[float, float]]]:
    """Outer outlines (stage µm) of a cell mask's pieces: what a pass tiles.

    Cells are unit squares of ``cell_um`` from ``origin_um`` (rows along +y);
    a piece's holes are left in (a pass covers them, they are small).

    Returns
    -------
    list of vertex lists, one per connected piece (empty for an empty mask)
    """
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return []
    x0, y0 = (float(v) for v in np.asarray(origin_um, dtype=np.float64).reshape(2))
    boxes: list[shapely.Polygon] = []
    for r in np.flatnonzero(m.any(axis=1)):
        row = np.r_[False, m[r], False]
        starts = np.flatnonzero(~row[:-1] & row[1:])
        ends = np.flatnonzero(row[:-1] & ~row[1:])
        boxes.extend(
            shapely.box(x0 + a * cell_um, y0 + r * cell_um, x0 + b * cell_um, y0 + (r + 1) * cell_um)
            for a, b in zip(starts, ends, strict=True)
        )
    union = shapely.unary_union(boxes)
    pieces = getattr(union, "geoms", [union])
    return [
        [
            (float(x), float(y))
            for x, y in list(shapely.Polygon(p.exterior).simplify(0.0).exterior.coords)[:-1]
        ]
        for p in pieces
        if p.area > 0
    ]


# --------------------------------------------------------------- the pass


class HiresSection:
    """A pass's tiles over one section, segmented at their resolution, summed on the section's grid.

    Parameters
    ----------
    origin_um, cell_um, shape
        The section's analysis grid (its ``SectionMosaic``).
    tile_xy_um : (n, 2) array
        The pass's planned tile centres (ownership of overlaps, as in the first pass).
    tile_shape_px : (H, W)
    pixel_size_um : float
        The pass's pixel size (µm).
    pixel_affine_um : (2, 2) array, optional
        The pass's pixel-size affine (default ``pixel_size_um``·I).
    tracer_channel : int
        Index of the tracer channel in the pass's tiles.
    dark_offset_adu : float
    segmentation : AxonSegmentationSettings
        As the first pass's (its lengths are in µm, so they hold at any pixel size).
    """

    def __init__(
        self,
        *,
        origin_um: Sequence[float],
        cell_um: float,
        shape: tuple[int, int],
        tile_xy_um: ArrayLike,
        tile_shape_px: tuple[int, int],
        pixel_size_um: float,
        tracer_channel: int,
        dark_offset_adu: float,
        segmentation: AxonSegmentationSettings,
        pixel_affine_um: ArrayLike | None = None,
    ) -> None:
        self.pixel_size_um = float(pixel_size_um)
        if cell_um < self.pixel_size_um:
            raise ValueError(f"the analysis grid ({cell_um} µm) is finer than the pass's pixels")
        self.accumulator = SectionAccumulator(
            origin_um=origin_um,
            cell_um=cell_um,
            shape=shape,
            tile_centres_um=tile_xy_um,
            tile_shape=tile_shape_px,
            tile_pixel_size_um=pixel_size_um,
            affine_um=pixel_affine_um,
        )
        self.tracer_channel = int(tracer_channel)
        self.dark_offset_adu = float(dark_offset_adu)
        self.segmentation = segmentation
        self.tiles_added: set[int] = set()

    def add_tile(self, images: ArrayLike, *, tile_index: int) -> None:
        """Correct, segment and sum one pass tile (``(C, Z, H, W)`` or ``(C, H, W)`` raw ADU)."""
        t = int(tile_index)
        if t in self.tiles_added:
            raise ValueError(f"pass tile {t} was already added")
        raw = np.asarray(images)
        if raw.ndim == 4:
            raw = raw.max(axis=1)
        tracer = correct_tile(raw[self.tracer_channel], dark_offset_adu=self.dark_offset_adu)
        axons = segment_axons(tracer, pixel_size_um=self.pixel_size_um, settings=self.segmentation)
        centre = tuple(float(v) for v in self.accumulator.tile_centres_um[t])
        self.accumulator.add_tile(
            axons.mask,
            tracer,
            center_um=(centre[0], centre[1]),
            pixel_size_um=self.pixel_size_um,
            tile_index=t,
        )
        self.tiles_added.add(t)

    def full_cells(self) -> NDArray[np.bool_]:
        """Cells the pass imaged completely."""
        acc = self.accumulator
        return acc.imaged_px * acc.pixel_area_um2 >= FULL_CELL * acc.cell_area_um2


def fold_hires(acc: SectionAccumulator, hires: HiresSection) -> NDArray[np.bool_]:
    """Put the pass's numbers into the first pass's sums (in place) where the pass imaged whole cells.

    Pixel counts and signal sums of those cells are converted to first-pass
    pixels (× ``(p_hires / p)²``), so areas and means come out in the same
    units as everywhere else.

    Returns
    -------
    (rows, cols) bool
        The cells that now hold the pass's numbers.
    """
    h = hires.accumulator
    if h.shape != acc.shape or not np.allclose(h.origin_um, acc.origin_um) or h.cell_um != acc.cell_um:
        raise ValueError("the pass is summed on another grid than the section's")
    cells = hires.full_cells()
    scale = (h.tile_pixel_size_um / acc.tile_pixel_size_um) ** 2
    acc.imaged_px[cells] = h.imaged_px[cells] * scale
    acc.axon_px[cells] = h.axon_px[cells] * scale
    acc.tracer_sum[cells] = h.tracer_sum[cells] * scale
    return cells


def hires_fractions(
    table: Sequence[RegionRow], acc: SectionAccumulator, masks: Mapping[str, ArrayLike], cells: ArrayLike
) -> list[RegionRow]:
    """The table's rows with the part of each region's imaged area that came from the pass."""
    hires = np.asarray(cells, dtype=bool)
    out = []
    for row in table:
        mask = np.asarray(masks[row.region], dtype=bool) if row.region in masks else None
        if mask is None:
            out.append(row)
            continue
        imaged = float(acc.imaged_px[mask].sum())
        at_hires = float(acc.imaged_px[mask & hires].sum())
        fraction = at_hires / imaged if imaged > 0 else 0.0
        out.append(dataclasses.replace(row, imaged_at_hires_fraction=min(1.0, fraction)))
    return out


def pass_parameters(hires: HiresSection, cells: ArrayLike, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What the results record about a pass (JSON types)."""
    n_cells = int(np.count_nonzero(np.asarray(cells, dtype=bool)))
    return {
        "objective": attrs.get("objective"),
        "pass": attrs.get("pass_name"),
        "region": attrs.get("region"),
        "min_pct_axonal_area": attrs.get("min_pct_axonal_area"),
        "pixel_size_um": hires.pixel_size_um,
        "n_tiles_analysed": len(hires.tiles_added),
        "cells_at_hires": n_cells,
        "area_at_hires_um2": n_cells * hires.accumulator.cell_area_um2,
        "edge_fraction": hires.segmentation.edge_fraction,
    }
