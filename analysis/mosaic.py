"""Section mosaics on a stage-aligned grid, and tile positions refined by registration.

Coordinates
-----------
Stage coordinates are in µm. A tile of shape ``(H, W)`` centred at stage
``(xc, yc)`` has its pixel ``(r, c)`` at ``(xc, yc) + A·(u, v)`` with ``u = c
+ 0.5 − W/2``, ``v = r + 0.5 − H/2`` and ``A`` the 2 × 2 pixel-size affine
(:mod:`analysis.geometry`; ``p·I`` for a camera aligned with the stage:
columns along +x, rows along +y). A mosaic pixel ``(R, C)`` is centred at
``origin_um + ((C + 0.5) · P, (R + 0.5) · P)`` with ``P`` the mosaic pixel
size: the mosaic is stage-aligned whatever the camera's orientation.

Placement (:class:`SectionMosaic`)
----------------------------------
Each tile is reduced once, in its own pixel frame, to the means of ``f × f``
pixel blocks (``f = round(mosaic_pixel_um / p)``, 6 × 0.65 µm = 3.9 µm at
10x; :class:`~analysis.geometry.BlockLattice`), then pulled onto the mosaic
grid (:class:`~analysis.geometry.TileOnGrid`): every mosaic pixel whose
centre lies in the tile's footprint takes the block at that centre. For the
identity, 90° rotations and mirrors a block is exactly one mosaic pixel, and
each mosaic pixel takes its nearest block (two 1-D gathers; a block moves by
at most half a mosaic pixel, ≈ 2 µm, and nothing is blurred); for a slightly
rotated camera the blocks are interpolated bilinearly (a 2-D gather).
Full-resolution pixels are never resampled. Overlaps are blended by
feathering: each contribution is weighted by the distance of the mosaic
pixel's centre to the nearest tile edge (in mosaic pixels, rounded to 2⁻⁸,
at least 2⁻⁸), and the mosaic keeps the weighted sum and the sum of
weights; each weighted contribution is rounded to a dyadic grid (2⁻¹⁶) so
the float64 sums are exact and the blend does not depend on tile order, to
the last bit. A tile placed exactly on the grid reproduces its block means.

Registration of tiles against their neighbours: :mod:`analysis.registration`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analysis.geometry import (
    BlockLattice,
    StageGrid,
    TileOnGrid,
    pixel_size_from_affine,
    validate_affine,
)

__all__ = [
    "MosaicContribution",
    "SectionMosaic",
    "affine_for",
    "mosaic_reduction_factor",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]


def mosaic_reduction_factor(tile_pixel_size_um: float, target_pixel_um: float = 4.0) -> int:
    """Integer block size giving a mosaic pixel closest to ``target_pixel_um`` (≥ 1).

    Parameters
    ----------
    tile_pixel_size_um : float
        Full-resolution pixel size (µm), e.g. 0.65 at 10x.
    target_pixel_um : float
        Wanted mosaic pixel size (µm).

    Returns
    -------
    int
        ``max(1, round(target / tile_pixel))``: 6 at 0.65 µm (3.9 µm mosaic pixels).
    """
    if not (tile_pixel_size_um > 0 and target_pixel_um > 0):
        raise ValueError("pixel sizes must be positive")
    return max(1, round(target_pixel_um / tile_pixel_size_um))


_MOSAIC_QUANTUM = 2.0**-16
_MOSAIC_QUANTUM_INV = 2.0**16
_FEATHER_QUANTUM_INV = 2.0**8


@dataclasses.dataclass(frozen=True, eq=False)
class MosaicContribution:
    """What one tile adds to a :class:`SectionMosaic` (already rounded: adding is order-independent).

    Attributes
    ----------
    at : (rows, cols) slices of the mosaic
    sums : (C + 1, n_rows, n_cols) float64
        Feather weight × value per channel, then the feather weight (0 outside the
        tile's footprint); also as ``weighted`` and ``weight``.
    """

    at: tuple[slice, slice]
    sums: F64
    """(C + 1, n_rows, n_cols): weighted values per channel, then the weight."""

    @property
    def weighted(self) -> F64:
        """(C, n_rows, n_cols) feather weight × value."""
        return self.sums[:-1]

    @property
    def weight(self) -> F64:
        """(n_rows, n_cols) feather weight."""
        return self.sums[-1]


class SectionMosaic:
    """Blended, reduced-scale, stage-aligned mosaic of one section, accumulated tile by tile.

    Parameters
    ----------
    bbox_um : (x0, y0, x1, y1)
        Stage region (µm) the mosaic covers; tiles are clipped to it.
    n_channels : int
        Channels per tile.
    tile_pixel_size_um : float
        Full-resolution pixel size of the tiles (µm).
    mosaic_pixel_um : float
        Target mosaic pixel size (µm); the actual one is
        ``mosaic_reduction_factor(tile_pixel_size_um, mosaic_pixel_um) · tile_pixel_size_um``.
    affine_um : (2, 2) array, optional
        Pixel-size affine of the tiles (default ``tile_pixel_size_um · I``); its
        pixel size must equal ``tile_pixel_size_um``.

    Attributes
    ----------
    origin_um : (2,) float64
        Stage (x, y) of the mosaic's top-left corner (the corner, not a pixel centre).
    pixel_size_um : float
        Mosaic pixel size (µm).
    factor : int
        Reduction factor (full-resolution pixels per mosaic pixel, per axis).
    shape : (rows, cols)
    grid : StageGrid
    """

    def __init__(
        self,
        bbox_um: tuple[float, float, float, float],
        *,
        n_channels: int,
        tile_pixel_size_um: float,
        mosaic_pixel_um: float = 4.0,
        affine_um: ArrayLike | None = None,
    ) -> None:
        x0, y0, x1, y1 = (float(v) for v in bbox_um)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"empty bounding box {bbox_um}")
        if n_channels < 1:
            raise ValueError("n_channels must be ≥ 1")
        self.tile_pixel_size_um = float(tile_pixel_size_um)
        self.affine_um = affine_for(affine_um, self.tile_pixel_size_um)
        self.factor = mosaic_reduction_factor(self.tile_pixel_size_um, mosaic_pixel_um)
        self.pixel_size_um = self.factor * self.tile_pixel_size_um
        self.origin_um = np.array([x0, y0], dtype=np.float64)
        self.shape = (
            int(np.ceil((y1 - y0) / self.pixel_size_um)),
            int(np.ceil((x1 - x0) / self.pixel_size_um)),
        )
        self.grid = StageGrid((x0, y0), self.pixel_size_um, self.shape)
        self.n_channels = int(n_channels)
        # weighted sums of the channels and the sum of weights, in one array (one add per tile)
        # filled, not np.zeros: the pages are touched now rather than by the tiles (page faults)
        self._sums = np.full((self.n_channels + 1, *self.shape), 0.0, dtype=np.float64)
        self._sum = self._sums[: self.n_channels]
        self._weight = self._sums[self.n_channels]
        self._lattices: dict[tuple[int, int], BlockLattice] = {}

    def lattice(self, tile_shape: tuple[int, int]) -> BlockLattice:
        """The block lattice tiles of ``tile_shape`` are reduced to (blocks of ``factor`` pixels)."""
        key = (int(tile_shape[0]), int(tile_shape[1]))
        if key not in self._lattices:
            self._lattices[key] = BlockLattice(key, self.factor)
        return self._lattices[key]

    def placement(self, tile_shape: tuple[int, int], center_um: Sequence[float]) -> TileOnGrid:
        """Where a tile of ``tile_shape`` centred at ``center_um`` lands on the mosaic grid."""
        return TileOnGrid(self.grid, self.lattice(tile_shape), center_um=center_um, affine_um=self.affine_um)

    def contribution(self, on: TileOnGrid, values: NDArray[Any]) -> MosaicContribution | None:
        """What a placed tile adds, from its block values resampled at the cell centres.

        Parameters
        ----------
        on : TileOnGrid
            From :meth:`placement`.
        values : (C, n_rows, n_cols) array
            ``on.resample(block_means)``.

        Returns
        -------
        MosaicContribution, or None if the tile lies outside the mosaic.
        """
        if on.empty:
            return None
        v = np.asarray(values)
        if v.shape != (self.n_channels, *on.shape):
            raise ValueError(
                f"values must be ({self.n_channels}, {on.shape[0]}, {on.shape[1]}), got {v.shape}"
            )
        sums = np.empty((self.n_channels + 1, *on.shape), dtype=np.float64)
        weight = sums[-1]
        weight[...] = on.feather_weights(quantum=1.0 / _FEATHER_QUANTUM_INV)
        # rounded to a dyadic grid, so the float64 sums are exact and the blend does not
        # depend on the order tiles arrive in (live and offline mosaics are identical)
        part = sums[:-1]
        np.multiply(v, weight * _MOSAIC_QUANTUM_INV, out=part)
        np.round(part, out=part)
        part *= _MOSAIC_QUANTUM
        return MosaicContribution((on.rows, on.cols), sums)

    def add(self, contribution: MosaicContribution | None) -> None:
        """Add a contribution from :meth:`contribution`."""
        if contribution is None:
            return
        r, c = contribution.at
        self._sums[:, r, c] += contribution.sums

    def add_reduced(
        self, block_means: ArrayLike, *, tile_shape: tuple[int, int], center_um: Sequence[float]
    ) -> None:
        """Blend in a tile already reduced to its block means ((C, nh, nw), see :meth:`lattice`)."""
        on = self.placement(tile_shape, center_um)
        if not on.empty:
            self.add(self.contribution(on, on.resample(np.asarray(block_means, dtype=np.float32))))

    def add_tile(self, images: ArrayLike, *, center_um: tuple[float, float], pixel_size_um: float) -> None:
        """Block-reduce one tile and blend it in at its stage position.

        Parameters
        ----------
        images : (C, H, W) or (H, W) array
            The tile, all channels, full resolution (e.g. corrected float32).
        center_um : (x, y)
            Stage position of the tile centre (µm): requested or registered.
        pixel_size_um : float
            Full-resolution pixel size (µm); must equal the mosaic's ``tile_pixel_size_um``.
        """
        imgs = np.asarray(images)
        if imgs.ndim == 2:
            imgs = imgs[None]
        if imgs.ndim != 3 or imgs.shape[0] != self.n_channels:
            raise ValueError(f"images must be ({self.n_channels}, H, W), got {imgs.shape}")
        if not np.isclose(pixel_size_um, self.tile_pixel_size_um, rtol=1e-6):
            raise ValueError(
                f"pixel size {pixel_size_um} µm differs from the mosaic's {self.tile_pixel_size_um} µm"
            )
        shape = (int(imgs.shape[1]), int(imgs.shape[2]))
        if min(shape) < self.factor:
            raise ValueError(f"tile {imgs.shape} smaller than one mosaic pixel ({self.factor} px)")
        lattice = self.lattice(shape)
        means = np.stack([lattice.block_means(im) for im in imgs])
        self.add_reduced(means, tile_shape=shape, center_um=center_um)

    @property
    def coverage(self) -> NDArray[np.bool_]:
        """(rows, cols) bool: mosaic pixels covered by at least one tile."""
        return self._weight > 0

    def image(self, channel: int = 0) -> NDArray[np.float32]:
        """Blended mosaic of one channel, (rows, cols) float32, NaN where nothing was imaged."""
        out = np.full(self.shape, np.nan, dtype=np.float32)
        cov = self.coverage
        out[cov] = self._sum[channel][cov] / self._weight[cov]
        return out


def affine_for(affine_um: ArrayLike | None, pixel_size_um: float) -> F64:
    """The 2 × 2 pixel affine (µm per pixel step): ``affine_um`` checked against the pixel size, or p·I."""
    if affine_um is None:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel size must be positive, got {pixel_size_um!r}")
        return pixel_size_um * np.eye(2)
    a = validate_affine(affine_um)
    p = pixel_size_from_affine(a)
    if not math.isclose(p, pixel_size_um, rel_tol=1e-6):
        raise ValueError(
            f"the pixel affine's pixel size {p} µm differs from the tile pixel size {pixel_size_um} µm"
        )
    return a
