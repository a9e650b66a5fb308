"""Model B's frame renderer (private): lattices, background, strip objects, nuclei.

Tile locality. A frame sits on a global pixel lattice: pixel ``(r, c)`` of a
frame has global indices ``(n_y + r, n_x + c)`` and its centre at stage
``((n_x + c + φ_x)·p, (n_y + r + φ_y)·p)``, the sub-pixel phase ``φ``
quantised to 2⁻¹⁶ px so frames whose centres differ by whole pixels share it.
Every value written is a function of global indices and of objects' global
order only: stamps are computed from an object's position on the lattice,
added in a fixed order, and the coarse lattice (every ``m``-th pixel, for
smooth background and wide PSF components) is interpolated with weights that
depend on global indices only. Frames that overlap therefore agree bit for
bit where they overlap.

Objects are rendered per PSF component (a "unit" = object × Gaussian). A
component narrower than the coarse step ``m`` goes to the pixel lattice as
an exact stamp. A wider one goes to the coarse lattice: the object's area
in each coarse cell is accumulated exactly (integer fixed point, so the sum
does not depend on order), and the cells are blurred by a separable
Gaussian whose sigma is the unit's, quantised to 20 % classes (the cell's
own width removed, the pixel's added). The coarse lattice (which also holds
the smooth tissue background) is then interpolated into the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .optics import N_COMPONENTS, DiscTable, PsfTable, interval_response

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

PHASE_QUANTUM = 2.0**-16
STAMP_SIGMAS = 3.5
"""Gaussian stamps reach this many sigmas beyond an object."""


@dataclass(frozen=True)
class FrameLattice:
    """Placement of a frame on the global pixel lattice (see the module docstring)."""

    n_x: int
    n_y: int
    phi_x: float
    phi_y: float
    pixel_um: float
    height: int
    width: int

    @classmethod
    def from_center(
        cls, center_um: tuple[float, float], pixel_um: float, shape: tuple[int, int]
    ) -> FrameLattice:
        """Place a frame of ``shape`` centred on ``center_um`` (pixel size ``pixel_um``)."""
        p = float(pixel_um)
        h, w = int(shape[0]), int(shape[1])

        def place(c: float, n: int) -> tuple[int, float]:
            g = float(c) / p + 0.5 - n / 2.0  # lattice coordinate of pixel 0's centre
            k = math.floor(g + 0.5)
            return k, round((g - k) / PHASE_QUANTUM) * PHASE_QUANTUM

        n_x, phi_x = place(center_um[0], w)
        n_y, phi_y = place(center_um[1], h)
        return cls(n_x, n_y, phi_x, phi_y, p, h, w)

    def bbox_um(self) -> tuple[float, float, float, float]:
        """Stage extent (xmin, ymin, xmax, ymax) of the frame's pixels (µm)."""
        p = self.pixel_um
        return (
            (self.n_x + self.phi_x - 0.5) * p,
            (self.n_y + self.phi_y - 0.5) * p,
            (self.n_x + self.width - 0.5 + self.phi_x) * p,
            (self.n_y + self.height - 0.5 + self.phi_y) * p,
        )

    def coarse_range(self, step: int) -> tuple[int, int, int, int]:
        """Coarse lattice indices (jy0, jx0, ny, nx) covering the frame plus one point."""
        jy0 = self.n_y // step
        jx0 = self.n_x // step
        jy1 = (self.n_y + self.height - 1) // step + 1
        jx1 = (self.n_x + self.width - 1) // step + 1
        return jy0, jx0, jy1 - jy0 + 1, jx1 - jx0 + 1


def coarse_step(pixel_um: float) -> int:
    """Coarse lattice step (pixels): 2 for pixels of 0.8 µm or more, else 4 (0.9-3 µm)."""
    return 2 if pixel_um >= 0.8 else 4


# ---------------------------------------------------------------- upsampling


