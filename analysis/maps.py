"""Per-section accumulation of axon area and tracer signal: region tables, heatmaps, HDF5/CSV output.

Analysis grid
-------------
:class:`SectionAccumulator` keeps, per cell of a stage-aligned grid (the
section's :class:`~analysis.mosaic.SectionMosaic` grid: same ``origin_um``,
cell size and ``shape``, 3.9 µm cells at 10x), three sums:

* ``imaged_px``: imaged area, in full-resolution pixels (pixel area ``|det A|``),
* ``axon_px``: axon area, in pixels,
* ``tracer_sum``: sum of the corrected tracer value over the imaged pixels.

Each tile is reduced once, in its own pixel frame, to ``f × f`` pixel
blocks (``f`` = the cell size in pixels): per block the number of axon-mask
pixels (the mask itself is full-resolution, so the axon area is measured at
full resolution) and the mean corrected tracer value
(:class:`~analysis.geometry.BlockLattice`). A grid cell owned by the tile
(below) then takes the tile's axon fraction and mean tracer at the cell's
centre (:class:`~analysis.geometry.TileOnGrid`, through the pixel-size
affine, so rotated and mirrored cameras are placed correctly: the nearest
block, or bilinear interpolation for a slightly rotated camera), times the
cell's area in pixels. A fully imaged cell therefore holds exactly
one cell area, whatever the sub-pixel offset of the tile, and the per-tile
work is three passes over the tile (block sums) plus work on the reduced
grid; no full-resolution index arrays, no whole-section arrays.

Overlap rule (each slide point counted once)
--------------------------------------------
Ownership is a partition of the grid's cells decided by the tile centres
given to the accumulator (``tile_centres_um``: the planned centres, or the
registered ones when a section is rebuilt at registered positions), not by
what has arrived: a cell belongs to tile ``i`` when its centre lies in the
footprint of ``i`` placed at ``center_um`` and no other tile ``j`` whose
footprint (at ``tile_centres_um[j]``) contains the centre is nearer to it
(ties go to the lower tile index). Each cell is decided by its centre alone,
with the same floating-point expression whichever tile asks, so overlapping
tiles never double count or leave a gap between them, the result does not
depend on tile order, and an offline rerun gives the same numbers as the
live run. A tile placed off its entry in ``tile_centres_um`` (the stage
missed) by less than half the overlap still leaves neither gaps nor double
counts. Limitation: the part of an overlap owned by a tile that *fails* is
not counted from its neighbour (the imaged fraction of the region then drops
below 1, which the table reports).

Region boundaries
-----------------
Region masks come on the analysis grid (one bool per cell, a cell belongs
to a region when its centre does, as :mod:`analysis.regions` draws them).
Whole cells are assigned: the axon area, imaged area and signal of a
boundary cell all go to the region(s) whose mask contains the cell, and the
region's area is its number of cells × cell area. % axonal area is axon
area / imaged area *within the same cells*, so coverage and boundary
discretisation largely cancel; the remaining error comes from axon pixels
near a region edge (a block, and the axon pixels in it, lands in the cell
nearest its centre, up to about a cell, ≈ 4 µm, from where a pixel lies). On
the demo slide (objects lie inside their regions) this is within 0.003
percentage points per region, see ``tests/analysis/test_maps.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from analysis.geometry import (
    BlockLattice,
    StageGrid,
    TileOnGrid,
    footprint_corners_um,
    pixel_size_from_affine,
    validate_affine,
)

__all__ = [
    "AccumulatorContribution",
    "Heatmaps",
    "RegionRow",
    "SectionAccumulator",
    "heatmaps",
    "region_table",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]

REGION_COLUMNS = (
    "region",
    "area_um2",
    "axon_area_um2",
    "pct_axonal_area",
    "mean_tracer_intensity",
    "imaged_fraction",
)

# dyadic grids that make per-cell sums exact, so they do not depend on tile order
_PX_QUANTUM_INV = 2.0**24
_SIGNAL_QUANTUM_INV = 2.0**16


def _quantised(a: F64, quantum_inv: float) -> F64:
    a *= quantum_inv
    np.round(a, out=a)
    a *= 1.0 / quantum_inv
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class AccumulatorContribution:
    """What one tile adds to a :class:`SectionAccumulator` (rounded: adding is order-independent).

    Attributes
    ----------
    at : (rows, cols) slices of the grid
    sums : (3, n_rows, n_cols) float64
        Imaged pixels, axon pixels and tracer sum (also as properties).
    """

    at: tuple[slice, slice]
    sums: F64
    """(3, n_rows, n_cols): imaged pixels, axon pixels, tracer sum."""

    @property
    def imaged_px(self) -> F64:
        """(n_rows, n_cols) imaged pixels."""
        return self.sums[0]

    @property
    def axon_px(self) -> F64:
        """(n_rows, n_cols) axon pixels."""
        return self.sums[1]

    @property
    def tracer_sum(self) -> F64:
        """(n_rows, n_cols) tracer sum."""
        return self.sums[2]


class SectionAccumulator:
    """Overlap-safe per-cell sums of imaged area, axon area and tracer signal for one section.

    Parameters
    ----------
    origin_um : (x, y)
        Stage position (µm) of the grid's top-left corner (``SectionMosaic.origin_um``).
    cell_um : float
        Cell size (µm) (``SectionMosaic.pixel_size_um``).
    shape : (rows, cols)
        Grid shape (``SectionMosaic.shape``).
    tile_centres_um : (n_tiles, 2) array
        (x, y) stage centres (µm) of *all* tiles of the section: they decide which
        tile owns each cell (see the module docstring).
    tile_shape : (H, W)
        Full-resolution tile shape (pixels), the same for every tile.
    tile_pixel_size_um : float
        Full-resolution pixel size (µm).
    affine_um : (2, 2) array, optional
        Pixel-size affine of the tiles (default ``tile_pixel_size_um · I``).

    Attributes
    ----------
    imaged_px, axon_px : (rows, cols) float64
        Imaged and axon area of each cell, in full-resolution pixels.
    tracer_sum : (rows, cols) float64
        Sum of the corrected tracer value over the imaged pixels of each cell.
    lattice : BlockLattice
        The blocks tiles are reduced to (``round(cell_um / pixel)`` pixels).
    n_tiles_added : int
    """

    def __init__(
        self,
        *,
        origin_um: ArrayLike,
        cell_um: float,
        shape: tuple[int, int],
        tile_centres_um: ArrayLike,
        tile_shape: tuple[int, int],
        tile_pixel_size_um: float,
        affine_um: ArrayLike | None = None,
    ) -> None:
        self.origin_um = np.asarray(origin_um, dtype=np.float64).reshape(2)
        self.cell_um = float(cell_um)
        if not (math.isfinite(self.cell_um) and self.cell_um > 0):
            raise ValueError(f"cell_um must be positive, got {cell_um!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        if min(self.shape) < 1:
            raise ValueError(f"grid shape must be positive, got {shape!r}")
        centres = np.asarray(tile_centres_um, dtype=np.float64)
        if centres.ndim != 2 or centres.shape[1] != 2 or len(centres) == 0:
            raise ValueError(f"tile_centres_um must be (n_tiles, 2), got shape {centres.shape}")
        self.tile_centres_um = centres
        self.tile_shape = (int(tile_shape[0]), int(tile_shape[1]))
        self.tile_pixel_size_um = float(tile_pixel_size_um)
        if not (math.isfinite(self.tile_pixel_size_um) and self.tile_pixel_size_um > 0):
            raise ValueError(f"tile_pixel_size_um must be positive, got {tile_pixel_size_um!r}")
        if affine_um is None:
            self.affine_um = self.tile_pixel_size_um * np.eye(2)
        else:
            self.affine_um = validate_affine(affine_um)
            p = pixel_size_from_affine(self.affine_um)
            if not math.isclose(p, self.tile_pixel_size_um, rel_tol=1e-6):
                raise ValueError(
                    f"the pixel affine's pixel size {p} µm differs from the tile pixel size "
                    f"{tile_pixel_size_um} µm"
                )
        self.grid = StageGrid((float(self.origin_um[0]), float(self.origin_um[1])), self.cell_um, self.shape)
        factor = max(1, round(self.cell_um / self.tile_pixel_size_um))
        self.lattice = BlockLattice(self.tile_shape, min(factor, *self.tile_shape))
        det = abs(float(np.linalg.det(self.affine_um)))
        # pixels per cell, on the dyadic grid (exactly f² for the mosaic grid)
        self.cell_px = round(self.cell_um**2 / det * _PX_QUANTUM_INV) / _PX_QUANTUM_INV
        self._pixel_area_um2 = det
        corners = footprint_corners_um((0.0, 0.0), self.affine_um, self.tile_shape)
        self._footprint_lo, self._footprint_hi = corners.min(axis=0), corners.max(axis=0)
        self._tree: cKDTree | None = None
        # one array, so a tile's three contributions are added in one operation
        self._sums = np.full((3, *self.shape), 0.0, dtype=np.float64)  # touched now, not by the tiles
        self.imaged_px, self.axon_px, self.tracer_sum = self._sums
        self.n_tiles_added = 0

    @classmethod
    def for_mosaic(
        cls,
        mosaic: Any,
        *,
        tile_centres_um: ArrayLike,
        tile_shape: tuple[int, int],
    ) -> SectionAccumulator:
        """Accumulator on the grid of a :class:`~analysis.mosaic.SectionMosaic` (same cells and affine)."""
        return cls(
            origin_um=mosaic.origin_um,
            cell_um=mosaic.pixel_size_um,
            shape=mosaic.shape,
            tile_centres_um=tile_centres_um,
            tile_shape=tile_shape,
            tile_pixel_size_um=mosaic.tile_pixel_size_um,
            affine_um=getattr(mosaic, "affine_um", None),
        )

    # ------------------------------------------------------------ derived grids

    @property
    def pixel_area_um2(self) -> float:
        """Area of one full-resolution pixel (µm²): ``|det A|``."""
        return self._pixel_area_um2

    @property
    def cell_area_um2(self) -> float:
        """Area of one grid cell (µm²)."""
        return self.cell_um**2

    @property
    def imaged_area_um2(self) -> F64:
        """(rows, cols) imaged area per cell (µm²)."""
        return self.imaged_px * self.pixel_area_um2

    @property
    def axon_area_um2(self) -> F64:
        """(rows, cols) axon area per cell (µm²)."""
        return self.axon_px * self.pixel_area_um2

    def tile_index_of(self, center_um: tuple[float, float]) -> int:
        """Index of the tile centre nearest to ``center_um``."""
        return int(self._kdtree().query(np.asarray(center_um, dtype=np.float64))[1])

    def _kdtree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree(self.tile_centres_um)
        return self._tree

    def neighbours(self, center_um: Sequence[float], *, tile_index: int) -> list[int]:
        """Tiles other than ``tile_index`` whose footprint may meet that of a tile at ``center_um``."""
        size = self._footprint_hi - self._footprint_lo
        c = np.asarray(center_um, dtype=np.float64)
        near = self._kdtree().query_ball_point(c, float(size.max()), p=np.inf)
        d = np.abs(self.tile_centres_um[near] - c) if near else np.zeros((0, 2))
        return sorted(int(j) for j, dj in zip(near, d, strict=True) if j != tile_index and (dj < size).all())

    # ------------------------------------------------------------ accumulation

    def placement(self, center_um: Sequence[float]) -> TileOnGrid:
        """Where a tile centred at ``center_um`` lands on the grid."""
        return TileOnGrid(self.grid, self.lattice, center_um=center_um, affine_um=self.affine_um)

    def owned_cells(self, on: TileOnGrid, *, tile_index: int) -> NDArray[np.bool_]:
        """(n_rows, n_cols) bool over ``on``'s cells: the cells this tile owns (see the module docstring)."""
        i = int(tile_index)
        if not 0 <= i < len(self.tile_centres_um):
            raise ValueError(f"tile_index {i} outside 0..{len(self.tile_centres_um) - 1}")
        own = np.array(on.covered)
        x, y = on.x_um, on.y_um  # (1, n_cols), (n_rows, 1)
        for j in self.neighbours(on.center_um, tile_index=i):
            cj = self.tile_centres_um[j]
            lo_xy, hi_xy = cj + self._footprint_lo, cj + self._footprint_hi
            rows, cols = self.grid.cells_within(
                float(lo_xy[0]), float(lo_xy[1]), float(hi_xy[0]), float(hi_xy[1])
            )
            r0, r1 = max(rows.start, on.rows.start), min(rows.stop, on.rows.stop)
            c0, c1 = max(cols.start, on.cols.start), min(cols.stop, on.cols.stop)
            if r1 <= r0 or c1 <= c0:
                continue
            sr, sc = (
                slice(r0 - on.rows.start, r1 - on.rows.start),
                slice(c0 - on.cols.start, c1 - on.cols.start),
            )
            in_j = on.in_footprint(cj, rows=sr, cols=sc)
            # the same expression whichever of the two tiles evaluates it: lower index first
            a, b = (self.tile_centres_um[i], cj) if i < j else (cj, self.tile_centres_um[i])
            xs, ys = x[:, sc], y[sr, :]
            s = ((xs - a[0]) ** 2 - (xs - b[0]) ** 2) + ((ys - a[1]) ** 2 - (ys - b[1]) ** 2)
            i_wins = (s <= 0.0) if i < j else (s > 0.0)
            own[sr, sc] &= i_wins | ~in_j
        return own

    def contribution(
        self,
        on: TileOnGrid,
        *,
        tracer_mean: NDArray[Any],
        axon_fraction: NDArray[Any],
        tile_index: int,
    ) -> AccumulatorContribution | None:
        """What a placed tile adds, from its block values resampled at the cell centres.

        Parameters
        ----------
        on : TileOnGrid
            From :meth:`placement`.
        tracer_mean, axon_fraction : (n_rows, n_cols) arrays
            The tile's mean corrected tracer and axon-pixel fraction per block,
            resampled (``on.resample``).
        tile_index : int
            This tile's index in ``tile_centres_um``.

        Returns
        -------
        AccumulatorContribution, or None if the tile owns no cell of the grid.
        """
        if on.empty:
            return None
        own = self.owned_cells(on, tile_index=tile_index)
        if not own.any():
            return None
        sums = np.empty((3, *on.shape), dtype=np.float64)
        imaged = sums[0]
        np.multiply(own, self.cell_px, out=imaged)
        _quantised(np.multiply(imaged, axon_fraction, out=sums[1]), _PX_QUANTUM_INV)
        _quantised(np.multiply(imaged, tracer_mean, out=sums[2]), _SIGNAL_QUANTUM_INV)
        return AccumulatorContribution((on.rows, on.cols), sums)

    def add(self, contribution: AccumulatorContribution | None) -> None:
        """Add a contribution from :meth:`contribution` (does not count a tile)."""
        if contribution is None:
            return
        r, c = contribution.at
        self._sums[:, r, c] += contribution.sums

    def reduce(self, axon_mask: ArrayLike, tracer_corrected: ArrayLike) -> tuple[F32, F32]:
        """A tile's per-block mean tracer and axon fraction, each (nh, nw) float32.

        Parameters
        ----------
        axon_mask : (H, W) bool
            Full-resolution axon mask (e.g. ``segment_axons(...).mask``).
        tracer_corrected : (H, W) float
            Corrected tracer image (e.g. ``correct_tile`` output, ADU above dark).
        """
        mask = np.asarray(axon_mask, dtype=bool)
        tracer = np.asarray(tracer_corrected)
        if mask.shape != self.tile_shape or tracer.shape != self.tile_shape:
            raise ValueError(
                f"axon_mask {mask.shape} and tracer {tracer.shape} must both have the tile "
                f"shape {self.tile_shape}"
            )
        f2 = np.float32(1.0 / self.lattice.factor**2)
        return self.lattice.block_means(tracer), self.lattice.block_counts(mask).astype(np.float32) * f2

    def add_tile(
        self,
        axon_mask: ArrayLike,
        tracer_corrected: ArrayLike,
        *,
        center_um: tuple[float, float],
        pixel_size_um: float,
        tile_index: int | None = None,
    ) -> None:
        """Add the cells one tile owns to the per-cell sums.

        Parameters
        ----------
        axon_mask : (H, W) bool
            Full-resolution axon mask (e.g. ``segment_axons(...).mask``).
        tracer_corrected : (H, W) float
            Corrected tracer image (e.g. ``correct_tile`` output, ADU above dark);
            its mean over a region's imaged pixels is the region's mean tracer intensity.
        center_um : (x, y)
            Actual stage position (µm) of the tile centre (requested or registered).
        pixel_size_um : float
            Must equal ``tile_pixel_size_um``.
        tile_index : int, optional
            Index of this tile in ``tile_centres_um``; default: the nearest centre.
        """
        if not np.isclose(pixel_size_um, self.tile_pixel_size_um, rtol=1e-6):
            raise ValueError(
                f"pixel size {pixel_size_um} µm differs from the accumulator's {self.tile_pixel_size_um} µm"
            )
        tracer, axons = self.reduce(axon_mask, tracer_corrected)
        idx = self.tile_index_of(center_um) if tile_index is None else int(tile_index)
        on = self.placement(center_um)
        if not on.empty:
            values = on.resample(np.stack([tracer, axons]))
            self.add(self.contribution(on, tracer_mean=values[0], axon_fraction=values[1], tile_index=idx))
        self.n_tiles_added += 1


