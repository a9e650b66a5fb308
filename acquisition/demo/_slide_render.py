"""Tile-local, deterministic rendering of the virtual slide (private helpers).

Every value is a function of the continuous stage position, never of where
a frame happens to start. Two tricks make that exact, bit for bit:

* A frame is placed on a *global pixel lattice*: pixel centres sit at
  ``x = (G + phi) * p`` for integer ``G``; ``phi`` (the sub-pixel phase) is
  quantised to 2**-20 px so that frames whose centres differ by a whole
  number of pixels share it exactly. Object positions are then expressed
  relative to a frame by subtracting integers only, which is exact in
  float64, so a stamp lands on the same global pixels with the same values.
* Coarse fields (tissue autofluorescence, blurred objects) live on lattices
  aligned to the same global pixel grid (every ``m``-th pixel) and are
  interpolated with weights that depend on the global index only.

Objects (nuclei, axon discs) are splatted as small stamps, in object order
(``np.add.at``), with an analytic soft edge: the value falls linearly in
squared distance from radius ``R − L/2`` to ``R + L/2``, where ``L =
2.5·sigma`` and ``sigma`` combines the defocus blur, the in-focus PSF and
the pixel's own width. The amplitude is renormalised so the integrated
signal is conserved, so peaks drop as objects blur. Strongly blurred objects
are drawn on a coarser lattice (step ``2**k`` pixels, ``k`` chosen per
object from its blur) and upsampled, which keeps stamps small whatever the
defocus; the tissue background lives on such a lattice too. No full-frame
filter is ever run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

PHASE_QUANTUM = 2.0**-20
MAP_SPACING_UM = 4.0
"""Spacing of the per-section tissue coverage maps (global lattice, µm)."""
MAP_SCALE = 200.0
"""uint8 coverage maps store ``coverage * texture * MAP_SCALE``."""
MAX_LEVEL = 5


@dataclass(frozen=True)
class FrameGrid:
    """Placement of a camera frame on the global pixel lattice.

    Pixel ``(r, c)`` of the frame has its centre at stage
    ``x = (n_x + c + phi_x) * p``, ``y = (n_y + r + phi_y) * p`` (µm), which
    equals ``xc + (c + 0.5 - W/2) * p`` up to the 2**-20 px phase quantum.
    """

    n_x: int
    n_y: int
    phi_x: float
    phi_y: float
    pixel_size_um: float
    height: int
    width: int

    @classmethod
    def from_center(
        cls, center_um: tuple[float, float], pixel_size_um: float, shape: tuple[int, int]
    ) -> FrameGrid:
        p = float(pixel_size_um)
        h, w = int(shape[0]), int(shape[1])

        def split(c: float, n_pix: int) -> tuple[int, float]:
            u0 = c / p - n_pix / 2.0 + 0.5
            n = math.floor(u0 + 0.5)
            return n, round((u0 - n) / PHASE_QUANTUM) * PHASE_QUANTUM

        n_x, phi_x = split(float(center_um[0]), w)
        n_y, phi_y = split(float(center_um[1]), h)
        return cls(n_x, n_y, phi_x, phi_y, p, h, w)

    def bbox_um(self) -> tuple[float, float, float, float]:
        """Frame extent (xmin, ymin, xmax, ymax) in µm, pixel edges included."""
        p = self.pixel_size_um
        return (
            (self.n_x + self.phi_x - 0.5) * p,
            (self.n_y + self.phi_y - 0.5) * p,
            (self.n_x + self.width - 0.5 + self.phi_x) * p,
            (self.n_y + self.height - 0.5 + self.phi_y) * p,
        )


@dataclass(frozen=True)
class Optics:
    """Blur model inferred from the pixel size.

    Assumes a 6.5 µm camera pixel, so ``p = 0.65`` is a 10x/0.45 objective:
    in-focus PSF sigma ``0.45·p`` and geometric defocus blur ``kappa·|dz|``
    with ``kappa ≈ NA/2``.
    """

    psf_sigma_um: float
    defocus_slope: float
    pixel_size_um: float

    @classmethod
    def for_pixel_size(cls, pixel_size_um: float) -> Optics:
        p = float(pixel_size_um)
        return cls(psf_sigma_um=0.45 * p, defocus_slope=min(0.5, 0.143 / p), pixel_size_um=p)

    def sigma_um(self, defocus_um: F64) -> F64:
        """Optical blur sigma (µm) for a defocus (µm), elementwise."""
        return np.sqrt(self.psf_sigma_um**2 + (self.defocus_slope * defocus_um) ** 2)


@dataclass(frozen=True)
class FocalPlane:
    """Focal plane z (µm) over the slide: tilt plus gentle waviness, plus optional local bumps.

    ``bumps`` are anisotropic Gaussians ``(x, y, amplitude, sigma_major,
    sigma_minor, angle_rad)`` in µm: ``amplitude · exp(−½(a²/σ_major² +
    b²/σ_minor²))``, ``(a, b)`` the offset from ``(x, y)`` rotated by ``−angle``.
    """

    z_ref_um: float
    ref_xy_um: tuple[float, float]
    tilt_um_per_mm: tuple[float, float]
    wave_amplitude_um: tuple[float, float]
    wave_length_um: tuple[float, float]
    wave_phase: tuple[float, float]
    bumps: tuple[tuple[float, float, float, float, float, float], ...] = ()

    def fx(self, x_um: F64) -> F64:
        return self.tilt_um_per_mm[0] * (np.asarray(x_um) - self.ref_xy_um[0]) / 1000.0 + (
            self.wave_amplitude_um[0]
            * np.sin(2 * np.pi * np.asarray(x_um) / self.wave_length_um[0] + self.wave_phase[0])
        )

    def fy(self, y_um: F64) -> F64:
        return self.tilt_um_per_mm[1] * (np.asarray(y_um) - self.ref_xy_um[1]) / 1000.0 + (
            self.wave_amplitude_um[1]
            * np.sin(2 * np.pi * np.asarray(y_um) / self.wave_length_um[1] + self.wave_phase[1])
        )

    def bump_um(self, x_um: F64, y_um: F64) -> F64:
        """Sum of the local bumps at (x, y) (µm; broadcasts)."""
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape))
        for bx, by, amp, s_major, s_minor, angle in self.bumps:
            c, s = np.cos(angle), np.sin(angle)
            dx, dy = x - bx, y - by
            a = (c * dx + s * dy) / s_major
            b = (c * dy - s * dx) / s_minor
            out = out + amp * np.exp(-0.5 * (a * a + b * b))
        return out

    def z_um(self, x_um: F64, y_um: F64) -> F64:
        z = self.z_ref_um + self.fx(x_um) + self.fy(y_um)
        return z + self.bump_um(x_um, y_um) if self.bumps else z

    def range_over(self, bbox_um: tuple[float, float, float, float]) -> tuple[float, float]:
        """Bounds of the focal plane over a box (tilt at the corners ± waves ± nearby bumps)."""
        x0, y0, x1, y1 = bbox_um
        corners = self.z_ref_um + np.add.outer(
            self.tilt_um_per_mm[0] * (np.array([x0, x1]) - self.ref_xy_um[0]) / 1000.0,
            self.tilt_um_per_mm[1] * (np.array([y0, y1]) - self.ref_xy_um[1]) / 1000.0,
        )
        wave = abs(self.wave_amplitude_um[0]) + abs(self.wave_amplitude_um[1])
        lo, hi = float(corners.min() - wave), float(corners.max() + wave)
        for bx, by, amp, s_major, _, _ in self.bumps:
            reach = 5.0 * s_major
            if bx + reach > x0 and bx - reach < x1 and by + reach > y0 and by - reach < y1:
                lo += min(0.0, amp)
                hi += max(0.0, amp)
        return lo, hi


@dataclass(frozen=True)
class ObjectSet:
    """Fluorescent objects of one section and channel, sorted by y then x.

    Row-major order makes consecutive stamps touch nearby memory.

    Each object is an ellipse (a disc when ``isotropic``) with shape matrix
    ``M = [[m11, m12], [m12, m22]]`` (µm², ``x^T M^-1 x = 1`` on its edge)
    and in-focus brightness ``amp`` (photons/ms/pixel).
    """

    x_um: F64
    y_um: F64
    m11: F32
    m12: F32
    m22: F32
    amp: F32
    isotropic: bool
    max_radius_um: float

    @classmethod
    def empty(cls) -> ObjectSet:
        z = np.zeros(0)
        z32 = np.zeros(0, np.float32)
        return cls(z, z, z32, z32, z32, z32, True, 0.0)

    @classmethod
    def build(
        cls,
        x_um: F64,
        y_um: F64,
        m11: F64,
        m12: F64,
        m22: F64,
        amp: F64,
        *,
        isotropic: bool,
    ) -> ObjectSet:
        order = np.lexsort((np.asarray(x_um), np.asarray(y_um)))
        m11 = np.asarray(m11, np.float64)[order]
        m22 = np.asarray(m22, np.float64)[order]
        m12 = np.asarray(m12, np.float64)[order]
        lam = 0.5 * (m11 + m22) + np.sqrt(0.25 * (m11 - m22) ** 2 + m12**2)
        return cls(
            np.asarray(x_um, np.float64)[order],
            np.asarray(y_um, np.float64)[order],
            m11.astype(np.float32),
            m12.astype(np.float32),
            m22.astype(np.float32),
            np.asarray(amp, np.float32)[order],
            isotropic,
            float(np.sqrt(lam.max())) if len(lam) else 0.0,
        )

    def select(self, bbox_um: tuple[float, float, float, float]) -> NDArray[np.int64]:
        """Return indices (in storage order) of objects whose centre lies in the box."""
        lo = int(np.searchsorted(self.y_um, bbox_um[1], side="left"))
        hi = int(np.searchsorted(self.y_um, bbox_um[3], side="right"))
        x = self.x_um[lo:hi]
        return lo + np.flatnonzero((x >= bbox_um[0]) & (x <= bbox_um[2]))


# ------------------------------------------------------------------ objects


def _profile_integral_um2(inner2: F64, outer2: F64) -> F64:
    """Integrate ``clip((B − d²)/(B − A), 0, 1)`` over the plane (µm²).

    ``A = inner2``, ``B = outer2``; ``A`` may be negative when blur swamps
    the object.
    """
    return np.where(
        inner2 >= 0.0,
        0.5 * np.pi * (inner2 + outer2),
        0.5 * np.pi * outer2**2 / (outer2 - inner2),
    )


@dataclass(frozen=True)
class _Prepared:
    """Per-object stamp parameters for one frame (see :func:`_prepare`).

    A stamp pixel at offset ``(dx, dy)`` (lattice steps) from the object
    centre gets ``amp · clip(a − Q, 0, 1)`` with ``Q = sx²·(dx + c·dy)² +
    rest·dy²``: a soft edge linear in squared distance.
    """

    v_x: F64  # x / p − phi_x: position on the global pixel lattice
    v_y: F64
    sx: F64
    c: F64
    rest: F64
    a: F64
    amp: F64
    ext_x: F64  # support half-extent in lattice steps
    ext_y: F64
    level: NDArray[np.int64]  # lattice step is 2**level pixels
    isotropic: bool


def _prepare(objects: ObjectSet, grid: FrameGrid, z_um: float, focal: FocalPlane) -> _Prepared | None:
    """Blur, amplitude and lattice level of the objects that reach the frame.

    The blurred object is the ellipse ``M + sigma²·I`` (``M`` its shape
    matrix) with a soft edge running from radius ``R − L/2`` to ``R + L/2``
    (``R`` its geometric-mean radius, ``L = 2.5·sigma_total``, where
    ``sigma_total`` adds the pixel's own width), scaled so that the
    integrated signal stays ``amp · area``.
    """
    if len(objects.x_um) == 0:
        return None
    p = grid.pixel_size_um
    optics = Optics.for_pixel_size(p)
    fb = grid.bbox_um()
    zlo, zhi = focal.range_over(fb)
    dz_max = max(abs(z_um - zlo), abs(z_um - zhi))
    sig_max = float(optics.sigma_um(np.array(dz_max)))
    sig_tot_max = math.sqrt(sig_max**2 + p * p / 12.0)
    margin = objects.max_radius_um + 2.7 * sig_tot_max + 2.0 ** (MAX_LEVEL + 2) * p + 1.0
    sel = objects.select((fb[0] - margin, fb[1] - margin, fb[2] + margin, fb[3] + margin))
    if len(sel) == 0:
        return None
    x = objects.x_um[sel]
    y = objects.y_um[sel]
    dz = z_um - focal.z_um(x, y)
    sig = optics.sigma_um(dz)
    sig2 = sig * sig
    sig_tot = np.sqrt(sig2 + p * p / 12.0)
    ramp = 2.5 * sig_tot
    m11 = objects.m11[sel].astype(np.float64)
    m12 = objects.m12[sel].astype(np.float64)
    m22 = objects.m22[sel].astype(np.float64)
    det0 = m11 * m22 - m12 * m12
    b11 = m11 + sig2
    b22 = m22 + sig2
    det = b11 * b22 - m12 * m12
    radius = det**0.25
    r_in = radius - 0.5 * ramp
    r_out = radius + 0.5 * ramp
    inner2 = r_in * np.abs(r_in)
    outer2 = r_out * r_out
    amp = objects.amp[sel] * (np.pi * np.sqrt(det0) / _profile_integral_um2(inner2, outer2))
    level = np.clip(np.floor(np.log2(sig_tot / (1.25 * p))), 0, MAX_LEVEL).astype(np.int64)
    step_um = (2.0**level) * p
    grow = r_out / radius  # support: x^T M'^-1 x <= grow²
    ext_x = grow * np.sqrt(b11)
    ext_y = grow * np.sqrt(b22)
    # keep objects whose stamp reaches the lattice points the frame needs
    # (coarser lattices extend up to ~2 steps beyond the frame)
    reach_x = ext_x + 2.0 * step_um + p
    reach_y = ext_y + 2.0 * step_um + p
    keep = np.flatnonzero(
        (x + reach_x >= fb[0]) & (x - reach_x <= fb[2]) & (y + reach_y >= fb[1]) & (y - reach_y <= fb[3])
    )
    if len(keep) == 0:
        return None
    # Q = d² / (B − A) in lattice steps: (R·step)² M'^-1 / (B − A)
    scale = (radius * step_um) ** 2 / det / (outer2 - inner2)
    q11 = b22 * scale
    q12 = -m12 * scale
    q22 = b11 * scale
    sx = np.sqrt(q11)
    return _Prepared(
        v_x=(x / p - grid.phi_x)[keep],
        v_y=(y / p - grid.phi_y)[keep],
        sx=sx[keep],
        c=(q12 / q11)[keep],
        rest=(q22 - q12 * q12 / q11)[keep],
        a=(outer2 / (outer2 - inner2))[keep],
        amp=amp[keep],
        ext_x=(ext_x / step_um)[keep],
        ext_y=(ext_y / step_um)[keep],
        level=level[keep],
        isotropic=objects.isotropic,
    )


def _stamp_span(centre: F64, ext: F64) -> tuple[NDArray[np.int64], NDArray[np.int64], F64]:
    """First lattice index, count and offset of the first point from the centre.

    Covers exactly the points within ``ext`` of ``centre``. Everything is
    derived from the exact fractional part of ``centre``, so shifting a
    centre by whole steps shifts the stamp and nothing else.
    """
    whole = np.floor(centre)
    frac = centre - whole  # exact
    first = np.ceil(frac - ext)
    count = (np.floor(frac + ext) - first).astype(np.int64) + 1
    return whole.astype(np.int64) + first.astype(np.int64), count, first - frac


def _splat_level(prep: _Prepared, lev: int, dst: F32, origin_y: int, origin_x: int) -> None:
    """Splat the objects of one lattice level into ``dst``.

    Point ``(0, 0)`` of ``dst`` is global lattice index ``(origin_y,
    origin_x)`` at step ``2**lev`` pixels. Objects are grouped by stamp size;
    within a group they keep their storage order, so every pixel always
    accumulates its contributions in the same order.
    """
    sel = np.flatnonzero(prep.level == lev)
    hb, wb = dst.shape
    m = 1 << lev
    col0, n_x, dx0 = _stamp_span((prep.v_x[sel] - m * origin_x) / m, prep.ext_x[sel])
    row0, n_y, dy0 = _stamp_span((prep.v_y[sel] - m * origin_y) / m, prep.ext_y[sel])
    # an object smaller than a lattice step may fall between lattice points
    hit = (n_x > 0) & (n_y > 0)
    if not hit.all():
        sel, col0, n_x, row0, n_y = sel[hit], col0[hit], n_x[hit], row0[hit], n_y[hit]
        dx0, dy0 = dx0[hit], dy0[hit]
    if len(sel) == 0:
        return
    # group sizes rounded up to even counts: the extra row/column lies beyond
    # the support (its values clip to 0) and there are 4x fewer groups
    n_x = n_x + (n_x & 1)
    n_y = n_y + (n_y & 1)
    size_x = int(n_x.max())
    size_y = int(n_y.max())
    cols = col0[:, None] + np.arange(size_x)
    rows = row0[:, None] + np.arange(size_y)
    dx = dx0[:, None] + np.arange(size_x)  # lattice steps from the centre
    dy = dy0[:, None] + np.arange(size_y)
    f32 = np.float32
    sx = prep.sx[sel, None]
    # Q = sx²(dx + c·dy)² + rest·dy²; value = clip(a − Q, 0, 1)·amp.
    # Off-frame rows/columns get sentinels that clip to 0.
    along: F32 | None = None
    if prep.isotropic:
        across = ((sx * dx) ** 2).astype(f32)
        down = (prep.a[sel, None] - (sx * dy) ** 2).astype(f32)
    else:
        across = (sx * dx).astype(f32)
        along = (sx * prep.c[sel, None] * dy).astype(f32)
        down = (prep.a[sel, None] - prep.rest[sel, None] * dy * dy).astype(f32)
    across[(cols < 0) | (cols >= wb)] = _OFF_FRAME
    down[(rows < 0) | (rows >= hb)] = -_OFF_FRAME
    amp = prep.amp[sel].astype(f32)
    base = row0 * wb + col0
    flat_dst = dst.reshape(-1)
    key = n_y * 4096 + n_x
    for k in np.unique(key):
        group = np.flatnonzero(key == k)
        sy_b = int(k // 4096)
        sx_b = int(k % 4096)
        pattern = np.arange(sy_b)[:, None] * wb + np.arange(sx_b)
        per_chunk = max(1, _CHUNK // (sy_b * sx_b))
        for s in range(0, len(group), per_chunk):
            g = group[s : s + per_chunk]
            if along is None:
                val = down[g, :sy_b, None] - across[g, None, :sx_b]
            else:
                val = along[g, :sy_b, None] + across[g, None, :sx_b]
                np.multiply(val, val, out=val)
                np.subtract(down[g, :sy_b, None], val, out=val)
            np.clip(val, 0.0, 1.0, out=val)
            val *= amp[g, None, None]
            flat = base[g, None, None] + pattern
            edge = (row0[g] < 0) | (row0[g] + sy_b > hb) | (col0[g] < 0) | (col0[g] + sx_b > wb)
            if edge.any():
                e = g[edge]
                flat[edge] = (np.clip(rows[e, :sy_b], 0, hb - 1) * wb)[:, :, None] + np.clip(
                    cols[e, :sx_b], 0, wb - 1
                )[:, None, :]
            np.add.at(flat_dst, flat.reshape(-1), val.reshape(-1))


def background_level(pixel_size_um: float) -> int:
    """Lattice level of the tissue background.

    The step ``2**level`` pixels is the power of two nearest
    ``MAP_SPACING_UM``, at least 4 px (autofluorescence is smooth; a finer
    lattice would only cost time at low magnification).
    """
    return int(np.clip(round(math.log2(MAP_SPACING_UM / pixel_size_um)), 2, MAX_LEVEL + 1))


def render_frame(
    out: F32,
    grid: FrameGrid,
    z_um: float,
    focal: FocalPlane,
    maps: list[CoverageMap],
    rates: tuple[float, float],
    object_sets: list[ObjectSet],
) -> None:
    """Render tissue background and objects into ``out`` (every pixel written).

    Background and blurred objects are accumulated on lattices of step
    ``2**k`` pixels aligned to the global pixel grid, cascaded from coarse to
    fine by bilinear upsampling (only through the levels that hold
    something) and written to ``out`` in one full-resolution pass; sharp
    objects are then splatted directly.
    """
    prepared = [q for q in (_prepare(o, grid, z_um, focal) for o in object_sets) if q is not None]
    k_bg = background_level(grid.pixel_size_um) if maps else 0
    levels = {int(k) for q in prepared for k in np.unique(q.level)} | {k_bg}
    levels.discard(0)
    if not levels:
        out.fill(0.0)
    else:
        top = max(levels)
        # lattice index ranges per level: level k covers what level k-1 needs
        lo_y, hi_y = [grid.n_y], [grid.n_y + grid.height - 1]
        lo_x, hi_x = [grid.n_x], [grid.n_x + grid.width - 1]
        for _ in range(top):
            lo_y.append(lo_y[-1] // 2)
            hi_y.append(hi_y[-1] // 2 + 1)
            lo_x.append(lo_x[-1] // 2)
            hi_x.append(hi_x[-1] // 2 + 1)
        coarse: F32 | None = None
        coarse_k = 0
        for k in sorted(levels, reverse=True):
            buf = np.zeros((hi_y[k] - lo_y[k] + 1, hi_x[k] - lo_x[k] + 1), dtype=np.float32)
            if coarse is not None:
                f = 1 << (coarse_k - k)
                upsample_into(
                    buf, coarse, f, lo_y[k] - f * lo_y[coarse_k], lo_x[k] - f * lo_x[coarse_k], add=True
                )
            if k == k_bg:
                m = 1 << k
                x = (np.arange(lo_x[k], hi_x[k] + 1, dtype=np.float64) * m + grid.phi_x) * grid.pixel_size_um
                y = (np.arange(lo_y[k], hi_y[k] + 1, dtype=np.float64) * m + grid.phi_y) * grid.pixel_size_um
                _add_background(buf, maps, rates, x, y, z_um, focal, grid.pixel_size_um)
            for q in prepared:
                _splat_level(q, k, buf, lo_y[k], lo_x[k])
            coarse, coarse_k = buf, k
        assert coarse is not None
        f = 1 << coarse_k
        upsample_into(out, coarse, f, grid.n_y - f * lo_y[coarse_k], grid.n_x - f * lo_x[coarse_k], add=False)
    for q in prepared:
        _splat_level(q, 0, out, grid.n_y, grid.n_x)


_OFF_FRAME = np.float32(1e18)  # squared, still finite in float32
_CHUNK = 1 << 19  # stamp points per batch


# ---------------------------------------------------------------- lattices


def _lerp_axis(dst: F32, src: F32, m: int, off: int, axis: int, *, add: bool) -> None:
    """Linear interpolation along ``axis`` from lattice lines to pixel lines.

    Pixel line ``r`` of ``dst`` sits at lattice position ``(r + off) / m``;
    ``src`` holds the lattice lines (enough of them). Each phase ``k = (r +
    off) mod m`` is one strided 2-D operation with weight ``k / m``; the value
    is always ``src[j] + (k/m)·(src[j+1] − src[j])``, so it depends on the
    global index only.
    """

    def sl(a: F32, start: int, stop: int | None, step: int = 1) -> F32:
        return a[start:stop:step] if axis == 0 else a[:, start:stop:step]

    n_dst = dst.shape[axis]
    diff = sl(src, 1, None) - sl(src, 0, -1)
    scratch = np.empty_like(diff)
    for k in range(m):
        r_k = (k - off) % m
        n = len(range(r_k, n_dst, m))
        if n == 0:
            continue
        j0 = (r_k + off) // m
        lines = sl(dst, r_k, None, m)
        base = sl(src, j0, j0 + n)
        if k == 0:
            if add:
                lines += base
            else:
                lines[...] = base
        elif add:
            tmp = np.multiply(sl(diff, j0, j0 + n), np.float32(k / m))
            tmp += base
            lines += tmp
        else:
            # one write per output element; the product stays in a small buffer
            step = np.multiply(sl(diff, j0, j0 + n), np.float32(k / m), out=sl(scratch, 0, n))
            np.add(base, step, out=lines)


def upsample_into(dst: F32, lattice: F32, m: int, off_y: int, off_x: int, *, add: bool) -> None:
    """Bilinear upsampling of a step-``m`` lattice into ``dst``.

    Lattice point ``(j, i)`` sits at pixel ``(m·j − off_y, m·i − off_x)``;
    the weights depend on global indices only, so overlapping frames agree.
    """
    rows = np.empty((lattice.shape[0], dst.shape[1]), dtype=np.float32)
    _lerp_axis(rows, lattice, m, off_x, 1, add=False)
    _lerp_axis(dst, rows, m, off_y, 0, add=add)


@dataclass(frozen=True)
class CoverageMap:
    """White- and gray-matter coverage of one section on the global 4 µm lattice.

    ``white[j, i]`` is the (textured) white-matter coverage at stage
    ``(4·(i0 + i), 4·(j0 + j))`` µm, times ``MAP_SCALE``; one zero border
    cell surrounds the tissue.
    """

    i0: int
    j0: int
    white: NDArray[np.uint8]
    gray: NDArray[np.uint8]


_BLUR_SIGMA_CELLS = 2.0
_BLUR_RADIUS_CELLS = 6


def _blur_weights() -> F32:
    k = np.arange(-_BLUR_RADIUS_CELLS, _BLUR_RADIUS_CELLS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / _BLUR_SIGMA_CELLS) ** 2)
    return (w / w.sum()).astype(np.float32)


def _shift_sum(block: F32, wts: F32, axis: int) -> F32:
    """Valid-mode convolution by summing shifted slices.

    Every output element sees the same operations in the same order, so the
    result does not depend on where the block starts.
    """
    n = block.shape[axis] - len(wts) + 1
    out: F32 | None = None
    for k, wk in enumerate(wts):
        sl = [slice(None), slice(None)]
        sl[axis] = slice(k, k + n)
        term = block[tuple(sl)] * wk
        out = term if out is None else out + term
    assert out is not None
    return out


def _map_block(
    cmap: CoverageMap, rows: slice, cols: slice, white_rate: float, gray_rate: float, pad: int
) -> F32:
    """Channel value (photons/ms) on a block of the map, zero-extended by ``pad``."""
    hm, wm = cmap.white.shape
    r0, r1 = rows.start - pad, rows.stop + pad
    c0, c1 = cols.start - pad, cols.stop + pad
    out = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
    rr0, rr1 = max(r0, 0), min(r1, hm)
    cc0, cc1 = max(c0, 0), min(c1, wm)
    if rr1 > rr0 and cc1 > cc0:
        wsub = cmap.white[rr0:rr1, cc0:cc1].astype(np.float32)
        gsub = cmap.gray[rr0:rr1, cc0:cc1].astype(np.float32)
        wsub *= np.float32(white_rate / MAP_SCALE)
        gsub *= np.float32(gray_rate / MAP_SCALE)
        wsub += gsub
        out[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = wsub
    return out


def _sample_separable(block: F32, jj: NDArray[np.int64], ty: F32, ii: NDArray[np.int64], tx: F32) -> F32:
    left = block[:, ii]
    rows = left + tx[None, :] * (block[:, ii + 1] - left)
    top = rows[jj]
    return top + ty[:, None] * (rows[jj + 1] - top)


def sample_coverage(
    cmap: CoverageMap,
    x_um: F64,
    y_um: F64,
    white_rate: float,
    gray_rate: float,
    blur_weight: F32 | None,
) -> F32:
    """Tissue background (photons/ms) at the tensor grid ``y_um × x_um``.

    ``blur_weight`` (shape (len(y), len(x)), in [0, 1]) blends toward a
    version blurred by 8 µm, for defocus; ``None`` means sharp everywhere.
    """
    out = np.zeros((len(y_um), len(x_um)), dtype=np.float32)
    hm, wm = cmap.white.shape
    xi = x_um / MAP_SPACING_UM - cmap.i0
    yj = y_um / MAP_SPACING_UM - cmap.j0
    i_fl = np.floor(xi)
    j_fl = np.floor(yj)
    okx = (i_fl >= 0) & (i_fl < wm - 1)
    oky = (j_fl >= 0) & (j_fl < hm - 1)
    if not okx.any() or not oky.any():
        return out
    cx = np.flatnonzero(okx)
    ry = np.flatnonzero(oky)
    ii = i_fl[cx].astype(np.int64)
    jj = j_fl[ry].astype(np.int64)
    tx = (xi[cx] - i_fl[cx]).astype(np.float32)
    ty = (yj[ry] - j_fl[ry]).astype(np.float32)
    c_lo, c_hi = int(ii.min()), int(ii.max()) + 2
    r_lo, r_hi = int(jj.min()), int(jj.max()) + 2
    sharp = _map_block(cmap, slice(r_lo, r_hi), slice(c_lo, c_hi), white_rate, gray_rate, 0)
    val = _sample_separable(sharp, jj - r_lo, ty, ii - c_lo, tx)
    if blur_weight is not None:
        beta = blur_weight[np.ix_(ry, cx)]
        if beta.max() > 0.0:
            pad = _BLUR_RADIUS_CELLS
            wide = _map_block(cmap, slice(r_lo, r_hi), slice(c_lo, c_hi), white_rate, gray_rate, pad)
            wts = _blur_weights()
            blurred = _shift_sum(_shift_sum(wide, wts, 1), wts, 0)
            bval = _sample_separable(blurred, jj - r_lo, ty, ii - c_lo, tx)
            val = val + beta * (bval - val)
    out[np.ix_(ry, cx)] = val
    return out


def _add_background(
    buf: F32,
    maps: list[CoverageMap],
    rates: tuple[float, float],
    x_um: F64,
    y_um: F64,
    z_um: float,
    focal: FocalPlane,
    pixel_size_um: float,
) -> None:
    """Add tissue autofluorescence (photons/ms) at the lattice ``y_um × x_um``."""
    optics = Optics.for_pixel_size(pixel_size_um)
    dz = z_um - (focal.z_ref_um + focal.fy(y_um)[:, None] + focal.fx(x_um)[None, :])
    if focal.bumps:
        dz -= focal.bump_um(x_um[None, :], y_um[:, None])
    beta = np.clip((optics.sigma_um(dz) - 1.0) / 7.0, 0.0, 1.0).astype(np.float32)
    for cmap in maps:
        buf += sample_coverage(cmap, x_um, y_um, rates[0], rates[1], beta)


# ------------------------------------------------------------------ truth


def rasterize_discs(mask: NDArray[np.bool_], cx_px: F64, cy_px: F64, radius_px: F64) -> None:
    """Set ``mask`` where a pixel centre ``(c, r)`` lies strictly inside a disc."""
    if len(cx_px) == 0:
        return
    h, w = mask.shape
    half = int(np.ceil(radius_px.max())) + 1
    size = 2 * half + 1
    offs = np.arange(size, dtype=np.int64) - half
    flat = mask.reshape(-1)
    per_chunk = max(1, _CHUNK // (size * size))
    for s in range(0, len(cx_px), per_chunk):
        e = s + per_chunk
        col = np.round(cx_px[s:e]).astype(np.int64)[:, None] + offs
        row = np.round(cy_px[s:e]).astype(np.int64)[:, None] + offs
        dx2 = (col - cx_px[s:e, None]) ** 2
        dy2 = (row - cy_px[s:e, None]) ** 2
        inside = dy2[:, :, None] + dx2[:, None, :] < (radius_px[s:e] ** 2)[:, None, None]
        inside &= ((row >= 0) & (row < h))[:, :, None]
        inside &= ((col >= 0) & (col < w))[:, None, :]
        idx = (row * w)[:, :, None] + col[:, None, :]
        flat[idx[inside]] = True
