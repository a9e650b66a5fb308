"""Section mosaics: placing tiles at reduced scale, and refining tile positions by registration.

Coordinates
-----------
Stage coordinates are in µm. A tile of shape ``(H, W)`` centred at stage
``(xc, yc)`` with pixel size ``p`` µm has its pixel ``(r, c)`` at::

    x = xc + (c + 0.5 - W / 2) · p,    y = yc + (r + 0.5 - H / 2) · p

so columns run along +x and rows along +y. A mosaic pixel ``(R, C)`` is
centred at ``origin_um + ((C + 0.5) · P, (R + 0.5) · P)`` with ``P`` the
mosaic pixel size.

Placement (:class:`SectionMosaic`)
----------------------------------
Each tile is block-reduced by an integer factor ``f`` (``P = f · p``, 6 ×
0.65 µm = 3.9 µm by default at 10x) after cropping to whole blocks, then
added at the *nearest* mosaic pixel to its stage position: the residual
(at most half a mosaic pixel, ≈ 2 µm, per axis) is recorded in
:attr:`SectionMosaic.placement_residual_um` rather than resampled away, which
keeps placement a block-mean plus a slice-add (≈ 4 ms per channel of a 2048² tile)
and keeps exactly aligned tiles exact. Overlaps are blended by feathering:
each reduced pixel is weighted by its distance to the nearest tile edge (in
reduced pixels, ``0.5`` at the border), and the mosaic keeps the weighted
sum and the sum of weights; each weighted contribution is rounded to a
dyadic grid (2⁻¹⁶) so the float64 sums are exact and the blend does not
depend on tile order, to the last bit.

Registration (:func:`register_tiles`)
-------------------------------------
Stage positions are only as good as the stage (the demo stage's
``PositioningError_um`` is a few µm, several pixels). For every pair of
tiles that overlap by at least ``overlap_min_px`` in both directions
according to their requested positions, the two overlap strips are cut with
the requested (rounded) offset and their residual shift is measured in two
steps: the integer shift by masked normalised cross-correlation
(:func:`skimage.registration.phase_cross_correlation` with masks, which
treats the strips as finite; plain phase correlation of a narrow strip is
pulled towards zero shift), on strips block-reduced to ≥ 24 px across and
then refined at full resolution by hill-climbing the aligned NCC; then the
sub-pixel remainder from the vertex of a parabola through the NCC at the
integer peak and its neighbours (per axis). A
pair is kept when the normalised cross-correlation (NCC) of the aligned
strips is at least ``min_ncc`` (glass, out-of-tissue or ambiguous strips fall
below). The corrections of all tiles are then solved by weighted least
squares from the kept pairwise offsets (weight ∝ NCC × pixels compared, so a
corner overlap counts far less than an edge strip), dropping the pair with
the largest residual while it exceeds ``max_residual_px`` and re-solving.
:func:`measure_pair_shift` and :func:`solve_positions` are public so a live
worker can measure each new tile against its acquired neighbours and
re-solve (the solve is a small dense least-squares problem).

Anchor: registration measures relative positions only. The solution has
zero mean correction (corrected − requested) over each connected group of
registered tiles, i.e. the group's mean requested position is trusted; a
tile with no kept pair keeps its requested position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from skimage.registration import phase_cross_correlation

from analysis.tile import block_reduce_mean

__all__ = [
    "PairShift",
    "Registration",
    "SectionMosaic",
    "measure_pair_shift",
    "mosaic_reduction_factor",
    "register_tiles",
    "registration_from_pairs",
    "solve_positions",
]

F64 = NDArray[np.float64]


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
    if tile_pixel_size_um <= 0 or target_pixel_um <= 0:
        raise ValueError("pixel sizes must be positive")
    return max(1, round(target_pixel_um / tile_pixel_size_um))


_MAX_STRIP_PX = 768
_MOSAIC_QUANTUM = 2.0**-16
_MOSAIC_QUANTUM_INV = 2.0**16


def _feather(n_rows: int, n_cols: int) -> NDArray[np.float32]:
    """Distance-to-edge weight of an ``(n_rows, n_cols)`` tile, in pixels (0.5 at the border)."""
    dr = np.minimum(np.arange(n_rows) + 0.5, n_rows - 0.5 - np.arange(n_rows))
    dc = np.minimum(np.arange(n_cols) + 0.5, n_cols - 0.5 - np.arange(n_cols))
    return np.minimum(dr[:, None], dc[None, :]).astype(np.float32)


class SectionMosaic:
    """Blended, reduced-scale mosaic of one section, accumulated tile by tile.

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

    Attributes
    ----------
    origin_um : (2,) float64
        Stage (x, y) of the mosaic's top-left corner (the corner, not a pixel centre).
    pixel_size_um : float
        Mosaic pixel size (µm).
    factor : int
        Reduction factor (full-resolution pixels per mosaic pixel, per axis).
    shape : (rows, cols)
    placement_residual_um : list of (2,) float64
        Per added tile, requested minus used top-left position (x, y) in µm
        (|·| ≤ half a mosaic pixel per axis).
    """

    def __init__(
        self,
        bbox_um: tuple[float, float, float, float],
        *,
        n_channels: int,
        tile_pixel_size_um: float,
        mosaic_pixel_um: float = 4.0,
    ) -> None:
        x0, y0, x1, y1 = (float(v) for v in bbox_um)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"empty bounding box {bbox_um}")
        if n_channels < 1:
            raise ValueError("n_channels must be ≥ 1")
        self.tile_pixel_size_um = float(tile_pixel_size_um)
        self.factor = mosaic_reduction_factor(self.tile_pixel_size_um, mosaic_pixel_um)
        self.pixel_size_um = self.factor * self.tile_pixel_size_um
        self.origin_um = np.array([x0, y0], dtype=np.float64)
        self.shape = (
            int(np.ceil((y1 - y0) / self.pixel_size_um)),
            int(np.ceil((x1 - x0) / self.pixel_size_um)),
        )
        self.n_channels = int(n_channels)
        self._sum = np.zeros((self.n_channels, *self.shape), dtype=np.float64)
        self._weight = np.zeros(self.shape, dtype=np.float64)
        self._feathers: dict[tuple[int, int], NDArray[np.float32]] = {}
        self.placement_residual_um: list[F64] = []

    def add_tile(self, images: ArrayLike, *, center_um: tuple[float, float], pixel_size_um: float) -> None:
        """Block-reduce one tile and blend it in at its stage position.

        Parameters
        ----------
        images : (C, H, W) or (H, W) array
            The tile, all channels, full resolution (e.g. corrected float32).
        center_um : (x, y)
            Stage position of the tile centre (µm): requested, or corrected by
            :func:`register_tiles`.
        pixel_size_um : float
            Full-resolution pixel size (µm); must equal the mosaic's ``tile_pixel_size_um``.
        """
        imgs = np.asarray(images, dtype=np.float32)
        if imgs.ndim == 2:
            imgs = imgs[None]
        if imgs.ndim != 3 or imgs.shape[0] != self.n_channels:
            raise ValueError(f"images must be ({self.n_channels}, H, W), got {imgs.shape}")
        if not np.isclose(pixel_size_um, self.tile_pixel_size_um, rtol=1e-6):
            raise ValueError(
                f"pixel size {pixel_size_um} µm differs from the mosaic's {self.tile_pixel_size_um} µm"
            )
        f, p = self.factor, self.tile_pixel_size_um
        _, h, w = imgs.shape
        nh, nw = h // f, w // f  # whole blocks only
        if nh == 0 or nw == 0:
            raise ValueError(f"tile {imgs.shape} smaller than one mosaic pixel ({f} px)")
        # top-left corner of the tile in stage µm, then in (fractional) mosaic pixels
        corner = np.array([center_um[0] - w / 2 * p, center_um[1] - h / 2 * p], dtype=np.float64)
        pos = (corner - self.origin_um) / self.pixel_size_um
        ipos = np.round(pos)
        self.placement_residual_um.append((pos - ipos) * self.pixel_size_um)
        c0, r0 = int(ipos[0]), int(ipos[1])
        # clip to the mosaic
        rr0, rr1 = max(r0, 0), min(r0 + nh, self.shape[0])
        cc0, cc1 = max(c0, 0), min(c0 + nw, self.shape[1])
        if rr1 <= rr0 or cc1 <= cc0:
            return
        tr, tc = slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0)
        # reduce only the part of the tile that lands in the mosaic
        fr, fc = slice(tr.start * f, tr.stop * f), slice(tc.start * f, tc.stop * f)
        key = (nh, nw)
        if key not in self._feathers:
            self._feathers[key] = _feather(nh, nw)
        wt = self._feathers[key][tr, tc]
        self._weight[rr0:rr1, cc0:cc1] += wt  # half-integers: exact in float64
        for ch in range(self.n_channels):
            small = block_reduce_mean(imgs[ch, fr, fc], f)
            # rounded to a dyadic grid, so the float64 sums are exact and the blend does not
            # depend on the order tiles arrive in (live and offline mosaics are identical)
            part = np.multiply(small, wt, dtype=np.float64)
            part *= _MOSAIC_QUANTUM_INV
            np.round(part, out=part)
            part *= _MOSAIC_QUANTUM
            self._sum[ch, rr0:rr1, cc0:cc1] += part

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


# ---------------------------------------------------------------- registration


@dataclasses.dataclass(frozen=True)
class PairShift:
    """Measured residual shift between two overlapping tiles.

    Attributes
    ----------
    shift_px : (2,) float64
        (x, y) full-resolution pixels: true offset of the second tile relative to
        the first, minus the offset used to cut the strips (rounded requested offset).
    offset_um : (2,) float64
        Measured (x, y) offset of the second tile's centre from the first's (µm).
    ncc : float
        Normalised cross-correlation of the overlap strips after alignment (−1..1).
    n_px : int
        Pixels compared after alignment (the measurement's weight grows with it).
    """

    shift_px: F64
    offset_um: F64
    ncc: float
    n_px: int


def _overlap(d: int, n: int) -> tuple[slice, slice]:
    """Overlapping index ranges in tile a and tile b along one axis, b offset by ``d`` px."""
    return slice(max(0, d), min(n, n + d)), slice(max(0, -d), min(n, n - d))


def _ncc(a: F64, b: F64) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _parabola_vertex(left: float, centre: float, right: float) -> float:
    """Offset (−½..½) of the maximum of the parabola through (−1, left), (0, centre), (1, right)."""
    if not (np.isfinite(left) and np.isfinite(right)):
        return 0.0
    curvature = left - 2.0 * centre + right
    if curvature >= 0:  # not a maximum
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def measure_pair_shift(
    tile_a: ArrayLike,
    tile_b: ArrayLike,
    requested_offset_um: tuple[float, float],
    *,
    pixel_size_um: float,
) -> PairShift | None:
    """Offset of ``tile_b`` relative to ``tile_a`` by phase correlation of their overlap.

    Usable live: call it when a tile arrives, against its already acquired
    neighbours, and feed the results to :func:`solve_positions`.

    Parameters
    ----------
    tile_a, tile_b : (H, W) arrays
        Full-resolution images of the same channel (the anatomy channel, DAPI).
    requested_offset_um : (dx, dy)
        Requested stage position of b minus that of a (µm).
    pixel_size_um : float

    Returns
    -------
    PairShift or None
        None when the tiles do not overlap by at least 4 px in both directions (before
        and after alignment).
    """
    a, b = np.asarray(tile_a), np.asarray(tile_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"tiles must be equal-shape 2-D arrays, got {a.shape} and {b.shape}")
    h, w = a.shape
    d = np.asarray(requested_offset_um, dtype=np.float64) / pixel_size_um  # (x, y) px
    dx, dy = int(np.round(d[0])), int(np.round(d[1]))
    (ar, br), (ac, bc) = _overlap(dy, h), _overlap(dx, w)
    if ar.stop - ar.start < 4 or ac.stop - ac.start < 4:
        return None
    sa, sb = a[ar, ac], b[br, bc]
    # a long overlap strip is cropped to its middle _MAX_STRIP_PX along its length: the same
    # precision at a fraction of the cost for large sensors (2048 px → 768 px)
    for axis in (0, 1):
        n = sa.shape[axis]
        if n > _MAX_STRIP_PX:
            keep = slice((n - _MAX_STRIP_PX) // 2, (n - _MAX_STRIP_PX) // 2 + _MAX_STRIP_PX)
            sa, sb = (x[keep, :] if axis == 0 else x[:, keep] for x in (sa, sb))
    sa, sb = sa.astype(np.float64), sb.astype(np.float64)
    # 1) integer shift: masked normalised cross-correlation (Padfield's form of phase
    #    correlation in skimage), which treats the strips as finite rather than periodic;
    #    plain or windowed phase correlation of a narrow strip is pulled towards zero shift.
    #    Computed on strips block-reduced so their short side stays ≥ 24 px (cost), then
    #    refined to the full-resolution integer shift by hill-climbing the aligned NCC.
    f = int(max(1, min(4, min(sa.shape) // 24)))
    ra, rb = (block_reduce_mean(x, f) if f > 1 else x for x in (sa, sb))
    full = np.ones(ra.shape, dtype=bool)
    coarse = phase_cross_correlation(ra, rb, reference_mask=full, moving_mask=full, overlap_ratio=0.5)[0]
    ky, kx = int(np.round(coarse[0] * f)), int(np.round(coarse[1] * f))

    def aligned(ky: int, kx: int) -> tuple[F64, F64]:
        # sa[q] ≈ sb[q - s]: both strips cropped to their common part at integer shift (ky, kx)
        (qa_r, qb_r), (qa_c, qb_c) = _overlap(ky, sa.shape[0]), _overlap(kx, sa.shape[1])
        return sa[qa_r, qa_c], sb[qb_r, qb_c]

    scores: dict[tuple[int, int], float] = {}

    def score(k: tuple[int, int]) -> float:
        if k not in scores:
            xa, xb = aligned(*k)
            scores[k] = _ncc(xa, xb) if min(xa.shape) >= 4 else -np.inf
        return scores[k]

    ncc = score((ky, kx))
    for _ in range(2 * f + 2):
        best = max(((ky + u, kx + v) for u in (-1, 0, 1) for v in (-1, 0, 1)), key=score)
        if score(best) <= ncc:
            break
        ncc, (ky, kx) = score(best), best
    ca, _ = aligned(ky, kx)
    if not np.isfinite(ncc) or min(ca.shape) < 4:
        return None
    # 2) sub-pixel residual (|·| < ½ px): the vertex of a parabola through the NCC at the
    #    peak and its two neighbours, per axis (an upsampled DFT of the strips costs ~10× more)
    sy = ky + _parabola_vertex(score((ky - 1, kx)), ncc, score((ky + 1, kx)))
    sx = kx + _parabola_vertex(score((ky, kx - 1)), ncc, score((ky, kx + 1)))
    shift_px = np.array([sx, sy])
    offset_um = (np.array([dx, dy], dtype=np.float64) + shift_px) * pixel_size_um
    return PairShift(shift_px=shift_px, offset_um=offset_um, ncc=float(ncc), n_px=int(ca.size))


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
        (x, y) measured offset of j from i minus the requested offset, in
        full-resolution pixels (NaN where the pair could not be measured).
    pair_ncc : (m,) float64
        Normalised cross-correlation after alignment.
    pair_used : (m,) bool
        Pair kept for the solve (confident and not rejected as an outlier).
    residual_px : (m,) float64
        |solved − measured| offset of each pair (px); NaN for unmeasured pairs.
    """

    positions_um: F64
    correction_um: F64
    pairs: NDArray[np.int64]
    pair_shift_px: F64
    pair_ncc: F64
    pair_used: NDArray[np.bool_]
    residual_px: F64


def solve_positions(
    n_tiles: int,
    pairs: ArrayLike,
    pair_shift_px: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    max_residual_px: float = 1.0,
) -> tuple[F64, NDArray[np.bool_], F64]:
    """Least-squares corrections (px) of tile positions from pairwise shifts, with outlier rejection.

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
    wt = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    used = np.isfinite(sh).all(axis=1) & (wt > 0)
    corr: np.ndarray = np.zeros((n_tiles, 2))
    resid = np.full(m, np.nan)
    reg = 1e-6  # weak pull to the requested position: fixes each group's mean (minimum norm)
    while True:
        idx = np.flatnonzero(used)
        a = np.zeros((len(idx) + n_tiles, n_tiles))
        rhs = np.zeros((len(idx) + n_tiles, 2))
        sw = np.sqrt(wt[idx])
        a[np.arange(len(idx)), pr[idx, 1]] = sw
        a[np.arange(len(idx)), pr[idx, 0]] = -sw
        rhs[: len(idx)] = sh[idx] * sw[:, None]
        a[len(idx) :] = np.sqrt(reg) * np.eye(n_tiles)
        corr = np.linalg.lstsq(a, rhs, rcond=None)[0]
        resid = np.full(m, np.nan)
        ok = np.isfinite(sh).all(axis=1)
        resid[ok] = np.hypot(*(corr[pr[ok, 1]] - corr[pr[ok, 0]] - sh[ok]).T)
        if len(idx) == 0:
            break
        worst = idx[np.argmax(resid[idx])]
        if resid[worst] <= max_residual_px:
            break
        used[worst] = False
    return np.asarray(corr, dtype=np.float64), used, np.asarray(resid, dtype=np.float64)


def register_tiles(
    tiles: Sequence[ArrayLike],
    requested_xy_um: ArrayLike,
    *,
    pixel_size_um: float,
    overlap_min_px: int = 16,
    min_ncc: float = 0.3,
    max_residual_px: float = 1.0,
) -> Registration:
    """Correct tile positions by phase correlation between overlapping neighbours.

    Parameters
    ----------
    tiles : sequence of n (H, W) arrays
        Full-resolution images of one channel (the anatomy channel, DAPI), all one shape.
    requested_xy_um : (n, 2) float
        Requested stage (x, y) of each tile centre (µm).
    pixel_size_um : float
        Full-resolution pixel size (µm).
    overlap_min_px : int
        Pairs whose requested overlap is narrower than this (either direction) are not measured.
    min_ncc : float
        Pairs whose aligned strips correlate less than this are not used.
    max_residual_px : float
        Outlier rejection threshold of the global solve (px).

    Returns
    -------
    Registration
        Anchor: zero mean correction over each connected group of tiles (see module docs).
    """
    req = np.asarray(requested_xy_um, dtype=np.float64).reshape(-1, 2)
    n = len(tiles)
    if len(req) != n:
        raise ValueError(f"{n} tiles but {len(req)} positions")
    if n == 0:
        empty = np.zeros((0, 2))
        return Registration(
            empty, empty, np.zeros((0, 2), np.int64), empty, np.zeros(0), np.zeros(0, bool), np.zeros(0)
        )
    h, w = np.asarray(tiles[0]).shape
    pairs, shifts, nccs, npx = [], [], [], []
    for i in range(n):
        for j in range(i + 1, n):
            d = (req[j] - req[i]) / pixel_size_um
            if w - abs(d[0]) < overlap_min_px or h - abs(d[1]) < overlap_min_px:
                continue
            ps = measure_pair_shift(
                tiles[i],
                tiles[j],
                tuple(req[j] - req[i]),
                pixel_size_um=pixel_size_um,
            )
            pairs.append((i, j))
            if ps is None:
                shifts.append((np.nan, np.nan))
                nccs.append(np.nan)
                npx.append(0)
            else:
                # shift relative to the exact requested offset (not its rounding)
                shifts.append(ps.offset_um / pixel_size_um - d)
                nccs.append(ps.ncc)
                npx.append(ps.n_px)
    return registration_from_pairs(
        req,
        pairs,
        shifts,
        nccs,
        npx,
        pixel_size_um=pixel_size_um,
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
    pixel_size_um: float,
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
        Measured offset of j from i minus the requested offset (x, y px); NaN if not measured.
    pair_ncc : (m,) float
        NCC of each aligned pair (NaN if not measured).
    pair_n_px : (m,) int
        Pixels compared per pair.
    pixel_size_um, min_ncc, max_residual_px : as for :func:`register_tiles`
    """
    req = np.asarray(requested_xy_um, dtype=np.float64).reshape(-1, 2)
    n = len(req)
    pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    sh = np.asarray(pair_shift_px, dtype=np.float64).reshape(-1, 2)
    ncc = np.asarray(pair_ncc, dtype=np.float64).reshape(-1)
    npx = np.asarray(pair_n_px, dtype=np.float64).reshape(-1)
    good = np.nan_to_num(ncc, nan=0.0) >= min_ncc
    # weight ∝ compared pixels (a corner overlap counts far less than an edge strip) × NCC
    weights = np.where(good, np.nan_to_num(ncc) * npx, 0.0)
    if weights.size and weights.max() > 0:
        weights /= weights.max()
    corr_px, used, resid = solve_positions(n, pr, sh, weights=weights, max_residual_px=max_residual_px)
    corr_um = corr_px * pixel_size_um
    return Registration(
        positions_um=req + corr_um,
        correction_um=corr_um,
        pairs=pr,
        pair_shift_px=sh,
        pair_ncc=ncc,
        pair_used=used,
        residual_px=resid,
    )
