"""Placement of reduced camera tiles on stage-aligned grids (and the pixel-size affine, re-exported).

The pixel-size affine's convention (Micro-Manager's ``A = [[a, b], [d, e]]``,
µm per pixel step) and the pixel ↔ stage conversions live in
:mod:`acquisition.pixel_geometry`, shared with acquisition; they are
re-exported here for the analysis.

Reduced tiles on a stage grid
-----------------------------
The analysis never resamples full-resolution tiles. A tile is first reduced
in its own pixel frame to the means of ``f × f`` pixel blocks
(:class:`BlockLattice`, ``f`` = the analysis grid's cell size in pixels, 6
at 10x), then pulled onto the section's stage-aligned grid
(:class:`StageGrid`, cells of ``f · p`` µm, rows along +y, columns along +x)
by :class:`TileOnGrid`: each grid cell whose centre lies in the tile's
footprint takes the block values at that centre (mapped into the tile's
pixel frame through ``A⁻¹``). When a block is exactly one cell (identity,
90° rotations, mirrors) each cell takes its nearest block: two 1-D gathers,
sums conserved, nothing blurred. Otherwise (a camera rotated by 1–2°, cells
that are not a whole number of pixels) the blocks are interpolated
bilinearly (a 2-D gather of the four surrounding blocks). Block coordinates
are rounded to 2⁻¹² block (≈ 1 nm at 10x) so that a tile placed exactly on
the grid reproduces its blocks bit for bit and interpolation weights are
dyadic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from acquisition.pixel_geometry import (
    IDENTITY_AFFINE6,
    AxisPermutation,
    affine_from_attr,
    affine_from_core,
    affine_to_attr,
    axis_permutation,
    covered_extent_um,
    footprint_bbox_um,
    footprint_corners_um,
    inverse_affine,
    pixel_size_from_affine,
    pixel_to_stage_matrix,
    pixel_to_stage_um,
    px_offset_to_stage_um,
    stage_offset_to_px,
    stage_to_pixel,
    to_stage_orientation,
    validate_affine,
)

__all__ = [
    "IDENTITY_AFFINE6",
    "AxisPermutation",
    "BlockLattice",
    "StageGrid",
    "TileOnGrid",
    "affine_from_attr",
    "affine_from_core",
    "affine_to_attr",
    "axis_permutation",
    "covered_extent_um",
    "footprint_bbox_um",
    "footprint_corners_um",
    "pixel_size_from_affine",
    "pixel_to_stage_matrix",
    "pixel_to_stage_um",
    "px_offset_to_stage_um",
    "stage_offset_to_px",
    "stage_to_pixel",
    "to_stage_orientation",
    "validate_affine",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]

# block coordinates are rounded to this grid (dyadic interpolation weights, exact alignment)
_COORD_QUANTUM_INV = 4096.0


# ---------------------------------------------------------------- grids and lattices


@dataclasses.dataclass(frozen=True)
class StageGrid:
    """A stage-aligned grid of square cells: rows along +y, columns along +x.

    Attributes
    ----------
    origin_um : (x, y)
        Stage position of the top-left corner of cell (0, 0).
    cell_um : float
    shape : (rows, cols)
    """

    origin_um: tuple[float, float]
    cell_um: float
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cell_um) and self.cell_um > 0):
            raise ValueError(f"cell size must be positive, got {self.cell_um!r}")
        if min(self.shape) < 1:
            raise ValueError(f"grid shape must be positive, got {self.shape!r}")

    def centres_x(self, c0: int, c1: int) -> F64:
        """Stage x (µm) of the centres of columns ``c0..c1-1``."""
        return self.origin_um[0] + (np.arange(c0, c1, dtype=np.float64) + 0.5) * self.cell_um

    def centres_y(self, r0: int, r1: int) -> F64:
        """Stage y (µm) of the centres of rows ``r0..r1-1``."""
        return self.origin_um[1] + (np.arange(r0, r1, dtype=np.float64) + 0.5) * self.cell_um

    def cells_within(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        """Rows and columns of the cells whose centres lie in ``[x0, x1] × [y0, y1]`` (clipped)."""
        ox, oy = self.origin_um
        c = self.cell_um
        rows, cols = self.shape
        cc0 = max(0, math.ceil((x0 - ox) / c - 0.5))
        cc1 = min(cols, math.floor((x1 - ox) / c - 0.5) + 1)
        rr0 = max(0, math.ceil((y0 - oy) / c - 0.5))
        rr1 = min(rows, math.floor((y1 - oy) / c - 0.5) + 1)
        return slice(rr0, max(rr0, rr1)), slice(cc0, max(cc0, cc1))


@dataclasses.dataclass(frozen=True)
class BlockLattice:
    """The ``f × f`` pixel blocks a tile is reduced to, centred on the tile.

    Attributes
    ----------
    tile_shape : (H, W)
    factor : int
        Block size ``f`` (pixels).
    n_blocks : (nh, nw)
        ``(H // f, W // f)``, at least 1 each.
    first_px : (r0, c0)
        Pixel of the top-left corner of block (0, 0): the ``H − nh·f`` (``W − nw·f``)
        left-over pixels are split between both edges.
    """

    tile_shape: tuple[int, int]
    factor: int

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"block factor must be ≥ 1, got {self.factor}")
        h, w = self.tile_shape
        if h < self.factor or w < self.factor:
            raise ValueError(f"tile {self.tile_shape} is smaller than one {self.factor}-pixel block")

    @property
    def n_blocks(self) -> tuple[int, int]:
        """(nh, nw)."""
        h, w = self.tile_shape
        return h // self.factor, w // self.factor

    @property
    def first_px(self) -> tuple[int, int]:
        """(r0, c0)."""
        h, w = self.tile_shape
        nh, nw = self.n_blocks
        return (h - nh * self.factor) // 2, (w - nw * self.factor) // 2

    def block_sums(self, image: NDArray[Any], *, dtype: Any = np.float32) -> NDArray[Any]:
        """Sums of ``image`` ((H, W)) over the blocks, (nh, nw) of ``dtype``.

        One pass over the tile: the ``f`` rows of each block row are added as
        strided views (contiguous vector adds; for float input a reduction over
        the row axis), then the ``f`` columns of the ``f`` times smaller result.
        Integer input is summed in ``dtype`` (exact while sums fit in it).
        """
        f = self.factor
        nh, nw = self.n_blocks
        r0, c0 = self.first_px
        a = image[r0 : r0 + nh * f, c0 : c0 + nw * f]
        if a.dtype.kind == "f":
            rows = a.reshape(nh, f, nw * f).sum(axis=1, dtype=dtype)
        else:
            rows = a[0::f].astype(dtype)
            for k in range(1, f):
                rows += a[k::f]
        out = rows[:, 0::f].copy()
        for k in range(1, f):
            out += rows[:, k::f]
        return np.asarray(out)

    def block_means(self, image: NDArray[Any]) -> F32:
        """Means of ``image`` ((H, W)) over the blocks, (nh, nw) float32."""
        f2 = self.factor * self.factor
        # integer sums of ≤ 256 uint16 values are exact in float32 (< 2²⁴)
        exact32 = image.dtype.kind in "ub" or (image.dtype.kind == "u" and image.dtype.itemsize <= 2)
        if image.dtype.kind == "f" or (exact32 and f2 <= 256):
            sums = self.block_sums(image, dtype=np.float32)
        else:
            sums = self.block_sums(image, dtype=np.float64).astype(np.float32)
        sums *= np.float32(1.0 / f2)
        return np.asarray(sums, dtype=np.float32)

    def block_counts(self, mask: NDArray[np.bool_]) -> NDArray[np.uint16]:
        """Number of True pixels of ``mask`` ((H, W) bool) in each block, (nh, nw) uint16."""
        m = np.asarray(mask, dtype=bool).view(np.uint8)
        dtype = np.uint8 if self.factor * self.factor <= 255 else np.uint16
        return self.block_sums(m, dtype=dtype).astype(np.uint16)


# ---------------------------------------------------------------- a tile on a grid


def _lerp_index(coord: F64, n: int) -> tuple[NDArray[np.intp], F64]:
    """Lower index into an edge-padded axis (n + 2 long) and the weight of the next, per coordinate.

    Coordinates are in block units of the unpadded axis (block centres at 0..n−1);
    beyond the outermost centres the edge value holds (the padding repeats it).
    """
    c = np.clip(coord, -1.0, float(n))
    i0 = np.minimum(np.floor(c).astype(np.intp), n - 1)
    return i0 + 1, c - i0


def _take(a: NDArray[Any], idx: NDArray[np.intp], axis: int) -> NDArray[Any]:
    """``np.take`` along ``axis``, as a view when the indices are a run of step ±1."""
    if len(idx) > 1:
        step = int(idx[1] - idx[0])
        if step in (1, -1) and bool(np.all(np.diff(idx) == step)):
            start, stop = int(idx[0]), int(idx[-1]) + step
            sl = slice(start, None if stop < 0 else stop, step)
            return a[(slice(None),) * axis + (sl,)]
    return np.take(a, idx, axis=axis)


def _lerp_along(a: F32, idx: NDArray[np.intp], weight: F64, axis: int) -> F32:
    lo = _take(a, idx, axis)
    if not weight.any():  # nearest, or every coordinate on a lattice point
        return lo
    shape = [1] * a.ndim
    shape[axis] = len(weight)
    out = _take(a, idx + 1, axis) - lo
    out *= weight.astype(np.float32).reshape(shape)
    out += lo
    return out


class TileOnGrid:
    """Where one tile's block lattice lands on a stage grid, and how to pull its blocks there.

    Parameters
    ----------
    grid : StageGrid
    lattice : BlockLattice
    center_um : (x, y)
        Stage position of the tile centre (requested or registered).
    affine_um : (2, 2)
        Pixel-size affine of the tile.

    Attributes
    ----------
    rows, cols : slice
        The grid cells around the tile (their centres lie in the footprint's bounding box).
    x_um, y_um : arrays broadcastable to ``(n_rows, n_cols)``
        Stage coordinates of those cell centres.
    u_px, v_px : arrays broadcastable to ``(n_rows, n_cols)``
        The cell centres in the tile's pixel frame (offsets from the tile centre, columns and rows).
    covered : (n_rows, n_cols) bool
        Cells whose centre lies in the tile's footprint (half-open pixel extent).
    separable : bool
        Whether the affine is diagonal or anti-diagonal (cheap separable gathers).
    exact_pitch : bool
        Separable, and a block is exactly one cell: cells take their nearest block.
    """

    def __init__(
        self,
        grid: StageGrid,
        lattice: BlockLattice,
        *,
        center_um: Sequence[float],
        affine_um: ArrayLike,
    ) -> None:
        self.grid = grid
        self.lattice = lattice
        self.center_um = (float(center_um[0]), float(center_um[1]))
        self.affine_um = validate_affine(affine_um)
        self.inverse = inverse_affine(self.affine_um)
        h, w = lattice.tile_shape
        corners = footprint_corners_um(self.center_um, self.affine_um, lattice.tile_shape)
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        self.rows, self.cols = grid.cells_within(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        self.shape = (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start)
        self.x_um = grid.centres_x(self.cols.start, self.cols.stop)[None, :]
        self.y_um = grid.centres_y(self.rows.start, self.rows.stop)[:, None]
        self.u_px, self.v_px = self.pixel_frame(self.center_um)
        inv = self.inverse
        self.diagonal = inv[0, 1] == 0.0 and inv[1, 0] == 0.0
        self.anti_diagonal = inv[0, 0] == 0.0 and inv[1, 1] == 0.0
        self.separable = self.diagonal or self.anti_diagonal
        # one block per cell along each axis: a scaled signed permutation whose block is a cell
        step = np.abs(self.affine_um).max(axis=1) * lattice.factor
        self.exact_pitch = self.separable and bool(np.allclose(step, grid.cell_um, rtol=1e-9, atol=0.0))
        self.covered = self.in_footprint(self.center_um)
        # block coordinates (fractional; block centres at integers), rounded to a dyadic grid
        f = lattice.factor
        r0, c0 = lattice.first_px
        self._bi = np.round(((self.v_px + h / 2 - r0) / f - 0.5) * _COORD_QUANTUM_INV) / _COORD_QUANTUM_INV
        self._bj = np.round(((self.u_px + w / 2 - c0) / f - 0.5) * _COORD_QUANTUM_INV) / _COORD_QUANTUM_INV

    @property
    def empty(self) -> bool:
        """No grid cell lies in the tile's footprint."""
        return self.shape[0] == 0 or self.shape[1] == 0 or not self.covered.any()

    def pixel_frame(
        self, center_um: Sequence[float], *, rows: slice | None = None, cols: slice | None = None
    ) -> tuple[F64, F64]:
        """The cell centres in the pixel frame of a tile centred at ``center_um`` (same affine and shape).

        Parameters
        ----------
        center_um : (x, y)
        rows, cols : slice, optional
            A sub-rectangle of this placement's cells (relative indices).

        Returns
        -------
        (u, v)
            Broadcastable arrays (1-D along one axis when the affine is separable).
        """
        inv = self.inverse
        x = self.x_um if cols is None else self.x_um[:, cols]
        y = self.y_um if rows is None else self.y_um[rows, :]
        dx = x - float(center_um[0])
        dy = y - float(center_um[1])
        if inv[0, 1] == 0.0:
            u = inv[0, 0] * dx
        elif inv[0, 0] == 0.0:
            u = inv[0, 1] * dy
        else:
            u = inv[0, 0] * dx + inv[0, 1] * dy
        if inv[1, 0] == 0.0:
            v = inv[1, 1] * dy
        elif inv[1, 1] == 0.0:
            v = inv[1, 0] * dx
        else:
            v = inv[1, 0] * dx + inv[1, 1] * dy
        return u, v

    def in_footprint(
        self, center_um: Sequence[float], *, rows: slice | None = None, cols: slice | None = None
    ) -> NDArray[np.bool_]:
        """Bool over the cells (or a sub-rectangle): centres in the footprint of a tile at ``center_um``."""
        h, w = self.lattice.tile_shape
        u, v = self.pixel_frame(center_um, rows=rows, cols=cols)
        n_rows = self.shape[0] if rows is None else len(range(*rows.indices(self.shape[0])))
        n_cols = self.shape[1] if cols is None else len(range(*cols.indices(self.shape[1])))
        inside = (u >= -w / 2) & (u < w / 2) & (v >= -h / 2) & (v < h / 2)
        return np.broadcast_to(inside, (n_rows, n_cols))

    def edge_distance_px(self) -> F64:
        """(n_rows, n_cols) distance (tile px) of each cell centre to the nearest tile edge (≥ 0 inside)."""
        h, w = self.lattice.tile_shape
        du = np.minimum(self.u_px + w / 2, w / 2 - self.u_px)
        dv = np.minimum(self.v_px + h / 2, h / 2 - self.v_px)
        return np.broadcast_to(np.minimum(du, dv), self.shape)

    def feather_weights(self, *, quantum: float) -> F64:
        """Blending weight of each cell: distance to the nearest tile edge in blocks, on a dyadic grid.

        Rounded to ``quantum`` (a power of two), at least one quantum inside the
        footprint, 0 outside it: sums of such weights are exact, so a blend does
        not depend on the order tiles are added in.

        Returns
        -------
        (n_rows, n_cols) float64 (a fresh array)
        """
        h, w = self.lattice.tile_shape
        inv = 1.0 / (quantum * self.lattice.factor)

        def per_axis(c: F64, n: int) -> F64:
            d = np.round(np.minimum(c + n / 2, n / 2 - c) * inv)
            np.maximum(d, 1.0, out=d)
            d[(c < -n / 2) | (c >= n / 2)] = 0.0  # outside the footprint along this axis
            return d

        # u, v are 1-D along one axis each for a separable affine: one 2-D operation only
        out = np.minimum(
            per_axis(np.asarray(self.u_px, dtype=np.float64), w),
            per_axis(np.asarray(self.v_px, dtype=np.float64), h),
        )
        out = np.array(np.broadcast_to(out, self.shape), dtype=np.float64)
        out *= quantum
        return out

    def resample(self, blocks: NDArray[Any]) -> F32:
        """Block values at the cell centres: the nearest block, or bilinear interpolation.

        When the lattice maps onto the grid block for cell (:attr:`exact_pitch`:
        the identity, 90° rotations and mirrors, with cells of ``f`` pixels) each
        cell takes its nearest block: in the interior every block lands in exactly
        one cell, so sums are conserved and nothing is blurred (a block moves by at
        most half a cell). Otherwise (a slightly rotated camera, cells that are not
        a whole number of pixels) values are interpolated bilinearly.

        Parameters
        ----------
        blocks : (k, nh, nw) array
            Values on the tile's block lattice (e.g. channel means).

        Returns
        -------
        (k, n_rows, n_cols) float32
            Values at the cell centres; cells beyond the outermost block centres
            take the edge blocks' values (meaningful only where :attr:`covered`).
        """
        b = np.asarray(blocks, dtype=np.float32)
        nh, nw = self.lattice.n_blocks
        if b.ndim != 3 or b.shape[1:] != (nh, nw):
            raise ValueError(f"blocks must be (k, {nh}, {nw}), got {b.shape}")
        if self.separable:
            return self._resample_separable(b)
        return self._resample_general(b)

    def _resample_separable(self, b: F32) -> F32:
        nh, nw = self.lattice.n_blocks
        bi, bj = self._bi.reshape(-1), self._bj.reshape(-1)
        if self.exact_pitch:
            # nearest block (ties to the later one); padded indices, so runs stay slices
            ri, rw = np.clip(np.floor(bi + 0.5), -1, nh).astype(np.intp) + 1, np.zeros(0)
            ci, cw = np.clip(np.floor(bj + 0.5), -1, nw).astype(np.intp) + 1, np.zeros(0)
        else:
            ri, rw = _lerp_index(bi, nh)
            ci, cw = _lerp_index(bj, nw)
        padded = np.pad(b, ((0, 0), (1, 1), (1, 1)), mode="edge")
        if self.anti_diagonal:
            # block rows vary along grid columns and block columns along grid rows: transpose once
            padded = np.ascontiguousarray(padded.swapaxes(1, 2))
            ri, rw, ci, cw = ci, cw, ri, rw
        rows = _lerp_along(padded, ri, rw, 1)
        return np.ascontiguousarray(_lerp_along(rows, ci, cw, 2), dtype=np.float32)

    def _resample_general(self, b: F32) -> F32:
        nh, nw = self.lattice.n_blocks
        ri, rw = _lerp_index(np.broadcast_to(self._bi, self.shape), nh)
        ci, cw = _lerp_index(np.broadcast_to(self._bj, self.shape), nw)
        k = b.shape[0]
        padded = np.pad(b, ((0, 0), (1, 1), (1, 1)), mode="edge").reshape(k, -1)
        i00 = (ri * (nw + 2) + ci).reshape(-1)
        i10 = i00 + (nw + 2)
        cw32 = cw.reshape(-1).astype(np.float32)
        rw32 = rw.reshape(-1).astype(np.float32)
        out = np.empty((k, i00.size), dtype=np.float32)
        for ch in range(k):
            flat = padded[ch]
            top = flat.take(i00)
            top += (flat.take(i00 + 1) - top) * cw32
            bottom = flat.take(i10)
            bottom += (flat.take(i10 + 1) - bottom) * cw32
            top += (bottom - top) * rw32
            out[ch] = top
        return out.reshape(k, *self.shape)
