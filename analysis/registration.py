"""Tile positions refined by registration against their overlapping neighbours.

Coordinates as in :mod:`analysis.mosaic` (stage µm; a tile's pixel ``(r, c)`` at
``(xc, yc) + A·(u, v)``).

Stage positions are only as good as the stage (the demo stage's
``PositioningError_um`` is a few µm, several pixels). For every pair of
tiles whose planned footprints overlap along an edge, the overlap is cut
from both tiles in their common pixel frame (the planned stage offset
mapped through ``A⁻¹``: with a rotated camera an x neighbour is a row or a
slanted neighbour in the pixels), grown by a search margin
(:func:`overlap_regions`), and the residual offset is measured in two steps
(:func:`measure_strip_shift`):

1. **Coarse**, on the strips reduced by ``g`` (up to 8) per axis: the
   normalised cross-correlation (NCC) over the overlapping part at every
   integer offset within the search radius, from one FFT correlation and
   summed-area tables (so the strips are treated as finite; plain phase
   correlation of a narrow strip is pulled towards zero shift), peak refined
   by a parabola.
2. **Fine**, at full resolution on a window of at most 192 × 96 pixels (the
   most textured part of the overlap along its length): the integer offset
   by hill-climbing the NCC, then the sub-pixel remainder from the vertex of
   a parabola through the NCC at the peak and its neighbours, per axis.

A pair is kept when the NCC at the peak is at least ``min_ncc`` (glass,
out-of-tissue or ambiguous strips fall below). Shifts are measured in the
tiles' pixel frame (columns, rows); tile corrections are solved from the kept
pairs by weighted least squares in that frame (weight ∝ NCC × pixels
compared), dropping the pair with the largest residual while it exceeds
``max_residual_px``, and mapped to the stage through ``A``
(:func:`solve_positions` is sparse: its cost grows with the number of pairs,
not its square).

Anchor: registration measures relative positions only. The solution has
zero mean correction (corrected − requested) over each connected group of
registered tiles, i.e. the group's mean requested position is trusted; a
tile with no kept pair keeps its requested position.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray
from scipy import fft as sfft
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve
from scipy.spatial import cKDTree

from analysis.geometry import (
    px_offset_to_stage_um,
    stage_offset_to_px,
    validate_affine,
)
from analysis.mosaic import affine_for

__all__ = [
    "PairShift",
    "Registration",
    "edge_neighbour_pairs",
    "measure_pair_shift",
    "measure_strip_shift",
    "overlap_regions",
    "register_tiles",
    "registration_from_pairs",
    "solve_positions",
]

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class PairShift:
    """Measured residual shift between two overlapping tiles.

    Attributes
    ----------
    shift_px : (2,) float64
        (x, y) in the tiles' pixel frame (columns, rows): measured offset of the
        second tile relative to the first minus the requested offset.
    offset_um : (2,) float64
        Measured stage (x, y) offset of the second tile's centre from the first's (µm).
    ncc : float
        Normalised cross-correlation of the overlap after alignment (−1..1).
    n_px : int
        Pixels compared at full resolution (the measurement's weight grows with it).
    """

    shift_px: F64
    offset_um: F64
    ncc: float
    n_px: int


def _range_1d(d: int, n: int, margin: int) -> tuple[slice, slice]:
    """Index ranges of the overlap (grown by ``margin``) in tile a and tile b, b offset by ``d`` px."""
    a0, b0 = min(n, max(0, d - margin)), min(n, max(0, -d - margin))
    # clipped from below too: a negative stop would count from the end
    return slice(a0, max(a0, min(n, n + d + margin))), slice(b0, max(b0, min(n, n - d + margin)))


def overlap_regions(
    offset_px: ArrayLike, tile_shape: tuple[int, int], *, margin_px: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The parts of two tiles to compare: their planned overlap grown by a search margin.

    Parameters
    ----------
    offset_px : (dx, dy)
        Requested offset of tile b relative to tile a in their pixel frame
        (columns, rows): :func:`~analysis.geometry.stage_offset_to_px` of the stage offset.
    tile_shape : (H, W)
    margin_px : int
        Grown by this on every side (clipped to the tiles), so a shift up to it stays inside.

    Returns
    -------
    ((rows_a, cols_a), (rows_b, cols_b))
        Empty slices when the tiles do not overlap.
    """
    h, w = tile_shape
    off = np.asarray(offset_px, dtype=np.float64).reshape(2)
    dx, dy = round(float(off[0])), round(float(off[1]))
    ra, rb = _range_1d(dy, h, margin_px)
    ca, cb = _range_1d(dx, w, margin_px)
    return (ra, ca), (rb, cb)


def _block_mean(a: NDArray[Any], g: int) -> F32:
    """Means of ``g × g`` blocks (whole blocks only), float32: rows added first, then strided columns."""
    if g == 1:
        return np.asarray(a, dtype=np.float32)
    h, w = a.shape[0] // g, a.shape[1] // g
    rows = a[: h * g, : w * g].reshape(h, g, w * g).sum(axis=1, dtype=np.float32)
    out = rows[:, 0::g].copy()
    for k in range(1, g):
        out += rows[:, k::g]
    out *= np.float32(1.0 / (g * g))
    return out


def _sat(a: F64) -> F64:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    np.cumsum(np.cumsum(a, axis=0), axis=1, out=out[1:, 1:])
    return out


def _ncc_surface(a: F32, b: F32, ky: NDArray[np.intp], kx: NDArray[np.intp], *, min_overlap_px: float) -> F64:
    """NCC of ``b`` against ``a`` over their overlap, with ``b[q]`` on ``a[q + (ky, kx)]``, for every offset.

    Returns (len(ky), len(kx)) float64; −inf where the overlap is smaller than
    ``min_overlap_px`` or has no contrast.
    """
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    a64 -= a64.mean()
    b64 -= b64.mean()
    ha, wa = a64.shape
    hb, wb = b64.shape
    full = (ha + hb - 1, wa + wb - 1)
    fast = [sfft.next_fast_len(n, real=True) for n in full]
    spectrum = sfft.rfft2(a64, fast) * sfft.rfft2(b64[::-1, ::-1], fast)
    corr = sfft.irfft2(spectrum, fast)[: full[0], : full[1]]
    sa, sa2, sb, sb2 = _sat(a64), _sat(a64 * a64), _sat(b64), _sat(b64 * b64)
    kyy, kxx = ky[:, None], kx[None, :]
    # overlap rectangles in a and in b (empty ones clipped inside the arrays)
    ar0 = np.clip(kyy, 0, ha)
    ar1 = np.clip(hb + kyy, ar0, ha)
    ac0 = np.clip(kxx, 0, wa)
    ac1 = np.clip(wb + kxx, ac0, wa)
    br0 = np.clip(ar0 - kyy, 0, hb)
    br1 = np.clip(ar1 - kyy, br0, hb)
    bc0 = np.clip(ac0 - kxx, 0, wb)
    bc1 = np.clip(ac1 - kxx, bc0, wb)
    ok = (ar1 > ar0) & (ac1 > ac0)

    def box(s: F64, r0: Any, r1: Any, c0: Any, c1: Any) -> F64:
        return np.asarray(s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0], dtype=np.float64)

    n = ((ar1 - ar0) * (ac1 - ac0)).astype(np.float64)
    a1, a2 = box(sa, ar0, ar1, ac0, ac1), box(sa2, ar0, ar1, ac0, ac1)
    b1, b2 = box(sb, br0, br1, bc0, bc1), box(sb2, br0, br1, bc0, bc1)
    iy = np.clip(kyy + hb - 1, 0, corr.shape[0] - 1)
    ix = np.clip(kxx + wb - 1, 0, corr.shape[1] - 1)
    cross = corr[iy, ix]
    with np.errstate(invalid="ignore", divide="ignore"):
        num = cross - a1 * b1 / n
        va, vb = a2 - a1 * a1 / n, b2 - b1 * b1 / n
        ncc = num / np.sqrt(va * vb)
    # an overlap without contrast (its variance lost in rounding) has no NCC
    contrast = (va > 1e-9 * a2) & (vb > 1e-9 * b2)
    good = ok & (n >= min_overlap_px) & contrast & np.isfinite(ncc)
    return np.where(good, ncc, -np.inf)