# ---------------------------------------------------------------- region table


@dataclasses.dataclass(frozen=True)
class RegionRow:
    """One region's numbers for one section.

    Attributes
    ----------
    region : str
    area_um2 : float
        Region area: cells of its mask × cell area (µm²).
    axon_area_um2 : float
        Axon area imaged so far in the region (µm²).
    pct_axonal_area : float
        ``100 · axon area / imaged area`` of the region (NaN if nothing imaged).
    mean_tracer_intensity : float
        Mean corrected tracer value over the region's imaged pixels (units of the
        tracer image, e.g. ADU; NaN if nothing imaged).
    imaged_fraction : float
        Imaged area / region area (0..1).
    kind : str
        Where the region's mask came from: ``"automatic"`` (from the DAPI mosaic),
        ``"edited"``, ``"drawn"`` or ``"imported"`` (see :mod:`analysis.results_format`).
    imaged_at_hires_fraction : float
        Part of the imaged area measured by a higher-resolution pass (0..1; 0 without
        one, see :mod:`analysis.adaptive`).
    """

    region: str
    area_um2: float
    axon_area_um2: float
    pct_axonal_area: float
    mean_tracer_intensity: float
    imaged_fraction: float
    kind: str = "automatic"
    imaged_at_hires_fraction: float = 0.0