def _lerp_phases(dst: F32, src: F32, factor: int, src_origin: int, dst_origin: int, axis: int) -> None:
    """Linear interpolation along one axis, one strided phase at a time.

    Destination line ``g`` (global index ``dst_origin + i``) lies between
    source lines ``g // factor`` and the next with weight ``(g mod
    factor)/factor``.
    """
    n = dst.shape[axis]

    def lines(a: F32, start: int, stop: int | None, step: int = 1) -> F32:
        return a[start:stop:step] if axis == 0 else a[:, start:stop:step]

    diff = lines(src, 1, None) - lines(src, 0, -1)
    for k in range(factor):
        first = (k - dst_origin) % factor  # first destination line of phase k
        count = len(range(first, n, factor))
        if count == 0:
            continue
        j0 = (dst_origin + first) // factor - src_origin
        out = lines(dst, first, None, factor)
        base = lines(src, j0, j0 + count)
        if k == 0:
            out[...] = base
        else:
            np.multiply(lines(diff, j0, j0 + count), np.float32(k / factor), out=out)
            out += base


def upsample(
    src: F32, factor: int, src_origin: tuple[int, int], dst_origin: tuple[int, int], *, out: F32
) -> F32:
    """Bilinear upsampling between nested global lattices, written to ``out``.

    ``out[r, c]`` is the point with global index ``dst_origin + (r, c)``;
    ``src[i, j]`` the point ``factor·(src_origin + (i, j))`` of the same
    index space. Weights depend on global indices only, so overlapping
    frames agree.
    """
    rows = np.empty((src.shape[0], out.shape[1]), dtype=np.float32)
    _lerp_phases(rows, src, factor, src_origin[1], dst_origin[1], axis=1)
    _lerp_phases(out, rows, factor, src_origin[0], dst_origin[0], axis=0)
    return out


# ------------------------------------------------------------------ objects


@dataclass
class StripObjects:
    """Strip objects of one section, ready to render (stage µm, sorted by centre y).

    Attributes
    ----------
    x_um, y_um : (N,) float arrays
        Object centres (selection).
    x0_um, x1_um : (N,) float arrays
        Horizontal extent of each object.
    cy0_um : (N,) float array
        Bottom of each object's row 0; rows are ``strip_um`` high.
    n_rows : (N,) int array
    first, count : (N,) int arrays
        Each object's strips ``first : first + count`` in the strip arrays.
    strip_row : (M,) int array
    strip_x0_um, strip_x1_um : (M,) float arrays
    emission : (N,) float array
        Photons / ms / µm² at the reference objective.
    depth_um : (N,) float array
        Depth of each object below the section's focal surface.
    order : (N,) int array
        Global rendering order (ascending).
    """

    x_um: F64
    y_um: F64
    x0_um: F64
    x1_um: F64
    cy0_um: F64
    n_rows: I64
    first: I64
    count: I64
    strip_row: I64
    strip_x0_um: F64
    strip_x1_um: F64
    emission: F64
    depth_um: F64
    order: I64
    strip_um: float
    max_reach_um: float

    def select(self, box: tuple[float, float, float, float]) -> I64:
        """Objects whose centre lies in the box (indices, ascending)."""
        lo = int(np.searchsorted(self.y_um, box[1], side="left"))
        hi = int(np.searchsorted(self.y_um, box[3], side="right"))
        x = self.x_um[lo:hi]
        return lo + np.flatnonzero((x >= box[0]) & (x <= box[2]))


