"""Where to focus in a section and the focus surface through those points (pure geometry)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: A surface is quadratic from this many (inlier) points on, a plane below.
MIN_POINTS_QUADRATIC = 6

#: A section needs this many successful focus points for a surface of its own;
#: with fewer it gets the global surface through all points of the slide.
MIN_POINTS_SECTION_SURFACE = 3


# ============================================================ focus points


def _polygon_vertices(polygon_um: ArrayLike) -> FloatArray:
    poly = np.asarray(polygon_um, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2:
        raise ValueError(f"polygon_um must be an (N, 2) array of stage µm, got shape {poly.shape}")
    if len(poly) > 1 and np.array_equal(poly[0], poly[-1]):
        poly = poly[:-1]  # closed ring: drop the repeated vertex
    if len(poly) < 3 or not np.all(np.isfinite(poly)):
        raise ValueError("polygon_um needs at least 3 finite vertices")
    return poly


def _signed_area_and_centroid(poly: FloatArray) -> tuple[float, FloatArray]:
    x, y = poly[:, 0] - poly[0, 0], poly[:, 1] - poly[0, 1]  # shifted for precision
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = 0.5 * float(cross.sum())
    if area == 0.0:
        return 0.0, poly.mean(axis=0)
    cx = float(((x + xn) * cross).sum()) / (6.0 * area)
    cy = float(((y + yn) * cross).sum()) / (6.0 * area)
    return area, np.array([cx + poly[0, 0], cy + poly[0, 1]])


def _inside(poly: FloatArray, pts: FloatArray) -> NDArray[np.bool_]:
    """Even-odd rule, vectorised over points (M, 2)."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0][None, :], poly[:, 1][None, :]
    x1, y1 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    hits = straddles & (x < x_cross)
    return np.asarray(hits.sum(axis=1) % 2 == 1)


def _distance_to_boundary(poly: FloatArray, pts: FloatArray) -> FloatArray:
    a = poly[None, :, :]
    b = np.roll(poly, -1, axis=0)[None, :, :]
    p = pts[:, None, :]
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=2), 1e-300)
    t = np.clip(((p - a) * ab).sum(axis=2) / denom, 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.asarray(np.sqrt(((p - closest) ** 2).sum(axis=2)).min(axis=1))


def _ray_exit_um(poly: FloatArray, start: FloatArray, direction: FloatArray) -> float:
    """Distance from ``start`` along unit ``direction`` to the first polygon edge."""
    a = poly
    e = np.roll(poly, -1, axis=0) - poly
    w = a - start
    denom = direction[0] * e[:, 1] - direction[1] * e[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[:, 0] * e[:, 1] - w[:, 1] * e[:, 0]) / denom
        u = (w[:, 0] * direction[1] - w[:, 1] * direction[0]) / denom
    ok = (denom != 0) & (t > 0) & (u >= 0) & (u <= 1)
    return float(t[ok].min()) if np.any(ok) else 0.0


def _principal_axes(poly: FloatArray) -> tuple[FloatArray, FloatArray, float, float]:
    """Return unit major/minor axes and the outline's spread (µm, SD) along each."""
    # resample the outline evenly by arc length, so dense vertices do not bias the axes
    closed = np.vstack([poly, poly[:1]])
    seg = np.sqrt((np.diff(closed, axis=0) ** 2).sum(axis=1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], 512, endpoint=False)
    ring = np.column_stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])])
    evals, evecs = np.linalg.eigh(np.cov(ring.T))
    major, minor = evecs[:, 1], evecs[:, 0]
    return major, minor, float(np.sqrt(max(evals[1], 0.0))), float(np.sqrt(max(evals[0], 0.0)))


def _ring_angles(k: int, offset: float = 0.0) -> FloatArray:
    # An odd number of evenly spaced angles: no two points opposite each other,
    # so no three focus points are collinear with the centre and a single bad
    # point stays identifiable by the surface fit (see FocusSurface).
    slots = k if k % 2 == 1 else k + 1
    return offset + 2.0 * np.pi * np.arange(k) / slots


