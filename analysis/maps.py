"""Per-section accumulation of axon area and tracer signal: region tables, heatmaps, HDF5/CSV output.

Analysis grid
-------------
:class:`SectionAccumulator` keeps, per cell of a grid aligned with the
section's :class:`~analysis.mosaic.SectionMosaic` (same ``origin_um``,
``pixel_size_um`` and ``shape``, 3.9 µm cells at 10x), three sums over the
*full-resolution* pixels whose centres fall in the cell:

* ``imaged_px``: pixels imaged (owned share, see below),
* ``axon_px``: of those, pixels in the axon mask,
* ``tracer_sum``: sum of the corrected tracer value of those pixels
  (each pixel weighted by its owned share).

Areas are pixel counts × ``p²`` (``p`` the tile pixel size), so the axon area
is measured at full resolution, not on the reduced mosaic. When the cell
size is a whole number of tile pixels (the mosaic's integer ``factor``), an
interior cell receives exactly ``factor²`` pixel centres whatever the
sub-pixel offset of the tile, so a fully imaged cell holds exactly one cell
area. Per tile the sums are block sums over the cells (the cell index of a
pixel row/column is monotone, so a pad-and-reshape sum when cells are whole
pixels, ``np.add.reduceat`` otherwise), i.e. ``O(H·W)`` with no per-pixel
index array.

Overlap rule (each slide point counted once)
--------------------------------------------
Ownership is a fixed partition of stage space decided by the *planned*
tile centres of the section (``tile_centres_um``), not by what has arrived:
a stage point belongs to the tile whose planned centre is nearest among the
planned tiles whose planned footprint contains it (ties go to the lower tile
index). A tile adds only what it owns, so overlapping tiles never
double count, the result does not depend on tile order, and an offline
rerun gives the same numbers as the live run. Pixels are placed at the
tile's actual (requested or registered) ``center_um``; ownership is tested
at those stage positions, so a stage error smaller than half the overlap
leaves neither gaps nor double counts. The two tiles of an overlap sample
it on pixel lattices offset by a fraction of a pixel, so a hard cut at the
boundary would lose or double one pixel column per boundary (≈ 0.2 % of
the area per axis for 512² tiles): a pixel cut by the boundary counts by
the share of its footprint on the tile's side (a ramp one pixel wide), which
adds up exactly for boundaries along the axes. Limitation: the part of an overlap
owned by a tile that *fails* is not counted from its neighbour (the imaged
fraction of the region then drops below 1, which the table reports).

Region boundaries
-----------------
Region masks come on the analysis grid (one bool per cell, a cell belongs
to a region when its centre does, as :mod:`analysis.regions` draws them).
Whole cells are assigned: the axon pixels, imaged pixels and signal of a
boundary cell all go to the region(s) whose mask contains the cell, and the
region's area is its number of cells × cell area. % axonal area is axon
area / imaged area *within the same cells*, so coverage and boundary
discretisation largely cancel; the remaining error comes from axon pixels
in cells straddling a region edge (at most half a cell, ≈ 2 µm, away from
it). On the demo slide (objects lie inside their regions) this is well below
0.05 percentage points per region, see ``tests/analysis/test_maps.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
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
        Planned (x, y) stage centres (µm) of *all* tiles of the section: they
        define which tile owns each stage point (see the module docstring).
    tile_shape : (H, W)
        Full-resolution tile shape (pixels), the same for every tile.
    tile_pixel_size_um : float
        Full-resolution pixel size (µm).

    Attributes
    ----------
    imaged_px, axon_px : (rows, cols) float64
        Owned pixels and owned axon pixels whose centres fall in each cell (pixels on an
        ownership boundary count by their owned share, 0..1).
    tracer_sum : (rows, cols) float64
        Sum of the corrected tracer value over the owned pixels of each cell.
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
        self.imaged_px = np.zeros(self.shape, dtype=np.float64)
        self.axon_px = np.zeros(self.shape, dtype=np.float64)
        self.tracer_sum = np.zeros(self.shape, dtype=np.float64)
        self.n_tiles_added = 0

    @classmethod
    def for_mosaic(
        cls,
        mosaic: Any,
        *,
        tile_centres_um: ArrayLike,
        tile_shape: tuple[int, int],
    ) -> SectionAccumulator:
        """Accumulator on the grid of a :class:`~analysis.mosaic.SectionMosaic` (same cells)."""
        return cls(
            origin_um=mosaic.origin_um,
            cell_um=mosaic.pixel_size_um,
            shape=mosaic.shape,
            tile_centres_um=tile_centres_um,
            tile_shape=tile_shape,
            tile_pixel_size_um=mosaic.tile_pixel_size_um,
        )

    # ------------------------------------------------------------ derived grids

    @property
    def pixel_area_um2(self) -> float:
        """Area of one full-resolution pixel (µm²)."""
        return self.tile_pixel_size_um**2

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
        """Index of the planned tile centre nearest to ``center_um``."""
        d2 = ((self.tile_centres_um - np.asarray(center_um, dtype=np.float64)) ** 2).sum(axis=1)
        return int(np.argmin(d2))

    # ------------------------------------------------------------ accumulation

    def ownership(self, center_um: tuple[float, float], *, tile_index: int) -> tuple[F64, F64, F32]:
        """Stage coordinates of a tile's pixel centres and the pixels it owns.

        Returns
        -------
        x_um : (W,) float64
        y_um : (H,) float64
        owned : (H, W) float32
            Share of each pixel owned by this tile: 1 inside its ownership cell, 0 outside,
            in between for pixels cut by an ownership boundary.
        """
        h, w = self.tile_shape
        p = self.tile_pixel_size_um
        x = np.asarray(center_um[0] + (np.arange(w) + 0.5 - w / 2) * p, dtype=np.float64)
        y = np.asarray(center_um[1] + (np.arange(h) + 0.5 - h / 2) * p, dtype=np.float64)
        owned = np.ones((h, w), dtype=np.float32)
        ci = self.tile_centres_um[tile_index]
        half_w, half_h = w / 2 * p, h / 2 * p
        cs = self.tile_centres_um
        # only planned tiles whose footprint meets this tile's pixels can take pixels from it
        near = (np.abs(cs[:, 0] - center_um[0]) < 2 * half_w) & (np.abs(cs[:, 1] - center_um[1]) < 2 * half_h)
        near[tile_index] = False
        dxi2, dyi2 = (x - ci[0]) ** 2, (y - ci[1]) ** 2
        for j in np.flatnonzero(near):
            cj = cs[j]
            sep = float(np.hypot(*(cj - ci)))
            if sep == 0.0:
                raise ValueError(f"planned tiles {tile_index} and {j} have the same centre {tuple(ci)}")
            # rows/cols inside tile j's planned footprint (half-open, like pixel ownership)
            cols = np.flatnonzero((x >= cj[0] - half_w) & (x < cj[0] + half_w))
            rows = np.flatnonzero((y >= cj[1] - half_h) & (y < cj[1] + half_h))
            if len(cols) == 0 or len(rows) == 0:
                continue
            cs_, rs_ = slice(cols[0], cols[-1] + 1), slice(rows[0], rows[-1] + 1)
            di = dyi2[rs_, None] + dxi2[None, cs_]
            dj = (y[rs_, None] - cj[1]) ** 2 + (x[None, cs_] - cj[0]) ** 2
            # signed distance (µm) of the pixel centre from the bisector, + on this tile's side;
            # the pixel's share is the part of its footprint on this side (a ramp one pixel wide
            # across the boundary), so the two lattices of an overlap add up to the true area
            signed_um = (dj - di) / (2.0 * sep)
            width_um = p * (abs(cj[0] - ci[0]) + abs(cj[1] - ci[1])) / sep
            share = np.clip(0.5 + signed_um / width_um, 0.0, 1.0).astype(np.float32)
            np.minimum(owned[rs_, cs_], share, out=owned[rs_, cs_])
        return x, y, owned

    def add_tile(
        self,
        axon_mask: ArrayLike,
        tracer_corrected: ArrayLike,
        *,
        center_um: tuple[float, float],
        pixel_size_um: float,
        tile_index: int | None = None,
    ) -> None:
        """Add the owned pixels of one tile to the per-cell sums.

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
            Index of this tile in ``tile_centres_um``; default: the nearest planned centre.
        """
        mask = np.asarray(axon_mask, dtype=bool)
        tracer = np.asarray(tracer_corrected)
        if mask.shape != self.tile_shape or tracer.shape != self.tile_shape:
            raise ValueError(
                f"axon_mask {mask.shape} and tracer {tracer.shape} must both have the tile "
                f"shape {self.tile_shape}"
            )
        if not np.isclose(pixel_size_um, self.tile_pixel_size_um, rtol=1e-6):
            raise ValueError(
                f"pixel size {pixel_size_um} µm differs from the accumulator's {self.tile_pixel_size_um} µm"
            )
        contribution = self.tile_contribution(mask, tracer, center_um=center_um, tile_index=tile_index)
        self.n_tiles_added += 1
        if contribution is None:
            return
        at, imaged, axon, signal = contribution
        self.imaged_px[at] += imaged
        self.axon_px[at] += axon
        self.tracer_sum[at] += signal

    def tile_contribution(
        self,
        axon_mask: NDArray[np.bool_],
        tracer_corrected: NDArray[Any],
        *,
        center_um: tuple[float, float],
        tile_index: int | None = None,
    ) -> tuple[tuple[slice, slice], F64, F64, F64] | None:
        """What one tile adds to the grid, without adding it (see :meth:`add_tile`).

        Returns
        -------
        (rows, cols) slices of the grid, and the imaged-pixel, axon-pixel and tracer sums
        on those cells; None if the tile lies outside the grid.
        """
        mask, tracer = axon_mask, tracer_corrected
        idx = self.tile_index_of(center_um) if tile_index is None else int(tile_index)
        if not 0 <= idx < len(self.tile_centres_um):
            raise ValueError(f"tile_index {idx} outside 0..{len(self.tile_centres_um) - 1}")
        x, y, owned = self.ownership((float(center_um[0]), float(center_um[1])), tile_index=idx)
        col_cell = np.floor((x - self.origin_um[0]) / self.cell_um).astype(np.int64)
        row_cell = np.floor((y - self.origin_um[1]) / self.cell_um).astype(np.int64)
        cols = np.flatnonzero((col_cell >= 0) & (col_cell < self.shape[1]))
        rows = np.flatnonzero((row_cell >= 0) & (row_cell < self.shape[0]))
        if len(cols) == 0 or len(rows) == 0:
            return None
        rs, cs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        rc, cc = row_cell[rs], col_cell[cs]
        # cell indices are monotone (and, cells being ≥ a pixel, consecutive) along rows/columns
        r_start = np.flatnonzero(np.r_[True, rc[1:] != rc[:-1]])
        c_start = np.flatnonzero(np.r_[True, cc[1:] != cc[:-1]])
        r_cells, c_cells = rc[r_start], cc[c_start]
        if np.any(np.diff(r_cells) != 1) or np.any(np.diff(c_cells) != 1):
            raise ValueError("grid cells must be at least one tile pixel wide")
        own = owned[rs, cs]
        axon = np.where(mask[rs, cs], own, np.float32(0))
        signal = own * tracer[rs, cs].astype(np.float32, copy=False)
        at = (slice(int(r_cells[0]), int(r_cells[-1]) + 1), slice(int(c_cells[0]), int(c_cells[-1]) + 1))
        return (
            at,
            _block_sums(own, r_start, c_start),
            _block_sums(axon, r_start, c_start),
            _block_sums(signal, r_start, c_start),
        )


def _regular_run(starts: NDArray[np.intp], n: int) -> int | None:
    """Length shared by all segments but the end ones (which are no longer), else None.

    Segments start at ``starts`` and the last one ends at ``n``.
    """
    lengths = np.diff(np.r_[starts, n])
    if len(lengths) <= 2:
        return int(lengths.max())
    run = int(lengths[1])
    if np.all(lengths[1:-1] == run) and lengths[0] <= run and lengths[-1] <= run:
        return run
    return None


def _block_sums(a: F32, r_start: NDArray[np.intp], c_start: NDArray[np.intp]) -> F64:
    """Sums of ``a`` over the row segments × column segments starting at ``r_start``/``c_start``."""
    rr, rc = _regular_run(r_start, a.shape[0]), _regular_run(c_start, a.shape[1])
    if rr is None or rc is None:
        # general cell sizes: block sums by reduceat (several times slower)
        out = np.add.reduceat(np.add.reduceat(a.astype(np.float64), r_start, axis=0), c_start, axis=1)
        return np.asarray(out, dtype=np.float64)
    # cells of a whole number of pixels (the mosaic grid): pad the partial end cells, reshape, sum
    r_pad = rr - int(np.diff(np.r_[r_start, a.shape[0]])[0])
    c_pad = rc - int(np.diff(np.r_[c_start, a.shape[1]])[0])
    nr, nc = len(r_start), len(c_start)
    padded = np.zeros((nr * rr, nc * rc), dtype=np.float32)
    padded[r_pad : r_pad + a.shape[0], c_pad : c_pad + a.shape[1]] = a
    # within-cell sums in float32 (≤ a few hundred values), then float64; rows of a cell first
    # (contiguous vector adds), then the columns of the 1/rr as large result: several times
    # faster than reducing the short last axis of the whole tile first
    rows_summed = padded.reshape(nr, rr, nc * rc).sum(axis=1)
    return rows_summed.reshape(nr, nc, rc).sum(axis=2, dtype=np.float64)


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