def _parabola_vertex(left: float, centre: float, right: float) -> float:
    """Offset (−½..½) of the maximum of the parabola through (−1, left), (0, centre), (1, right)."""
    if not (np.isfinite(left) and np.isfinite(right)):
        return 0.0
    curvature = left - 2.0 * centre + right
    if curvature >= 0:  # not a maximum
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


_COARSE_ALONG_PX = 1024
_FINE_ALONG_PX = 192
_FINE_ACROSS_PX = 96
_FINE_MIN_PX = 4


def measure_strip_shift(
    strip_a: ArrayLike,
    strip_b: ArrayLike,
    offset_px: ArrayLike,
    *,
    max_shift_px: float,
) -> PairShift | None:
    """Offset of ``strip_b`` relative to ``strip_a``: coarse NCC search, then full-resolution refinement.

    Parameters
    ----------
    strip_a, strip_b : 2-D arrays
        Parts of two tiles of the same channel (anatomy, DAPI) in their common pixel
        frame (:func:`overlap_regions`).
    offset_px : (dx, dy)
        Requested position of ``strip_b``'s first pixel in ``strip_a``'s pixels
        (columns, rows; fractional).
    max_shift_px : float
        Search radius around the requested offset (px).

    Returns
    -------
    PairShift or None
        ``shift_px`` is the measured minus the requested offset; ``offset_um`` is
        left at the pixel offset (callers map it to the stage). None when the strips
        do not overlap by at least 4 px in both directions at any offset searched.
    """
    a, b = np.asarray(strip_a), np.asarray(strip_b)
    if a.ndim != 2 or b.ndim != 2 or min(a.shape) < 1 or min(b.shape) < 1:
        raise ValueError(f"strips must be non-empty 2-D arrays, got {a.shape} and {b.shape}")
    e = np.asarray(offset_px, dtype=np.float64).reshape(2)  # (x, y)
    radius = float(max_shift_px)
    # ---- 1) coarse: the NCC surface on strips reduced by g, over the search window
    g = int(max(1, min(8, min(*a.shape, *b.shape) // 16)))
    ra, rb = _block_mean(a, g), _block_mean(b, g)
    if min(ra.shape) < 2 or min(rb.shape) < 2:
        g, ra, rb = 1, _block_mean(a, 1), _block_mean(b, 1)
    reach = math.ceil(radius / g) + 1
    ey, ex = round(float(e[1]) / g), round(float(e[0]) / g)
    # a long overlap: the coarse search runs on its most textured part (offsets move with the crop)
    ca, cb, (sy, sx) = _coarse_crop(ra, rb, (ey, ex), _COARSE_ALONG_PX // g)
    ey, ex = ey + sy, ex + sx
    ky = np.arange(ey - reach, ey + reach + 1, dtype=np.intp)
    kx = np.arange(ex - reach, ex + reach + 1, dtype=np.intp)
    # overlap of the reduced strips at the requested offset: a shift may lose at most half of it
    n_req = max(0, min(ca.shape[0], cb.shape[0] + ey) - max(0, ey)) * max(
        0, min(ca.shape[1], cb.shape[1] + ex) - max(0, ex)
    )
    surface = _ncc_surface(ca, cb, ky, kx, min_overlap_px=max(4.0, 0.5 * n_req))
    if not np.isfinite(surface).any():
        return None
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    cy = float(ky[iy] - sy)
    cx = float(kx[ix] - sx)
    if 0 < iy < len(ky) - 1:
        cy += _parabola_vertex(surface[iy - 1, ix], surface[iy, ix], surface[iy + 1, ix])
    if 0 < ix < len(kx) - 1:
        cx += _parabola_vertex(surface[iy, ix - 1], surface[iy, ix], surface[iy, ix + 1])
    k0 = (round(cy * g), round(cx * g))
    # ---- 2) fine: a fixed window of a, b's window hill-climbed around k0 at full resolution
    climb = g + 2
    ha, wa = a.shape
    hb, wb = b.shape
    # window in a: where b overlaps a at every offset within `climb` of k0
    r0, r1 = max(0, k0[0] + climb), min(ha, hb + k0[0] - climb)
    c0, c1 = max(0, k0[1] + climb), min(wa, wb + k0[1] - climb)
    if r1 - r0 < _FINE_MIN_PX or c1 - c0 < _FINE_MIN_PX:
        return None
    (r0, r1), (c0, c1) = _fine_window(ra, g, (r0, r1), (c0, c1))
    za = a[r0:r1, c0:c1].astype(np.float32)
    za -= np.float32(za.mean(dtype=np.float64))
    na = float(np.sqrt(np.sum(za * za, dtype=np.float64)))
    n_win = za.size
    scores: dict[tuple[int, int], float] = {}

    def score(k: tuple[int, int]) -> float:
        if k not in scores:
            ry, rx = r0 - k[0], c0 - k[1]
            if ry < 0 or rx < 0 or ry + (r1 - r0) > hb or rx + (c1 - c0) > wb or na == 0.0:
                scores[k] = -np.inf
            else:
                wb_ = b[ry : ry + (r1 - r0), rx : rx + (c1 - c0)].astype(np.float32)
                sb = float(np.sum(wb_, dtype=np.float64))
                sb2 = float(np.sum(wb_ * wb_, dtype=np.float64))
                var_b = sb2 - sb * sb / n_win
                # za has zero mean: Σ za·(b − mean b) = Σ za·b
                cross = float(np.sum(za * wb_, dtype=np.float64))
                scores[k] = cross / (na * math.sqrt(var_b)) if var_b > 1e-9 * sb2 else 0.0
        return scores[k]

    k = k0
    best = score(k)
    for _ in range(2 * climb + 2):
        cand = max(
            ((k[0] - 1, k[1]), (k[0] + 1, k[1]), (k[0], k[1] - 1), (k[0], k[1] + 1)),
            key=score,
        )
        if score(cand) <= best:
            break
        k, best = cand, score(cand)
    if not np.isfinite(best):
        return None
    fy = k[0] + _parabola_vertex(score((k[0] - 1, k[1])), best, score((k[0] + 1, k[1])))
    fx = k[1] + _parabola_vertex(score((k[0], k[1] - 1)), best, score((k[0], k[1] + 1)))
    measured = np.array([fx, fy])
    return PairShift(shift_px=measured - e, offset_um=measured, ncc=float(best), n_px=int(n_win))


def _textured_start(lines: NDArray[Any], keep: int) -> int:
    """First of the ``keep`` consecutive lines (rows of ``lines``) with most texture in both directions.

    Texture is the energy of differences across the lines and along them, whichever
    is smaller over the window: nuclei score in both, a straight tissue edge (which
    pins an offset in one direction only) in one.
    """
    x = lines.astype(np.float64)
    across = np.r_[(np.diff(x, axis=1) ** 2).sum(axis=1)]
    along = np.r_[(np.diff(x, axis=0) ** 2).sum(axis=1), 0.0]
    window = np.ones(keep)
    run = np.minimum(np.convolve(across, window, mode="valid"), np.convolve(along, window, mode="valid"))
    return int(np.argmax(run))


def _coarse_crop(ra: F32, rb: F32, offset: tuple[int, int], keep: int) -> tuple[F32, F32, tuple[int, int]]:
    """Crop two reduced strips along their long axis to ``keep`` lines, where ``ra`` has most texture.

    ``rb`` is cut where it lies on that part of ``ra`` at the requested
    ``offset`` (rows, cols; ``rb[q]`` on ``ra[q + offset]``). Returns the crops and
    what to add to an offset between the originals to get one between the crops.
    """
    axis = 0 if ra.shape[0] >= ra.shape[1] else 1
    n = ra.shape[axis]
    if n <= keep or rb.shape[axis] <= keep or min(ra.shape) < 2:
        return ra, rb, (0, 0)
    la0 = _textured_start(ra if axis == 0 else ra.T, keep)
    lb0 = min(max(la0 - offset[axis], 0), rb.shape[axis] - keep)
    if axis == 0:
        return ra[la0 : la0 + keep], rb[lb0 : lb0 + keep], (lb0 - la0, 0)
    return ra[:, la0 : la0 + keep], rb[:, lb0 : lb0 + keep], (0, lb0 - la0)


def _fine_window(
    reduced_a: F32, g: int, rows: tuple[int, int], cols: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The most textured ≤ 192 × 96 px part of ``a[rows, cols]`` (long side along the overlap).

    Texture is measured on the reduced strip (``g``-px block means), as in
    :func:`_textured_start`: structure at the scale of nuclei, in both directions.
    """
    r0, r1 = rows
    c0, c1 = cols
    along_rows = (r1 - r0) >= (c1 - c0)
    n_along = (r1 - r0) if along_rows else (c1 - c0)
    n_across = (c1 - c0) if along_rows else (r1 - r0)
    if n_across > _FINE_ACROSS_PX:  # the middle of the overlap across it
        s = (n_across - _FINE_ACROSS_PX) // 2
        if along_rows:
            c0, c1 = c0 + s, c0 + s + _FINE_ACROSS_PX
        else:
            r0, r1 = r0 + s, r0 + s + _FINE_ACROSS_PX
    if n_along > _FINE_ALONG_PX:
        # lines of blocks lying wholly inside the window's extent, across and along
        q0, q1 = (-(-c0 // g), c1 // g) if along_rows else (-(-r0 // g), r1 // g)
        l0, l1 = (-(-r0 // g), r1 // g) if along_rows else (-(-c0 // g), c1 // g)
        per = -(-_FINE_ALONG_PX // g)
        lo = r0 if along_rows else c0
        if q1 - q0 >= 2 and l1 - l0 >= per:
            lines = reduced_a[l0:l1, q0:q1] if along_rows else reduced_a[q0:q1, l0:l1].T
            start = (l0 + _textured_start(lines, per)) * g
        else:
            start = lo + (n_along - _FINE_ALONG_PX) // 2
        start = min(max(start, lo), lo + n_along - _FINE_ALONG_PX)
        if along_rows:
            r0, r1 = start, start + _FINE_ALONG_PX
        else:
            c0, c1 = start, start + _FINE_ALONG_PX
    return (r0, r1), (c0, c1)


def measure_pair_shift(
    tile_a: ArrayLike,
    tile_b: ArrayLike,
    requested_offset_um: tuple[float, float],
    *,
    pixel_size_um: float | None = None,
    affine_um: ArrayLike | None = None,
    max_shift_px: float = 64.0,
) -> PairShift | None:
    """Offset of ``tile_b`` relative to ``tile_a`` from their overlap (see the module docstring).

    Parameters
    ----------
    tile_a, tile_b : (H, W) arrays
        Full-resolution images of the same channel (the anatomy channel, DAPI).
    requested_offset_um : (dx, dy)
        Requested stage position of b minus that of a (µm).
    pixel_size_um : float, optional
        Pixel size (camera aligned with the stage); or give ``affine_um``.
    affine_um : (2, 2) array, optional
        Pixel-size affine of the tiles.
    max_shift_px : float
        Search radius around the requested offset (px).

    Returns
    -------
    PairShift or None
        None when the tiles do not overlap by at least 4 px in both directions.
    """
    a, b = np.asarray(tile_a), np.asarray(tile_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"tiles must be equal-shape 2-D arrays, got {a.shape} and {b.shape}")
    affine = _affine_of(pixel_size_um, affine_um)
    d = stage_offset_to_px(np.asarray(requested_offset_um, dtype=np.float64), affine)
    margin = math.ceil(max_shift_px) + 2
    (ra, ca), (rb, cb) = overlap_regions(d, a.shape, margin_px=margin)
    if ra.stop - ra.start < 4 or ca.stop - ca.start < 4 or rb.stop - rb.start < 4 or cb.stop - cb.start < 4:
        return None
    e = d + np.array([cb.start - ca.start, rb.start - ra.start], dtype=np.float64)
    ps = measure_strip_shift(a[ra, ca], b[rb, cb], e, max_shift_px=max_shift_px)
    if ps is None:
        return None
    offset = d + ps.shift_px
    return dataclasses.replace(ps, offset_um=px_offset_to_stage_um(offset, affine))


def _affine_of(pixel_size_um: float | None, affine_um: ArrayLike | None) -> F64:
    if affine_um is not None:
        return validate_affine(affine_um)
    if pixel_size_um is None:
        raise ValueError("give pixel_size_um or affine_um")
    return affine_for(None, float(pixel_size_um))


def edge_neighbour_pairs(
    centres_um: ArrayLike,
    tile_shape: tuple[int, int],
    affine_um: ArrayLike,
    *,
    overlap_min_px: int = 16,
    edges_only: bool = True,
) -> NDArray[np.int64]:
    """Pairs (i, j), i < j, of tiles whose planned footprints overlap enough to register.

    Found with a k-d tree: the cost grows with the number of tiles, never its square.

    Parameters
    ----------
    centres_um : (n, 2)
        Planned tile centres (µm).
    tile_shape : (H, W)
    affine_um : (2, 2)
    overlap_min_px : int
        Minimum overlap in both pixel directions.
    edges_only : bool
        Keep only edge neighbours (offset less than half a tile along one pixel axis):
        a corner overlap is small, weak and as costly to measure.

    Returns
    -------
    (m, 2) int64, sorted
    """
    c = np.asarray(centres_um, dtype=np.float64).reshape(-1, 2)
    h, w = tile_shape
    if len(c) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    a = validate_affine(affine_um)
    # a stage radius that contains every footprint-overlapping neighbour (Chebyshev metric)
    reach = float(np.abs(a).sum(axis=1).max()) * max(h, w)
    candidates = cKDTree(c).query_pairs(reach, p=np.inf, output_type="ndarray")
    if not len(candidates):
        return np.zeros((0, 2), dtype=np.int64)
    candidates = np.sort(candidates, axis=1)
    d = np.abs(stage_offset_to_px(c[candidates[:, 1]] - c[candidates[:, 0]], a))
    ok = (w - d[:, 0] >= overlap_min_px) & (h - d[:, 1] >= overlap_min_px)
    if edges_only:
        ok &= (d[:, 0] < w / 2) | (d[:, 1] < h / 2)
    pairs = candidates[ok].astype(np.int64)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order]


@dataclasses.dataclass(frozen=True)
class Registration:
    """Corrected tile positions and the pairwise measurements behind them (all ready for HDF5).

    Attributes
    ----------
    positions_um : (n, 2) float64
        Corrected (x, y) stage position of each tile centre (µm).
    correction_um : (n, 2) float64
        ``positions_um - requested_xy_um``.
    pairs : (m, 2) int64
        Tile indices (i, j), i < j, of every overlapping pair measured.
    pair_shift_px : (m, 2) float64
        Measured offset of j from i minus the requested offset, in the tiles' pixel
        frame (columns, rows; full-resolution pixels); NaN where not measured.
    pair_ncc : (m,) float64
        Normalised cross-correlation after alignment.
    pair_used : (m,) bool
        Pair kept for the solve (confident and not rejected as an outlier).
    residual_px : (m,) float64
        |solved − measured| offset of each pair (px); NaN for unmeasured pairs.
    affine_um : (2, 2) float64
        Pixel-size affine that maps pixel-frame shifts to the stage.
    """

    positions_um: F64
    correction_um: F64
    pairs: NDArray[np.int64]
    pair_shift_px: F64
    pair_ncc: F64
    pair_used: NDArray[np.bool_]
    residual_px: F64
    affine_um: F64 = dataclasses.field(default_factory=lambda: np.eye(2))


def solve_positions(
    n_tiles: int,
    pairs: ArrayLike,
    pair_shift_px: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    max_residual_px: float = 1.0,
) -> tuple[F64, NDArray[np.bool_], F64]:
    """Least-squares corrections (px) of tile positions from pairwise shifts, with outlier rejection.

    Sparse normal equations (a graph Laplacian, one tile pinned per connected
    group, then each group's mean removed), so the cost grows with the number of
    pairs, not with the square of the tile count.

    Parameters
    ----------
    n_tiles : int
    pairs : (m, 2) int
        (i, j) tile indices.
    pair_shift_px : (m, 2) float
        Measured correction of j minus correction of i, (x, y) px.
    weights : (m,) float, optional
        Pair weights (default 1).
    max_residual_px : float
        While the worst used pair's residual exceeds this, drop it and re-solve.

    Returns
    -------
    correction_px : (n_tiles, 2) float64
        Zero-mean over each connected group of tiles; 0 for tiles without pairs.
    used : (m,) bool
    residual_px : (m,) float64
    """
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    sh = np.asarray(pair_shift_px, dtype=np.float64).reshape(-1, 2)
    m = len(pr)
    wt = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    measured = np.isfinite(sh).all(axis=1)
    used = measured & (wt > 0)
    corr = np.zeros((n_tiles, 2))
    resid = np.full(m, np.nan)
    while True:
        idx = np.flatnonzero(used)
        corr = _solve_groups(n_tiles, pr[idx], sh[idx], wt[idx])
        resid = np.full(m, np.nan)
        resid[measured] = np.hypot(*(corr[pr[measured, 1]] - corr[pr[measured, 0]] - sh[measured]).T)
        if not len(idx):
            break
        worst = idx[np.argmax(resid[idx])]
        if resid[worst] <= max_residual_px:
            break
        used[worst] = False
    return corr, used, resid


def _solve_groups(n_tiles: int, pairs: NDArray[np.int64], shifts: F64, weights: F64) -> F64:
    """Weighted least squares of ``x[j] − x[i] = shift`` with zero mean over each connected group.

    The normal equations are a graph Laplacian, singular once per group: one tile
    per group is pinned (its row and column dropped), the rest solved sparsely in
    one go, then each group's mean is removed. Exact, unlike a ridge, which
    would pull long chains of tiles towards their planned positions.
    """
    corr = np.zeros((n_tiles, 2))
    if not len(pairs):
        return corr
    i, j = pairs[:, 0], pairs[:, 1]
    n = len(pairs)
    rows = np.arange(n)
    inc = sp.csr_matrix(
        (np.r_[-np.ones(n), np.ones(n)], (np.r_[rows, rows], np.r_[i, j])), shape=(n, n_tiles)
    )
    weighted = inc.T.multiply(weights[None, :]).tocsr()
    laplacian = (weighted @ inc).tocsc()
    rhs = weighted @ shifts
    _, group = connected_components(laplacian, directed=False)
    linked = np.zeros(n_tiles, dtype=bool)
    linked[i] = linked[j] = True
    # the first tile of each group (in index order) is pinned at 0
    members = np.flatnonzero(linked)
    _, first = np.unique(group[members], return_index=True)
    free = linked.copy()
    free[members[first]] = False
    keep = np.flatnonzero(free)
    if len(keep):
        sub = laplacian[keep][:, keep].tocsc()
        corr[keep] = np.asarray(spsolve(sub, rhs[keep]), dtype=np.float64).reshape(len(keep), 2)
    sums = np.zeros((group.max() + 1, 2))
    np.add.at(sums, group[members], corr[members])
    counts = np.bincount(group[members], minlength=group.max() + 1)
    corr[members] -= sums[group[members]] / counts[group[members], None]
    return corr


def register_tiles(
    tiles: Sequence[ArrayLike],
    requested_xy_um: ArrayLike,
    *,
    pixel_size_um: float | None = None,
    affine_um: ArrayLike | None = None,
    overlap_min_px: int = 16,
    min_ncc: float = 0.3,
    max_residual_px: float = 1.0,
    max_shift_px: float = 64.0,
) -> Registration:
    """Correct tile positions from the overlaps of neighbouring tiles (edge and corner neighbours).

    Parameters
    ----------
    tiles : sequence of n (H, W) arrays
        Full-resolution images of one channel (the anatomy channel, DAPI), all one shape.
    requested_xy_um : (n, 2) float
        Requested stage (x, y) of each tile centre (µm).
    pixel_size_um : float, optional
        Full-resolution pixel size (µm), for a camera aligned with the stage; or give ``affine_um``.
    affine_um : (2, 2) array, optional
        Pixel-size affine of the tiles.
    overlap_min_px : int
        Pairs whose requested overlap is narrower than this (either direction) are not measured.
    min_ncc : float
        Pairs whose aligned strips correlate less than this are not used.
    max_residual_px : float
        Outlier rejection threshold of the global solve (px).
    max_shift_px : float
        Search radius of each pair (px).

    Returns
    -------
    Registration
        Anchor: zero mean correction over each connected group of tiles (see module docs).
    """
    affine = _affine_of(pixel_size_um, affine_um)
    req = np.asarray(requested_xy_um, dtype=np.float64).reshape(-1, 2)
    n = len(tiles)
    if len(req) != n:
        raise ValueError(f"{n} tiles but {len(req)} positions")
    if n == 0:
        empty = np.zeros((0, 2))
        return Registration(
            empty,
            empty,
            np.zeros((0, 2), np.int64),
            empty,
            np.zeros(0),
            np.zeros(0, bool),
            np.zeros(0),
            affine,
        )
    shape = np.asarray(tiles[0]).shape
    pairs = edge_neighbour_pairs(
        req, (int(shape[0]), int(shape[1])), affine, overlap_min_px=overlap_min_px, edges_only=False
    )
    shifts, nccs, npx = [], [], []
    for i, j in pairs:
        ps = measure_pair_shift(
            tiles[i], tiles[j], tuple(req[j] - req[i]), affine_um=affine, max_shift_px=max_shift_px
        )
        if ps is None:
            shifts.append((np.nan, np.nan))
            nccs.append(np.nan)
            npx.append(0)
        else:
            shifts.append(tuple(ps.shift_px))
            nccs.append(ps.ncc)
            npx.append(ps.n_px)
    return registration_from_pairs(
        req,
        pairs,
        shifts,
        nccs,
        npx,
        affine_um=affine,
        min_ncc=min_ncc,
        max_residual_px=max_residual_px,
    )


def registration_from_pairs(
    requested_xy_um: ArrayLike,
    pairs: ArrayLike,
    pair_shift_px: ArrayLike,
    pair_ncc: ArrayLike,
    pair_n_px: ArrayLike,
    *,
    pixel_size_um: float | None = None,
    affine_um: ArrayLike | None = None,
    min_ncc: float = 0.3,
    max_residual_px: float = 1.0,
) -> Registration:
    """Solve tile positions from measured pairs (as :func:`register_tiles` does after measuring).

    Parameters
    ----------
    requested_xy_um : (n, 2) float
        Requested tile centres (µm).
    pairs : (m, 2) int
        (i, j) with i < j.
    pair_shift_px : (m, 2) float
        Measured offset of j from i minus the requested offset, pixel frame (x, y px); NaN if not measured.
    pair_ncc : (m,) float
        NCC of each aligned pair (NaN if not measured).
    pair_n_px : (m,) int
        Pixels compared per pair.
    pixel_size_um, affine_um, min_ncc, max_residual_px : as for :func:`register_tiles`
    """
    affine = _affine_of(pixel_size_um, affine_um)
    req = np.asarray(requested_xy_um, dtype=np.float64).reshape(-1, 2)
    n = len(req)
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    sh = np.asarray(pair_shift_px, dtype=np.float64).reshape(-1, 2)
    ncc = np.asarray(pair_ncc, dtype=np.float64).reshape(-1)
    npx = np.asarray(pair_n_px, dtype=np.float64).reshape(-1)
    good = np.nan_to_num(ncc, nan=0.0) >= min_ncc
    # weight ∝ compared pixels × NCC
    weights = np.where(good, np.nan_to_num(ncc) * npx, 0.0)
    if weights.size and weights.max() > 0:
        weights /= weights.max()
    corr_px, used, resid = solve_positions(n, pr, sh, weights=weights, max_residual_px=max_residual_px)
    corr_um = px_offset_to_stage_um(corr_px, affine)
    return Registration(
        positions_um=req + corr_um,
        correction_um=corr_um,
        pairs=pr,
        pair_shift_px=sh,
        pair_ncc=ncc,
        pair_used=used,
        residual_px=resid,
        affine_um=affine,
    )
