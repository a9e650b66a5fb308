"""Block machinery of the axon segmentation (:mod:`analysis.tile`).

Geometry, block sums and maxima, the background lattice, noise σ, active
blocks and their haloed windows, the per-block candidate region. Internal to
:func:`analysis.tile.segment_axons` (see its module docstring, "Speed").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view
from numpy.typing import NDArray

if TYPE_CHECKING:
    from analysis.tile import AxonSegmentationSettings

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

BLOCK_SUBBLOCKS = 4
"""Processing blocks are this many background sub-blocks on a side."""
NOISE_SAMPLES = 1 << 16  # adjacent-pixel pairs sampled for the noise σ


@dataclass(frozen=True)
class _Geometry:
    """Pixel sizes of the method for one tile (see :meth:`for_tile`)."""

    sub_px: int  # background sub-block
    block_px: int  # processing block (a multiple of sub_px)
    plateau_px: int  # dilation radius of the plateau estimate
    halo_px: int  # gathered around each block
    min_pixels: int  # smallest kept component
    height: int  # padded to a multiple of block_px
    width: int

    @classmethod
    def for_tile(cls, shape: tuple[int, ...], pixel_size_um: float, s: AxonSegmentationSettings) -> _Geometry:
        sub = max(1, round(s.background_scale_um / (3.0 * pixel_size_um)))
        block = BLOCK_SUBBLOCKS * sub
        plateau = max(1, round(s.plateau_radius_um / pixel_size_um))
        halo = max(3, 1 + plateau)  # erosion (1) + plateau dilation; 3 for the peak estimate
        min_pixels = max(1, math.ceil(s.min_area_um2 / pixel_size_um**2 - 1e-9))
        h, w = int(shape[0]), int(shape[1])
        return cls(sub, block, plateau, halo, min_pixels, -(-h // block) * block, -(-w // block) * block)


def _counts(n: int, f: int) -> NDArray[np.int64]:
    c = np.full(-(-n // f), f, dtype=np.int64)
    c[-1] = n - f * (len(c) - 1)
    return c


def _block_sum(a: F32, f: int) -> F32:
    """Sum over ``f × f`` blocks of an array whose shape is a multiple of ``f``."""
    h, w = a.shape
    # rows first: adds whole contiguous rows, the fast direction; then the f columns of each
    # block as f strided slices (a reduction over a short last axis is twice as slow)
    rows = a.reshape(h // f, f, w).sum(axis=1, dtype=np.float32).reshape(h // f, w // f, f)
    out = rows[:, :, 0].copy()
    for k in range(1, f):
        out += rows[:, :, k]
    return out


def _block_max(a: F32, f: int) -> F32:
    """Maximum over ``f × f`` blocks of a float32 array whose shape is a multiple of ``f``.

    Compared as the float's bits read as int32 (twice as fast as a float maximum): the same
    order for values ≥ 0, and any block that holds one gets the right maximum; a block of
    negative values only (the bits' order is reversed there) is recomputed as floats.
    """
    h, w = a.shape
    bits = a.view(np.int32)
    rows = np.maximum.reduce(bits.reshape(h // f, f, w), axis=1)
    out = np.maximum.reduce(rows.reshape(h // f, w // f, f), axis=2).view(np.float32)
    negative = np.argwhere(out < 0)
    for i, j in negative:
        out[i, j] = a[i * f : (i + 1) * f, j * f : (j + 1) * f].max()
    return out


def _background_lattice(work: F32, sub: int) -> F32:
    """Robust background at sub-block centres: block means, then a 3×3 grey opening."""
    means = _block_sum(work, sub) * np.float32(1.0 / (sub * sub))
    return _filter3(_filter3(means, np.minimum), np.maximum)


def _filter3(a: F32, op: np.ufunc) -> F32:
    """3×3 min or max filter, edge-replicated (``scipy.ndimage`` mode ``"nearest"``)."""
    p = np.pad(a, 1, mode="edge")
    rows = op(op(p[:-2], p[1:-1]), p[2:])
    return op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _noise_sigma(image: F32, lattice: F32, sub: int, *, floor_adu: float) -> float:
    """Robust σ from adjacent-pixel differences where the background is in its upper half."""
    h, w = image.shape
    if w < 2:
        return floor_adu
    n_pairs = w // 2
    rows = np.linspace(0, h - 1, num=min(h, max(1, NOISE_SAMPLES // n_pairs))).round().astype(np.intp)
    diff = image[rows, 0 : 2 * n_pairs : 2] - image[rows, 1 : 2 * n_pairs : 2]
    bg = lattice[rows // sub][:, (2 * np.arange(n_pairs)) // sub]
    diff = diff[bg >= np.median(lattice)]
    if diff.size == 0:
        return floor_adu
    mad = _binned_median(np.abs(np.rint(diff)).astype(np.int64))
    return max(floor_adu, 1.4826 * mad / math.sqrt(2.0))


def _binned_median(values: NDArray[np.int64]) -> float:
    """Median of non-negative integers, interpolated inside its unit bin.

    Integer ``k > 0`` stands for ``[k − 0.5, k + 0.5)``, ``0`` for
    ``[0, 0.5)``; the median is placed by linear interpolation of the
    cumulative count within its bin, so it varies smoothly with the data.
    """
    counts = np.bincount(values)
    half = 0.5 * values.size
    cum = np.cumsum(counts)
    k = int(np.searchsorted(cum, half))
    below = float(cum[k - 1]) if k > 0 else 0.0
    lower, width = (k - 0.5, 1.0) if k > 0 else (0.0, 0.5)
    return lower + (half - below) / float(counts[k]) * width


def _active_blocks(work: F32, lattice: F32, geo: _Geometry, threshold: float) -> NDArray[np.intp]:
    """(n, 2) indices of the processing blocks holding a pixel above background + threshold.

    A block's background never goes below the minimum of the lattice values
    its bilinear interpolation uses (its own sub-blocks and one ring around).
    """
    q = BLOCK_SUBBLOCKS
    padded = np.pad(lattice, 1, mode="edge")
    low = sliding_window_view(padded, q + 2, axis=0)[::q].min(axis=-1)
    low = sliding_window_view(low, q + 2, axis=1)[:, ::q].min(axis=-1)
    peak = _block_max(work, geo.block_px)
    return np.argwhere(peak > low + np.float32(threshold))


def _gather(work: F32, blocks: NDArray[np.intp], block: int, halo: int) -> F32:
    """Copy each block with a ``halo`` of pixels around it, edge-replicated at the frame border."""
    h, w = work.shape
    size = block + 2 * halo
    out = np.empty((len(blocks), size, size), dtype=np.float32)
    r0 = blocks[:, 0] * block - halo
    c0 = blocks[:, 1] * block - halo
    inside = (r0 >= 0) & (c0 >= 0) & (r0 + size <= h) & (c0 + size <= w)
    if block < halo:  # tiny blocks (very coarse pixels): no shared window view
        inside[:] = False
    if inside.any():
        out[inside] = _interior_windows(work, blocks[inside], block, halo)
    border = np.flatnonzero(~inside)
    if len(border):
        steps = np.arange(size)
        rows = np.clip(r0[border, None] + steps, 0, h - 1)
        cols = np.clip(c0[border, None] + steps, 0, w - 1)
        out[border] = work[rows[:, :, None], cols[:, None, :]]
    return out


def _interior_windows(work: F32, blocks: NDArray[np.intp], block: int, halo: int) -> F32:
    """Haloed windows of blocks whose halo lies inside the frame, from one strided view."""
    h, w = work.shape
    size = block + 2 * halo
    # windows starting at pixel (i·block − halo, j·block − halo) for i, j ≥ 1
    start = block - halo
    base = work[start:, start:]
    n_r = (h - start - size) // block + 1
    n_c = (w - start - size) // block + 1
    view = as_strided(
        base,
        shape=(n_r, n_c, size, size),
        strides=(block * work.strides[0], block * work.strides[1], *work.strides),
        writeable=False,
    )
    return view[blocks[:, 0] - 1, blocks[:, 1] - 1]


def _interp_matrix(n_out: int, n_lattice: int, sub: int) -> F32:
    """Bilinear weights (n_out, n_lattice): lattice point ``j`` sits at pixel ``(j + 0.5)·sub − 0.5``.

    Beyond the outermost points the value is constant.
    """
    u = (np.arange(n_out, dtype=np.float64) + 0.5) / sub - 0.5
    u = np.clip(u, 0.0, n_lattice - 1.0)
    j0 = np.minimum(np.floor(u).astype(np.int64), max(n_lattice - 2, 0))
    t = u - j0
    m = np.zeros((n_out, n_lattice), dtype=np.float64)
    rows = np.arange(n_out)
    m[rows, j0] = 1.0 - t
    if n_lattice > 1:
        m[rows, j0 + 1] += t
    return m.astype(np.float32)


@dataclass(frozen=True)
class _BlockBackground:
    """Bilinear background of gathered (haloed) blocks, see :meth:`__call__`.

    Every block sees the same weights relative to its own sub-blocks (block
    size is a multiple of the sub-block size), so one small weight matrix per
    axis serves all blocks; the lattice is edge-padded so windows near the
    frame border exist, which reproduces the constant extrapolation there.
    """

    windows: F32  # (n_block_rows, n_block_cols, k, k) view of the padded lattice
    weights: F32  # (size, k): pixel offsets −halo .. block+halo−1 against k lattice points

    @classmethod
    def for_lattice(cls, lattice: F32, geo: _Geometry) -> _BlockBackground:
        q, sub, halo = BLOCK_SUBBLOCKS, geo.sub_px, geo.halo_px
        size = geo.block_px + 2 * halo
        lo = math.floor((0.5 - halo) / sub - 0.5)  # first lattice offset used, ≤ −1
        hi = math.floor((geo.block_px + halo - 0.5) / sub - 0.5) + 1
        k = hi - lo + 1
        padded = np.pad(lattice, ((-lo, max(0, hi - (q - 1))),) * 2, mode="edge")
        u = (np.arange(-halo, geo.block_px + halo, dtype=np.float64) + 0.5) / sub - 0.5
        j0 = np.floor(u).astype(np.int64)
        t = u - j0
        weights = np.zeros((size, k), dtype=np.float64)
        weights[np.arange(size), j0 - lo] = 1.0 - t
        weights[np.arange(size), j0 - lo + 1] += t
        return cls(sliding_window_view(padded, (k, k))[::q, ::q], weights.astype(np.float32))

    def __call__(self, blocks: NDArray[np.intp]) -> F32:
        """Background of the given blocks with their halo, (n, size, size) float32."""
        n = len(blocks)
        size, k = self.weights.shape
        rows = np.matmul(self.weights, self.windows[blocks[:, 0], blocks[:, 1]])  # (n, size, k)
        return np.matmul(rows.reshape(n * size, k), self.weights.T).reshape(n, size, size)


def _run_max(a: F32, window: int, step: int) -> F32:
    """``out[i] = max(a[i + k·step] for k < window)`` (by doubling); ``len(a) − (window − 1)·step`` long."""
    cur, span = a, 1
    while 2 * span <= window:
        cur = np.maximum(cur[: -span * step], cur[span * step :])
        span *= 2
    if span < window:
        d = (window - span) * step
        cur = np.maximum(cur[:-d], cur[d:])
    return cur


def _segment_blocks(
    signal: F32,
    blocks: NDArray[np.intp],
    threshold: float,
    base: float,
    geo: _Geometry,
    frame: tuple[int, int],
    *,
    smooth: bool,
    out: tuple[Bool, F32, F32],
) -> None:
    """Candidate region, local plateau and signal of each block's core.

    The local plateau ``P`` is the maximum within ``plateau_px`` of the
    signal smoothed by a 3 × 3 binomial kernel (``smooth``), or of its
    5-pixel cross erosion (the fixed-fraction rule), at least ``T``.

    ``signal`` is (n, S, S), ``S = B + 2·halo``, background-subtracted,
    C-contiguous. The stencils run on the flat array with offsets (``±1`` a
    column, ``±S`` a row): one long vectorised operation instead of many
    short rows. Windows that cross a block's edge give garbage, but only in
    the halo, which is never read back. Core pixels outside the frame
    (``frame`` = (H, W)) are cleared.

    ``out`` receives, each (n, B, B): the candidate ``s > max(T, base · P)``,
    ``P``, and the core's signal ``s``.
    """
    n, size, _ = signal.shape
    halo, b = geo.halo_px, geo.block_px
    flat = signal.reshape(-1)
    total = flat.size
    row = size
    core = (slice(None), slice(halo, halo + b), slice(halo, halo + b))
    level = np.float32(threshold)
    core_signal = signal[core]
    if smooth:
        # binomial [1 2 1]² / 16; eroded[i] is pixel i + row + 1
        across = flat[: total - 2] + flat[2:]
        across += 2.0 * flat[1 : total - 1]
        eroded = across[: total - 2 - 2 * row] + across[2 * row :]
        eroded += 2.0 * across[row : total - 2 - row]
        eroded *= np.float32(1.0 / 16.0)
    else:
        # 5-pixel cross erosion; eroded[i] is pixel i + row + 1
        eroded = np.minimum(flat[row + 1 : total - row - 1], flat[row : total - row - 2])
        np.minimum(eroded, flat[row + 2 : total - row], out=eroded)
        np.minimum(eroded, flat[1 : total - 2 * row - 1], out=eroded)
        np.minimum(eroded, flat[2 * row + 1 : total - 1], out=eroded)
    w = 2 * geo.plateau_px + 1
    plateau = _run_max(_run_max(eroded, w, 1), w, row)
    start = (geo.plateau_px + 1) * (row + 1)  # plateau[i] is centred on pixel i + start
    candidate, core_plateau, core_out = out
    # the cores of the plateau, read in place: core pixel (k, i, j) is plateau[k·S² + i·S + j − start]
    first = halo * (row + 1) - start
    last = first + (n - 1) * size * size + (b - 1) * (row + 1)
    if first >= 0 and last < plateau.size:
        item = plateau.itemsize
        cores = as_strided(
            plateau[first:], shape=(n, b, b), strides=(size * size * item, size * item, item), writeable=False
        )
    else:  # a geometry whose halo does not cover the stencils' reach: place the plateau in a frame
        full = np.empty(total, dtype=np.float32)
        full[start : start + plateau.size] = plateau
        cores = full.reshape(n, size, size)[core]
    np.maximum(cores, level, out=core_plateau)
    core_out[...] = core_signal
    if base > 0.0:
        cut = core_plateau * np.float32(base)
        np.maximum(cut, level, out=cut)
        np.greater(core_signal, cut, out=candidate)
    else:
        np.greater(core_signal, level, out=candidate)
    _clear_outside(candidate, blocks, b, frame)


def _clear_outside(mask: Bool, blocks: NDArray[np.intp], block: int, frame: tuple[int, int]) -> None:
    """Clear the pixels of (n, B, B) block masks that lie outside the frame."""
    r0 = blocks[:, 0] * block
    c0 = blocks[:, 1] * block
    for k in np.flatnonzero((r0 + block > frame[0]) | (c0 + block > frame[1])):
        mask[k, max(0, frame[0] - r0[k]) :] = False
        mask[k, :, max(0, frame[1] - c0[k]) :] = False


def _block_view(full: Bool, block: int) -> Bool:
    h, w = full.shape
    return as_strided(
        full,
        shape=(h // block, w // block, block, block),
        strides=(block * full.strides[0], block * full.strides[1], *full.strides),
    )


def _scatter(full: Bool, core_mask: Bool, blocks: NDArray[np.intp], block: int) -> None:
    _block_view(full, block)[blocks[:, 0], blocks[:, 1]] = core_mask