def focus_points_in_polygon(polygon_um: ArrayLike, n: int, *, reach: float = 0.65) -> FloatArray:
    """Well-spread focus points strictly inside a section outline.

    The first point is the centroid (or, for an outline whose centroid lies
    outside it, the inside point farthest from its edge). The others lie on
    a ring around it, ``reach`` of the way from it to the outline, in
    directions evenly spread in the frame of the outline's principal axes
    (so an elongated horizontal section gets points along its length); from
    8 points on, a third of them sit on an inner ring at half that reach.
    Rings have an odd number of direction slots, so no two points are
    opposite each other through the centre: three collinear points would
    let a bad focus point hide from the surface fit.

    Parameters
    ----------
    polygon_um : (N, 2) float array
        Section outline in stage µm (open or closed ring, no holes).
    n : int
        Number of points, ≥ 1.
    reach : float
        Fraction (0, 1) of the way from the centre to the outline.

    Returns
    -------
    (n, 2) float array
        Stage positions (x, y) in µm, all strictly inside the outline.

    Raises
    ------
    ValueError
        Fewer than 3 vertices, zero area, ``n < 1`` or ``reach`` outside (0, 1).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < reach < 1.0:
        raise ValueError(f"reach must be in (0, 1), got {reach!r}")
    poly = _polygon_vertices(polygon_um)
    area, centre = _signed_area_and_centroid(poly)
    if abs(area) <= 1e-9 * float(np.ptp(poly, axis=0).max()) ** 2:
        raise ValueError("polygon_um has zero area")
    if not (_inside(poly, centre[None])[0] and _distance_to_boundary(poly, centre[None])[0] > 0):
        # concave outline: the inside point farthest from the edge, on a 64 × 64 grid
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 66)[1:-1], np.linspace(lo[1], hi[1], 66)[1:-1])
        cand = np.column_stack([gx.ravel(), gy.ravel()])
        cand = cand[_inside(poly, cand)]
        centre = cand[int(np.argmax(_distance_to_boundary(poly, cand)))]

    n = int(n)
    m = n - 1
    m_outer = m if m < 7 else math.ceil(2 * m / 3)
    m_inner = m - m_outer
    major, minor, sd_major, sd_minor = _principal_axes(poly)
    sd_minor = max(sd_minor, 1e-3 * sd_major)
    rings = [(_ring_angles(m_outer), reach)]
    if m_inner:
        rings.append((_ring_angles(m_inner, offset=np.pi / max(m_inner, 1)), reach / 2.0))

    points = [centre]
    for angles, frac in rings:
        for theta in angles:
            d = np.cos(theta) * sd_major * major + np.sin(theta) * sd_minor * minor
            d /= np.linalg.norm(d)
            exit_um = _ray_exit_um(poly, centre, d)
            f = frac
            p = centre + f * exit_um * d
            # a concave outline can make the point land outside: pull it in
            while (
                not (_inside(poly, p[None])[0] and _distance_to_boundary(poly, p[None])[0] > 0) and f > 1e-3
            ):
                f /= 2.0
                p = centre + f * exit_um * d
            points.append(p)
    return np.asarray(points, dtype=np.float64).reshape(n, 2)


# ============================================================ focus surface

SurfaceModel = Literal["constant", "plane", "quadratic"]
_N_PARAMS: dict[str, int] = {"constant": 1, "plane": 3, "quadratic": 6}


def _design(model: str, u: FloatArray, v: FloatArray) -> FloatArray:
    cols = [np.ones_like(u)]
    if model in ("plane", "quadratic"):
        cols += [u, v]
    if model == "quadratic":
        cols += [u * u, u * v, v * v]
    return np.stack(cols, axis=-1)


def _model_for(n_points: int) -> str:
    if n_points >= MIN_POINTS_QUADRATIC:
        return "quadratic"
    if n_points >= 3:
        return "plane"
    return "constant"


def _lstsq(model: str, u: FloatArray, v: FloatArray, z: FloatArray) -> FloatArray:
    coef, *_ = np.linalg.lstsq(_design(model, u, v), z, rcond=None)
    return np.asarray(coef, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class FocusSurface:
    """Focus z (µm) over the stage: a robust least-squares surface through focus points.

    Model by the number of inlier points: one or two points → constant (their
    mean), 3–5 → plane ``z = a + b·x + c·y``, ≥ :data:`MIN_POINTS_QUADRATIC`
    → quadratic ``+ d·x² + e·x·y + f·y²`` (slide waviness) — but only if a
    plane leaves an RMS residual above ``plane_tolerance_um``: a quadratic
    through few points amplifies focus noise between and beyond them, so it
    is used only where curvature is really there. Coordinates are
    centred on the points' mean and scaled to mm for conditioning
    (``origin_um``, ``scale_um``); points along a line leave the slope across
    it at 0 (minimum-norm fit). Outside the points' hull a quadratic
    extrapolates; keep focus points spread over the section.

    Robustness: while at least two more points than the screening model has
    parameters remain, the point whose removal leaves the best fit is tested;
    it is dropped if its residual from the fit without it, divided by
    ``sqrt(1 + leverage)`` (a prediction far from the other points is less
    certain), exceeds both ``outlier_mad_factor`` × the robust SD (1.4826 ×
    MAD) of the other residuals and ``outlier_floor_um``. One point at a
    time, then refit. The screening model is the largest
    that can be tested this way (a plane for 5–7 points, the final model
    otherwise), so a quadratic through 6–7 points is screened as a plane.
    With 4 or fewer points nothing can be screened.

    Build with :meth:`fit` or :meth:`constant`.

    Attributes
    ----------
    model : {"constant", "plane", "quadratic"}
    coefficients : tuple of float
        In the order of the model's terms, in scaled coordinates
        ``u = (x − origin_x)/scale``, ``v = (y − origin_y)/scale``.
    origin_um : (float, float)
    scale_um : float
    points_um : (K, 3) float array
        All points given (x, y, z in µm), including dropped outliers.
    inliers : (K,) bool array
        Points the final fit used.
    rms_residual_um : float
        RMS residual of the inliers (µm).
    """

    model: SurfaceModel
    coefficients: tuple[float, ...]
    origin_um: tuple[float, float]
    scale_um: float
    points_um: FloatArray = field(repr=False)
    inliers: NDArray[np.bool_] = field(repr=False)
    rms_residual_um: float

    @classmethod
    def constant(cls, z_um: float) -> FocusSurface:
        """Return a flat surface at ``z_um`` (the "fixed" focus strategy)."""
        if not math.isfinite(z_um):
            raise ValueError(f"z_um must be finite, got {z_um!r}")
        return cls(
            model="constant",
            coefficients=(float(z_um),),
            origin_um=(0.0, 0.0),
            scale_um=1000.0,
            points_um=np.zeros((0, 3)),
            inliers=np.zeros(0, dtype=bool),
            rms_residual_um=0.0,
        )

    @classmethod
    def fit(
        cls,
        points_um: ArrayLike,
        *,
        outlier_mad_factor: float = 3.0,
        outlier_floor_um: float = 1.0,
        plane_tolerance_um: float = 0.5,
    ) -> FocusSurface:
        """Fit a surface through focus points, dropping outliers.

        Parameters
        ----------
        points_um : (K, 3) float array
            Focus points (x, y, z) in µm, K ≥ 1, all finite.
        outlier_mad_factor : float
            A point is an outlier beyond this many robust SDs of the others' residuals...
        outlier_floor_um : float
            ... and beyond this many µm (about half the depth of field of a
            10x/0.45 objective), so that near-exact fits drop nothing.
        plane_tolerance_um : float
            With ≥ :data:`MIN_POINTS_QUADRATIC` inliers, keep a plane unless
            its RMS residual exceeds this (µm; a fraction of the depth of field).

        Returns
        -------
        FocusSurface

        Raises
        ------
        ValueError
            If ``points_um`` is not (K, 3) with K ≥ 1 and finite values.
        """
        pts = np.asarray(points_um, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"points_um must be a (K, 3) array with K >= 1, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points_um must be finite (leave failed focus points out)")
        origin = pts[:, :2].mean(axis=0)
        scale = 1000.0  # mm: keeps the quadratic terms well conditioned
        u = (pts[:, 0] - origin[0]) / scale
        v = (pts[:, 1] - origin[1]) / scale
        z = pts[:, 2]
        keep = np.ones(len(pts), dtype=bool)

        while True:
            n_keep = int(keep.sum())
            final = _model_for(n_keep)
            screen = final if n_keep >= _N_PARAMS[final] + 2 else "plane"
            if n_keep < _N_PARAMS[screen] + 2:
                break
            idx = np.flatnonzero(keep)
            # (rms of the rest, index, residual, standardised residual, robust SD of the rest)
            best: tuple[float, int, float, float, float] | None = None
            for i in idx:
                rest = idx[idx != i]
                design_rest = _design(screen, u[rest], v[rest])
                coef = _lstsq(screen, u[rest], v[rest], z[rest])
                r_rest = z[rest] - design_rest @ coef
                rms = float(np.sqrt(np.mean(r_rest**2)))
                x_i = _design(screen, u[i : i + 1], v[i : i + 1])[0]
                r_i = float(z[i] - x_i @ coef)
                # a prediction far from the other points is uncertain: standardise the
                # residual by its leverage, 1 + x_i (XᵀX)⁻¹ x_iᵀ, before testing it
                lever = float(x_i @ np.linalg.pinv(design_rest.T @ design_rest) @ x_i)
                t_i = r_i / math.sqrt(1.0 + max(lever, 0.0))
                sd = 1.4826 * float(np.median(np.abs(r_rest - np.median(r_rest))))
                if best is None or rms < best[0]:
                    best = (rms, int(i), r_i, t_i, sd)
            assert best is not None
            _, i_worst, r_worst, t_worst, sd = best
            if abs(t_worst) > max(outlier_mad_factor * sd, outlier_floor_um):
                keep[i_worst] = False
                logger.info(
                    "focus point (%.0f, %.0f) µm z=%.2f µm dropped: %.2f µm off the surface of the others",
                    pts[i_worst, 0],
                    pts[i_worst, 1],
                    z[i_worst],
                    r_worst,
                )
            else:
                break

        final = _model_for(int(keep.sum()))
        coef = _lstsq(final, u[keep], v[keep], z[keep])
        resid = z[keep] - _design(final, u[keep], v[keep]) @ coef
        if final == "quadratic":
            plane_coef = _lstsq("plane", u[keep], v[keep], z[keep])
            plane_resid = z[keep] - _design("plane", u[keep], v[keep]) @ plane_coef
            if float(np.sqrt(np.mean(plane_resid**2))) <= plane_tolerance_um:
                final, coef, resid = "plane", plane_coef, plane_resid
        return cls(
            model=final,  # type: ignore[arg-type]
            coefficients=tuple(float(c) for c in coef),
            origin_um=(float(origin[0]), float(origin[1])),
            scale_um=scale,
            points_um=pts.copy(),
            inliers=keep,
            rms_residual_um=float(np.sqrt(np.mean(resid**2))),
        )

    def z_at(self, x_um: ArrayLike, y_um: ArrayLike) -> FloatArray:
        """Focus z (µm) at stage positions; broadcasts like numpy (0-d for scalars)."""
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        x, y = np.broadcast_arrays(x, y)
        u = (x - self.origin_um[0]) / self.scale_um
        v = (y - self.origin_um[1]) / self.scale_um
        return np.asarray(_design(self.model, u, v) @ np.asarray(self.coefficients), dtype=np.float64)