def region_table(acc: SectionAccumulator, masks: Mapping[str, ArrayLike]) -> list[RegionRow]:
    """Numbers per region from the accumulated sums (whole cells assigned by each mask).

    Parameters
    ----------
    acc : SectionAccumulator
    masks : mapping of region name → (rows, cols) bool on the accumulator grid

    Returns
    -------
    list of RegionRow, in the order of ``masks``
    """
    rows = []
    for name, m in masks.items():
        mask = np.asarray(m, dtype=bool)
        if mask.shape != acc.shape:
            raise ValueError(f"region {name!r}: mask shape {mask.shape} differs from the grid {acc.shape}")
        area = float(mask.sum()) * acc.cell_area_um2
        imaged_px = float(acc.imaged_px[mask].sum())
        axon_px = float(acc.axon_px[mask].sum())
        signal = float(acc.tracer_sum[mask].sum())
        imaged = imaged_px * acc.pixel_area_um2
        axon = axon_px * acc.pixel_area_um2
        rows.append(
            RegionRow(
                region=str(name),
                area_um2=area,
                axon_area_um2=axon,
                pct_axonal_area=100.0 * axon_px / imaged_px if imaged_px > 0 else math.nan,
                mean_tracer_intensity=signal / imaged_px if imaged_px > 0 else math.nan,
                imaged_fraction=min(1.0, imaged / area) if area > 0 else 0.0,
            )
        )
    return rows