@dataclass
class Nuclei:
    """DAPI nuclei of one section (ellipses; stage µm, sorted by y).

    ``quad`` holds ``(A, B, C)`` with ``q² = A dx² + 2B dx dy + C dy²`` (=1 on
    the edge), ``half`` the ellipse's bounding half-extents, ``radius_index``
    the row of :data:`optics.NUCLEUS_RADII_UM` (the equivalent radius).
    """

    x_um: F64
    y_um: F64
    quad: F64  # (N, 3)
    half: F64  # (N, 2)
    radius_index: I64
    radius_um: F64
    emission: F64
    depth_um: F64
    order: I64
    max_reach_um: float

    def select(self, box: tuple[float, float, float, float]) -> I64:
        """Nuclei whose centre lies in the box (indices, ascending)."""
        lo = int(np.searchsorted(self.y_um, box[1], side="left"))
        hi = int(np.searchsorted(self.y_um, box[3], side="right"))
        x = self.x_um[lo:hi]
        return lo + np.flatnonzero((x >= box[0]) & (x <= box[2]))


_SIZE_CLASSES = np.array(
    [2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
)


def _size_class(n: I64) -> I64:
    """Round sizes up to a few classes, so stamps of similar size share one batch."""
    i = np.searchsorted(_SIZE_CLASSES, n)
    big = i >= len(_SIZE_CLASSES)
    return np.where(big, (n + 511) // 512 * 512, _SIZE_CLASSES[np.minimum(i, len(_SIZE_CLASSES) - 1)])


def _scatter(dst: F32, rows0: I64, cols0: I64, stamps: F32) -> None:
    """Add stamps (N, R, C) whose corner is at dst index (rows0, cols0); crops.

    One ``add.at`` in stamp order, so every pixel sums its contributions in
    the same order whichever frame it belongs to.
    """
    h, w = dst.shape
    _, sr, sc = stamps.shape
    rr = rows0[:, None] + np.arange(sr)
    cc = cols0[:, None] + np.arange(sc)
    ok_r = (rr >= 0) & (rr < h)
    ok_c = (cc >= 0) & (cc < w)
    if ok_r.all() and ok_c.all():
        idx = (rr * w)[:, :, None] + cc[:, None, :]
        np.add.at(dst.reshape(-1), idx.reshape(-1), stamps.reshape(-1))
        return
    keep = ok_r[:, :, None] & ok_c[:, None, :]
    idx = (rr * w)[:, :, None] + cc[:, None, :]
    np.add.at(dst.reshape(-1), idx[keep], stamps[keep])


@dataclass(frozen=True)
class Target:
    """A buffer on the global lattice: element (i, j) is global point (oy + i, ox + j)·step."""

    buffer: F32
    origin_y: int
    origin_x: int
    step: int


def _is_wide(sigma_px: F64, coarse_step: int) -> NDArray[np.bool_]:
    """Which (object, component) units go to the coarse lattice: sigma ≥ one coarse step."""
    return np.asarray(sigma_px >= coarse_step)


def render_strip_objects(
    frame: Target,
    wide: WideLayers,
    objs: StripObjects,
    sel: I64,
    lattice: FrameLattice,
    defocus_um: F64,
    psf: PsfTable,
    *,
    only: str,
) -> None:
    """Render strip objects convolved with the PSF mixture.

    Components narrower than the coarse step are added to ``frame`` as exact
    stamps (``only="narrow"``); wider ones are accumulated in ``wide``
    (``only="wide"``), to be blurred into the coarse lattice first.

    Parameters
    ----------
    frame : Target
        The frame's pixel buffer (step 1).
    wide : WideLayers
        The frame's coarse-lattice layers.
    objs : StripObjects
    sel : (N,) int array
        Objects to render, in global order.
    lattice : FrameLattice
    defocus_um : (N,) float array
        Defocus of each selected object.
    psf : PsfTable
    """
    if len(sel) == 0:
        return
    p = lattice.pixel_um
    weights, sigmas = psf.at(defocus_um)
    sig_px = sigmas / p
    for k in range(N_COMPONENTS):
        is_wide = _is_wide(sig_px[:, k], wide.step)
        gain = weights[:, k] * objs.emission[sel] * wide.scale
        if only == "narrow" and (~is_wide).any():
            _strip_stamps(frame, objs, sel[~is_wide], lattice, sig_px[~is_wide, k], gain[~is_wide])
        if only == "wide" and is_wide.any():
            wide.add_strips(objs, sel[is_wide], sig_px[is_wide, k], gain[is_wide])


def _strip_stamps(
    target: Target, objs: StripObjects, sel: I64, lattice: FrameLattice, s_px: F64, gain: F64
) -> None:
    p = lattice.pixel_um
    reach = STAMP_SIGMAS * s_px
    xa = objs.x0_um[sel] / p - lattice.phi_x
    xb = objs.x1_um[sel] / p - lattice.phi_x
    ya = objs.cy0_um[sel] / p - lattice.phi_y
    yb = (objs.cy0_um[sel] + objs.n_rows[sel] * objs.strip_um) / p - lattice.phi_y
    c0 = np.floor(xa - reach).astype(np.int64)
    r0 = np.floor(ya - reach).astype(np.int64)
    n_c = _size_class(np.floor(xb + reach).astype(np.int64) - c0 + 1)
    n_r = _size_class(np.floor(yb + reach).astype(np.int64) - r0 + 1)
    n_s = _size_class(objs.count[sel])
    simple = objs.count[sel] == objs.n_rows[sel]  # strip j is row j
    keys = ((n_s * 4096 + n_r) * 4096 + n_c) * 2 + simple
    row_px = objs.strip_um / p
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        is_simple = bool(key % 2)
        ns, nr, nc = int(key // 2 // 4096**2), int(key // 2 // 4096 % 4096), int(key // 2 % 4096)
        o = sel[idx]
        # strips of each object, padded with empty strips
        ar = np.arange(ns)
        have = ar[None, :] < objs.count[o, None]
        sidx = np.where(have, objs.first[o, None] + ar[None, :], objs.first[o, None])
        lx = objs.strip_x0_um[sidx] / p - lattice.phi_x
        rx = np.where(have, objs.strip_x1_um[sidx] / p - lattice.phi_x, lx)
        row = np.where(have, objs.strip_row[sidx], 0)
        s = s_px[idx]
        ax = interval_response(np.concatenate([lx, rx], axis=1), s, c0[idx], nc)
        edges_y = ya[idx, None] + np.arange(ns + 1)[None, :] * row_px
        ay = interval_response(edges_y, s, r0[idx], nr)
        u = ax[:, :ns]
        u -= ax[:, ns:]
        v_rows = ay[:, :-1]
        v_rows -= ay[:, 1:]
        v = v_rows if is_simple else np.take_along_axis(v_rows, row[:, :, None], axis=1)  # (n, S, nr)
        v *= (s * s * gain[idx]).astype(np.float32)[:, None, None]
        stamps = np.matmul(v.transpose(0, 2, 1), u)
        _scatter(target.buffer, r0[idx] - target.origin_y, c0[idx] - target.origin_x, stamps)


def render_nuclei(
    frame: Target,
    wide: WideLayers,
    nuc: Nuclei,
    sel: I64,
    lattice: FrameLattice,
    defocus_um: F64,
    psf: PsfTable,
    discs: DiscTable,
    *,
    only: str,
) -> None:
    """Render nuclei: narrow components from the disc table, wide ones on the coarse lattice.

    ``only`` selects which (see :func:`render_strip_objects`).
    """
    if len(sel) == 0:
        return
    p = lattice.pixel_um
    d = np.abs(defocus_um)
    grid = discs.defocus_um
    j = np.clip(np.searchsorted(grid, d), 0, len(grid) - 1)
    j = np.where((j > 0) & (np.abs(grid[j - 1] - d) < np.abs(grid[j] - d)), j - 1, j)
    sig_px = psf.sigma_um[j] / p
    for k in range(N_COMPONENTS):
        is_wide = _is_wide(sig_px[:, k], wide.step)
        if only == "narrow" and (~is_wide).any():
            _nucleus_stamps(frame, nuc, sel[~is_wide], lattice, j[~is_wide], k, discs, wide.scale)
        if only == "wide" and is_wide.any():
            gain = psf.weight[j[is_wide], k] * nuc.emission[sel[is_wide]] * wide.scale
            wide.add_nuclei(nuc, sel[is_wide], sig_px[is_wide, k], gain)


def _nucleus_stamps(
    target: Target,
    nuc: Nuclei,
    sel: I64,
    lattice: FrameLattice,
    dz_row: I64,
    k: int,
    discs: DiscTable,
    scale: float,
) -> None:
    p = lattice.pixel_um
    ri = nuc.radius_index[sel]
    r_eq = nuc.radius_um[sel]
    r_max = discs.r_max_um[k, ri, dz_row]
    grow = r_max / r_eq
    cx = nuc.x_um[sel] / p - lattice.phi_x
    cy = nuc.y_um[sel] / p - lattice.phi_y
    hx = nuc.half[sel, 0] * grow / p
    hy = nuc.half[sel, 1] * grow / p
    c0 = np.floor(cx - hx).astype(np.int64)
    r0 = np.floor(cy - hy).astype(np.int64)
    n_c = _size_class(np.floor(cx + hx).astype(np.int64) - c0 + 1)
    n_r = _size_class(np.floor(cy + hy).astype(np.int64) - r0 + 1)
    keys = n_r * 4096 + n_c
    n_samp = discs.profile.shape[-1]
    flat = discs.profile[k].reshape(-1)
    for key in np.unique(keys):
        nr, nc = int(key // 4096), int(key % 4096)
        idx = np.flatnonzero(keys == key)
        o = sel[idx]
        dx = ((c0[idx, None] + np.arange(nc)[None, :] - cx[idx, None]) * p).astype(np.float32)
        dy = ((r0[idx, None] + np.arange(nr)[None, :] - cy[idx, None]) * p).astype(np.float32)
        qa, qb, qc = (nuc.quad[o, i].astype(np.float32)[:, None, None] for i in range(3))
        q = qa * (dx * dx)[:, None, :] + qc * (dy * dy)[:, :, None]
        q += (2.0 * qb) * (dy[:, :, None] * dx[:, None, :])
        np.sqrt(q, out=q)
        q *= ((n_samp - 1) * r_eq[idx] / r_max[idx]).astype(np.float32)[:, None, None]
        np.minimum(q, np.float32(n_samp - 1.001), out=q)
        i0 = q.astype(np.intp)
        q -= i0
        i0 += ((ri[idx] * len(discs.defocus_um) + dz_row[idx]) * n_samp).astype(np.intp)[:, None, None]
        a = np.take(flat, i0)
        b = np.take(flat, i0 + 1)
        b -= a
        b *= q
        b += a
        b *= (scale * nuc.emission[o]).astype(np.float32)[:, None, None]
        _scatter(target.buffer, r0[idx] - target.origin_y, c0[idx] - target.origin_x, b)


# ------------------------------------------------------------- wide layers

FIXED_POINT = float(2**24)
"""Wide-layer areas are summed as integers in units of 2⁻²⁴ (order-independent)."""
SIGMA_CLASS_RATIO = 1.2
KERNEL_SIGMAS = 3.0


class WideLayers:
    """Exact area layers on the frame's coarse lattice, one per sigma class.

    Parameters
    ----------
    lattice : FrameLattice
    step : int
        Coarse step (pixels).
    origin : (int, int)
        Coarse indices ``(jy0, jx0)`` of the frame's coarse buffer.
    shape : (int, int)
        Its shape.
    scale : float
        Photons/ms per pixel for a unit emission density covering a pixel.
    """

    def __init__(
        self, lattice: FrameLattice, step: int, origin: tuple[int, int], shape: tuple[int, int], scale: float
    ) -> None:
        self.lattice = lattice
        self.step = step
        self.origin = origin
        self.shape = shape
        self.scale = scale
        self._layers: dict[int, tuple[NDArray[np.int64], NDArray[np.int64], int]] = {}

    @staticmethod
    def sigma_class(sigma_px: F64) -> I64:
        """Class index of sigmas (pixels): ``floor(log(σ) / log 1.2)``."""
        return np.floor(np.log(sigma_px) / math.log(SIGMA_CLASS_RATIO)).astype(np.int64)

    @staticmethod
    def class_sigma(k: int) -> float:
        """Representative sigma (pixels) of a class: its geometric centre."""
        return float(SIGMA_CLASS_RATIO ** (k + 0.5))

    def pad(self, k: int) -> int:
        """Coarse points beyond the frame's coarse range a class's kernel reaches."""
        return math.ceil(KERNEL_SIGMAS * self.class_sigma(k) / self.step) + 1

    def reach_um(self, sigma_px: float) -> float:
        """Distance (µm) beyond the frame from which a wide unit of this sigma contributes."""
        return (KERNEL_SIGMAS * 1.13 * sigma_px + 2 * self.step) * self.lattice.pixel_um

    def _layer(self, k: int) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
        if k not in self._layers:
            pad = self.pad(k)
            ny, nx = self.shape[0] + 2 * pad, self.shape[1] + 2 * pad
            # strips: a difference array along x (one spare column); nuclei: cell areas
            self._layers[k] = (np.zeros((ny, nx + 1), np.int64), np.zeros((ny, nx), np.int64), pad)
        return self._layers[k]

    def add_strips(self, objs: StripObjects, sel: I64, sigma_px: F64, gain: F64) -> None:
        """Accumulate the strips of wide units (cell areas times ``gain``)."""
        cls = self.sigma_class(sigma_px)
        lat = self.lattice
        p = lat.pixel_um
        m = self.step
        row_px = objs.strip_um / p
        for k in np.unique(cls):
            u = np.flatnonzero(cls == k)
            o = sel[u]
            diff, _, pad = self._layer(int(k))
            ny, nx1 = diff.shape
            oy, ox = self.origin[0] - pad, self.origin[1] - pad
            counts = objs.count[o]
            strip = np.repeat(objs.first[o], counts) + ragged_arange(counts)
            g = np.repeat(gain[u], counts) * (m * m) * FIXED_POINT
            # cell coordinates: cell j spans [(j − ½)m, (j + ½)m] pixels
            a = (objs.strip_x0_um[strip] / p - lat.phi_x) / m + 0.5 - ox
            b = (objs.strip_x1_um[strip] / p - lat.phi_x) / m + 0.5 - ox
            y0 = (np.repeat(objs.cy0_um[o], counts) + objs.strip_row[strip] * objs.strip_um) / p - lat.phi_y
            ya = y0 / m + 0.5 - oy
            yb = ya + row_px / m
            r0 = np.floor(ya).astype(np.int64)
            split = np.minimum(yb, r0 + 1.0)
            for row, wy in ((r0, split - ya), (r0 + 1, np.maximum(yb - (r0 + 1.0), 0.0))):
                ok = (row >= 0) & (row < ny) & (wy > 0.0)
                if not ok.any():
                    continue
                amp = g[ok] * wy[ok]
                rr = row[ok]
                q = np.rint(amp).astype(np.int64)
                for edge, sign in ((a[ok], 1), (b[ok], -1)):
                    fl = np.floor(edge)
                    col = np.clip(fl.astype(np.int64), 0, nx1 - 1)
                    col1 = np.clip(fl.astype(np.int64) + 1, 0, nx1 - 1)
                    first = np.rint((1.0 - (edge - fl)) * amp).astype(np.int64)
                    flat = diff.reshape(-1)
                    np.add.at(flat, rr * nx1 + col, sign * first)
                    np.add.at(flat, rr * nx1 + col1, sign * (q - first))

    def add_nuclei(self, nuc: Nuclei, sel: I64, sigma_px: F64, gain: F64) -> None:
        """Accumulate the cell areas of nuclei (edges antialiased over one cell)."""
        cls = self.sigma_class(sigma_px)
        lat = self.lattice
        p = lat.pixel_um
        m = self.step
        cell_um = m * p
        for k in np.unique(cls):
            u = np.flatnonzero(cls == k)
            o = sel[u]
            _, area, pad = self._layer(int(k))
            ny, nx = area.shape
            oy, ox = self.origin[0] - pad, self.origin[1] - pad
            cx = (nuc.x_um[o] / p - lat.phi_x) / m - ox  # coarse point coordinates
            cy = (nuc.y_um[o] / p - lat.phi_y) / m - oy
            hx = nuc.half[o, 0] / cell_um + 1.0
            hy = nuc.half[o, 1] / cell_um + 1.0
            n = math.ceil(2 * max(hx.max(), hy.max())) + 2
            c0 = np.floor(cx - hx).astype(np.int64)
            r0 = np.floor(cy - hy).astype(np.int64)
            dx = ((c0[:, None] + np.arange(n)) - cx[:, None]) * cell_um
            dy = ((r0[:, None] + np.arange(n)) - cy[:, None]) * cell_um
            qa, qb, qc = (nuc.quad[o, i][:, None, None] for i in range(3))
            q = np.sqrt(
                qa * dx[:, None, :] ** 2 + 2 * qb * dy[:, :, None] * dx[:, None, :] + qc * dy[:, :, None] ** 2
            )
            dist = (q - 1.0) * nuc.radius_um[o][:, None, None]
            frac = np.clip(0.5 - dist / cell_um, 0.0, 1.0)
            val = np.rint(frac * (gain[u] * (m * m) * FIXED_POINT)[:, None, None]).astype(np.int64)
            rr = r0[:, None] + np.arange(n)
            cc = c0[:, None] + np.arange(n)
            ok = ((rr >= 0) & (rr < ny))[:, :, None] & ((cc >= 0) & (cc < nx))[:, None, :]
            idx = (np.clip(rr, 0, ny - 1) * nx)[:, :, None] + np.clip(cc, 0, nx - 1)[:, None, :]
            np.add.at(area.reshape(-1), idx[ok], val[ok])

    def blur_into(self, coarse: F32) -> None:
        """Blur every class layer by its Gaussian and add it to the coarse buffer."""
        m = self.step
        for k in sorted(self._layers):
            diff, area, pad = self._layers[k]
            cover = np.cumsum(diff, axis=1)[:, :-1]
            cover += area
            layer = (cover / (FIXED_POINT * m * m)).astype(np.float32)
            sig2 = self.class_sigma(k) ** 2 - m * m / 12.0 + 1.0 / 12.0
            taps = np.arange(-pad + 1, pad, dtype=np.float64) * m
            g = np.exp(-0.5 * taps * taps / sig2)
            g = (g / g.sum()).astype(np.float32)
            ny, nx = self.shape
            half = len(g) // 2
            rows = _shift_sum(layer, g, axis=1)  # (ny + 2pad, nx + 2pad - 2half)
            out = _shift_sum(rows, g, axis=0)
            off = pad - half
            coarse += out[off : off + ny, off : off + nx]


def ragged_arange(counts: I64) -> I64:
    """``concatenate([arange(c) for c in counts])``."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def _shift_sum(a: F32, w: F32, axis: int) -> F32:
    """Valid convolution with a symmetric kernel by summing shifted slices (fixed order)."""
    n = a.shape[axis] - len(w) + 1
    out = None
    for i, wi in enumerate(w):
        part = (a[i : i + n] if axis == 0 else a[:, i : i + n]) * wi
        out = part if out is None else out + part
    assert out is not None
    return out


# ---------------------------------------------------------------- background


@dataclass
class Fields:
    """A section's background fields on a 4 µm stage grid (uint8 codes).

    ``tissue``/``gray``: signed distance to the tissue / gray-matter boundary
    (µm, positive inside) as ``128 + 8·d`` clipped to 0..255; ``texture``:
    ``1 + (code − 128)/400``. Cell ``(i, j)`` is centred at ``origin + 4·(j, i)``.
    """

    origin_um: tuple[float, float]
    tissue: NDArray[np.uint8]
    gray: NDArray[np.uint8]
    texture: NDArray[np.uint8]
    bbox_um: tuple[float, float, float, float]


FIELD_UM = 4.0
TISSUE_EDGE_UM = 1.0
"""Width of the tissue edge (µm): autofluorescence ramps over it."""
GRAY_EDGE_UM = 12.0
"""Width of the gray/white transition (µm)."""


def _interp_axis(codes: NDArray[np.uint8] | F32, pos: NDArray[np.floating], first: int, axis: int) -> F32:
    """Linear interpolation along an axis at grid positions ``pos`` (within the grid).

    ``codes`` holds grid lines ``first, first + 1, …``; weights come from
    ``pos`` alone, so they do not depend on which lines were cut out.
    """
    whole = np.floor(pos)
    t = (pos - whole).astype(np.float32)
    i = whole.astype(np.intp) - first
    n = codes.shape[axis]
    a = np.take(codes, np.clip(i, 0, n - 1), axis=axis).astype(np.float32)
    b = np.take(codes, np.clip(i + 1, 0, n - 1), axis=axis).astype(np.float32)
    shape = [1, 1]
    shape[axis] = len(pos)
    b -= a
    b *= t.reshape(shape)
    b += a
    return b


def add_background(
    coarse: Target,
    lattice: FrameLattice,
    fields: Sequence[Fields],
    rates: tuple[float, float],
    scale: float,
) -> None:
    """Add tissue background (white and gray rates per µm², times ``scale``) to the coarse lattice."""
    m = coarse.step
    p = lattice.pixel_um
    ny, nx = coarse.buffer.shape
    xs = ((coarse.origin_x + np.arange(nx)) * m + lattice.phi_x) * p
    ys = ((coarse.origin_y + np.arange(ny)) * m + lattice.phi_y) * p
    for f in fields:
        fx = (xs - f.origin_um[0]) / FIELD_UM
        fy = (ys - f.origin_um[1]) / FIELD_UM
        hc, wc = f.tissue.shape
        # the grid has a glass margin: points outside it get nothing from this section
        cols = np.flatnonzero((fx >= 0.0) & (fx <= wc - 1))
        rows = np.flatnonzero((fy >= 0.0) & (fy <= hc - 1))
        if len(cols) == 0 or len(rows) == 0:
            continue
        r_lo = int(np.floor(fy[rows[0]]))
        r_hi = min(int(np.floor(fy[rows[-1]])) + 2, hc)
        vals = [
            _interp_axis(_interp_axis(codes[r_lo:r_hi], fx[cols], 0, 1), fy[rows], r_lo, 0)
            for codes in (f.tissue, f.gray, f.texture)
        ]
        d_t, d_g, tex = vals
        # codes → µm and fractions
        tissue = d_t
        tissue -= np.float32(128.0)
        tissue *= np.float32(1.0 / (8.0 * TISSUE_EDGE_UM))
        tissue += np.float32(0.5)
        np.clip(tissue, 0.0, 1.0, out=tissue)
        gray = d_g
        gray -= np.float32(128.0)
        gray *= np.float32(1.0 / (8.0 * GRAY_EDGE_UM))
        gray += np.float32(0.5)
        np.clip(gray, 0.0, 1.0, out=gray)
        gray *= np.float32((rates[1] - rates[0]) * scale)
        gray += np.float32(rates[0] * scale)
        tex -= np.float32(128.0)
        tex *= np.float32(1.0 / 400.0)
        tex += np.float32(1.0)
        gray *= tex
        gray *= tissue
        coarse.buffer[np.ix_(rows, cols)] += gray