# ---------------------------------------------------------------- heatmaps


@dataclasses.dataclass(frozen=True)
class Heatmaps:
    """% axonal area and mean tracer intensity on a coarse grid of square bins.

    Attributes
    ----------
    pct_axonal_area : (ny, nx) float32
        ``100 · axon area / imaged tissue area`` per bin; NaN where no tissue was imaged.
    mean_tracer : (ny, nx) float32
        Mean corrected tracer value over the imaged tissue of each bin; NaN likewise.
    imaged_tissue_fraction : (ny, nx) float32
        Imaged tissue area / bin area (0..1): how much each bin's value rests on.
    origin_um : (2,) float64
        Stage (x, y) of the top-left corner of bin (0, 0) (the grid's origin).
    bin_um : float
        Actual bin size (µm): a whole number of cells, the one closest to the requested size.
    cells_per_bin : int
    """

    pct_axonal_area: F32
    mean_tracer: F32
    imaged_tissue_fraction: F32
    origin_um: F64
    bin_um: float
    cells_per_bin: int


def _bin_sum(a: NDArray[Any], n: int) -> F64:
    rows, cols = a.shape
    ny, nx = -(-rows // n), -(-cols // n)
    padded = np.zeros((ny * n, nx * n), dtype=np.float64)
    padded[:rows, :cols] = a
    return padded.reshape(ny, n, nx, n).sum(axis=(1, 3))


def heatmaps(
    acc: SectionAccumulator, *, bin_um: float = 50.0, tissue_mask: ArrayLike | None = None
) -> Heatmaps:
    """Bin the accumulated sums into square bins of about ``bin_um``.

    Parameters
    ----------
    acc : SectionAccumulator
    bin_um : float
        Requested bin size (µm); rounded to a whole number of cells (≥ 1) so bins
        never split a cell (50 µm → 13 cells of 3.9 µm = 50.7 µm).
    tissue_mask : (rows, cols) bool, optional
        Cells that are tissue (the ``"section"`` region). Without it every imaged
        cell counts, glass included, which dilutes % axonal area at the section edge.

    Returns
    -------
    Heatmaps
        Bins start at the grid origin; the last row/column of bins may extend past the grid.
    """
    if not (math.isfinite(bin_um) and bin_um > 0):
        raise ValueError(f"bin_um must be positive, got {bin_um!r}")
    n = max(1, round(bin_um / acc.cell_um))
    if tissue_mask is None:
        tissue = np.ones(acc.shape, dtype=bool)
    else:
        tissue = np.asarray(tissue_mask, dtype=bool)
        if tissue.shape != acc.shape:
            raise ValueError(f"tissue_mask shape {tissue.shape} differs from the grid {acc.shape}")
    imaged = _bin_sum(np.where(tissue, acc.imaged_px, 0), n)
    axon = _bin_sum(np.where(tissue, acc.axon_px, 0), n)
    signal = _bin_sum(np.where(tissue, acc.tracer_sum, 0.0), n)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(imaged > 0, 100.0 * axon / imaged, np.nan)
        mean = np.where(imaged > 0, signal / imaged, np.nan)
    frac = np.clip(imaged * acc.pixel_area_um2 / (n * acc.cell_um) ** 2, 0.0, 1.0)
    return Heatmaps(
        pct_axonal_area=pct.astype(np.float32),
        mean_tracer=mean.astype(np.float32),
        imaged_tissue_fraction=frac.astype(np.float32),
        origin_um=acc.origin_um.copy(),
        bin_um=n * acc.cell_um,
        cells_per_bin=n,
    )


# ---------------------------------------------------------------- output

#: Names that moved to :mod:`analysis.results_format` (the one reader and writer of the
#: ``analysis/`` group); still importable from here.
_MOVED = frozenset(
    {"SavedAnalysis", "read_analysis", "replace_dataset", "write_analysis", "write_region_csv"}
)


def __getattr__(name: str) -> Any:
    # resolved on first use: results_format imports this module
    if name in _MOVED:
        from analysis import results_format

        return getattr(results_format, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
