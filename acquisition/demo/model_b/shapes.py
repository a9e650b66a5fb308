"""Model B section geometry: cords, butterflies, territories and lesions (private).

Everything is built with shapely polygons in a section's local frame (µm):
``u`` toward the animal's right and ``v`` toward ventral for coronal
sections (origin at the central canal); ``u`` rostro-caudal (rostral toward
−u) and ``v`` toward the animal's left for horizontal sections (origin at the
section's centre). The section's pose on the slide is applied afterwards.

Coronal cords are superellipses with a flatter dorsal half, reshaped by a
few smooth Fourier modes, cut by a ventral median fissure and a dorsal median
sulcus. The gray matter is a union of primitives (intermediate zone,
commissures, tapered dorsal horns with a cap, ventral horns, a lateral horn
at thoracic levels), mirrored, and rounded by a morphological closing. The
rubrospinal territory is the contralateral subpial band of white matter
between a ray just below the canal's horizontal and a ray 15° below the
dorsal horn's tip, away from the gray matter. Horizontal sections are long
bands with Fourier-rough edges, rounded ends, a wandering central gray band
and, in injured animals, an irregular cavity at the epicenter with the cord
narrowed around it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class CordShape:
    """Per-level parameters of model B's coronal cords (lengths in µm or fractions)."""

    width_um: float
    height_um: float
    squareness: float  # superellipse exponent (2 = ellipse)
    dorsal_fraction: float  # share of the height dorsal of the canal
    canal_diameter_um: float
    fissure_depth: float  # ventral median fissure, fraction of the half-height
    ventral_horn: tuple[float, float, float, float]  # centre u, v; semi-axes (fractions of a, b)
    dorsal_horn_tip: tuple[float, float]  # (u, v) fractions of (a, b)
    dorsal_horn_width: tuple[float, float]  # base and tip half-widths, fraction of a
    intermediate: tuple[float, float]  # semi-axes of the intermediate zone, fractions of (a, b)
    lateral_horn: bool
    territory_depth_um: float


CORD_SHAPES: Mapping[str, CordShape] = {
    "C5": CordShape(3450.0, 2350.0, 2.5, 0.47, 70.0, 0.30, (0.30, 0.42, 0.25, 0.33), (0.42, -0.78),
                    (0.13, 0.085), (0.26, 0.18), False, 330.0),
    "Th7": CordShape(2450.0, 1900.0, 2.2, 0.50, 55.0, 0.26, (0.22, 0.42, 0.15, 0.26), (0.34, -0.80),
                     (0.10, 0.07), (0.22, 0.15), True, 250.0),
    "L2": CordShape(2850.0, 2400.0, 2.3, 0.49, 62.0, 0.28, (0.27, 0.42, 0.22, 0.30), (0.44, -0.78),
                    (0.15, 0.10), (0.27, 0.17), False, 280.0),
}  # fmt: skip
"""Model B's cords per coronal level: wider and flatter at C5 with big ventral
horns, small and round at Th7 with thin horns and a lateral horn, round at L2
with broad dorsal horns."""

TERRITORY_PIA_GAP_UM = 8.0
TERRITORY_GRAY_GAP_UM = 25.0
GRAY_CLEARANCE_UM = 45.0


def _largest(geom: BaseGeometry) -> Polygon:
    if isinstance(geom, Polygon):
        return geom
    if isinstance(geom, MultiPolygon):
        return max(geom.geoms, key=lambda g: g.area)
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    if not parts:
        raise RuntimeError("geometry construction produced no polygon; try another seed")
    return max(parts, key=lambda g: g.area)


def _fourier(rng: np.random.Generator, t: F64, amps: tuple[float, ...]) -> F64:
    """Σ_k a_k·cos(k t + φ_k) with a_k ~ N(0, amps[k-1])."""
    out = np.zeros_like(t)
    for k, a in enumerate(amps, start=1):
        out += rng.normal(0.0, a) * np.cos(k * t + rng.uniform(0.0, 2.0 * np.pi))
    return out


def polygon_array(poly: Polygon) -> F64:
    """Exterior vertices of a polygon (open ring, counter-clockwise), µm."""
    ring = shapely.geometry.polygon.orient(poly, 1.0).exterior.coords
    return np.asarray(ring, dtype=np.float64)[:-1]


# ------------------------------------------------------------------ coronal


@dataclass(frozen=True)
class CoronalGeometry:
    """A coronal section in local µm (canal at the origin)."""

    outline: Polygon
    gray: Polygon
    canal: Polygon
    territory: Polygon  # on the tracer side
    dorsal_horn_tip_um: tuple[float, float]


def coronal_outline(shape: CordShape, rng: np.random.Generator) -> Polygon:
    """Cord outline: superellipse halves, Fourier modes, median fissure and sulcus."""
    a = shape.width_um / 2.0
    n = 480
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)  # 0 = right, π/2 = ventral
    c, s = np.cos(t), np.sin(t)
    e = shape.squareness * (1.0 + rng.normal(0.0, 0.03))
    b_d = shape.height_um * shape.dorsal_fraction
    b_v = shape.height_um - b_d
    b = np.where(s < 0.0, b_d, b_v)
    r = (np.abs(c / a) ** e + np.abs(s / b) ** e) ** (-1.0 / e)
    # symmetric modes (functions of |u|) plus a faint asymmetry
    sym = _fourier(rng, 2.0 * np.arctan2(s, np.abs(c)), (0.0, 0.012, 0.008, 0.006))
    r *= 1.0 + sym + 0.004 * rng.standard_normal() * c
    poly = Polygon(np.column_stack([r * c, r * s])).buffer(0)
    # ventral median fissure and dorsal median sulcus
    v_max = float(np.max(r * s))
    v_min = float(np.min(r * s))
    depth = shape.fissure_depth * b_v * (1.0 + rng.normal(0.0, 0.05))
    fissure = Polygon(
        [(-45.0, v_max + 50.0), (45.0, v_max + 50.0), (4.0, v_max - depth), (-4.0, v_max - depth)]
    )
    sulcus = Polygon([(-30.0, v_min - 50.0), (30.0, v_min - 50.0), (2.0, v_min + 55.0), (-2.0, v_min + 55.0)])
    poly = _largest(poly.difference(fissure).difference(sulcus))
    # exact target extent: scale, then place the canal (origin) between the halves
    x0, y0, x1, y1 = poly.bounds
    poly = affinity.scale(
        poly, shape.width_um / (x1 - x0), shape.height_um / (y1 - y0), origin=((x0 + x1) / 2, (y0 + y1) / 2)
    )
    x0, y0, x1, y1 = poly.bounds
    canal_v = y0 + shape.dorsal_fraction * (y1 - y0)
    return affinity.translate(poly, -(x0 + x1) / 2.0, -canal_v)


def _tapered_horn(
    base: tuple[float, float], tip: tuple[float, float], widths: tuple[float, float]
) -> Polygon:
    """A horn from base to tip, bending laterally, its half-width tapering."""
    (u0, v0), (u1, v1) = base, tip
    k = np.linspace(0.0, 1.0, 24)
    bend = 0.18 * math.hypot(u1 - u0, v1 - v0) * np.sin(np.pi * k)
    du, dv = u1 - u0, v1 - v0
    norm = math.hypot(du, dv)
    nu, nv = dv / norm, -du / norm  # lateral normal (toward +u for a dorsal horn)
    if nu < 0:
        nu, nv = -nu, -nv
    us = u0 + k * du + bend * nu
    vs = v0 + k * dv + bend * nv
    width = widths[0] + (widths[1] - widths[0]) * k
    discs = [Point(float(x), float(y)).buffer(float(w), 24) for x, y, w in zip(us, vs, width, strict=True)]
    horn = shapely.union_all(discs)
    cap = affinity.rotate(
        Point(float(us[-1]), float(vs[-1])).buffer(1.0, 32),
        math.degrees(math.atan2(dv, du)),
        origin=(float(us[-1]), float(vs[-1])),
    )
    cap = affinity.scale(cap, 2.4 * widths[1], 1.5 * widths[1], origin=(float(us[-1]), float(vs[-1])))
    return _largest(horn.union(cap))


def coronal_gray_matter(
    shape: CordShape, outline: Polygon, rng: np.random.Generator
) -> tuple[Polygon, tuple[float, float]]:
    """Butterfly of primitives, mirrored and rounded; shrunk until it clears the pia."""
    a = shape.width_um / 2.0
    b = shape.height_um / 2.0

    def j(x: float, sd: float = 0.05) -> float:
        return x * (1.0 + rng.normal(0.0, sd))

    iz_a, iz_b = shape.intermediate
    parts = [affinity.scale(Point(j(0.10) * a, 0.0).buffer(1.0, 48), j(iz_a) * a, j(iz_b) * b)]
    # dorsal and ventral commissures bridge the canal
    parts.append(affinity.scale(Point(0.0, -0.08 * b).buffer(1.0, 32), 0.12 * a, 0.07 * b))
    parts.append(affinity.scale(Point(0.0, 0.10 * b).buffer(1.0, 32), 0.12 * a, 0.08 * b))
    vu, vv, va, vb = shape.ventral_horn
    vh = affinity.scale(Point(j(vu) * a, j(vv) * b).buffer(1.0, 64), j(va) * a, j(vb) * b)
    vh = affinity.rotate(vh, rng.uniform(-25.0, -5.0))
    parts.append(vh)
    # the ventral horn's neck joins it to the intermediate zone
    neck = LineString([(0.08 * a, 0.02 * b), (vh.centroid.x, vh.centroid.y)])
    parts.append(neck.buffer(0.55 * min(va * a, vb * b), 16))
    tip = (j(shape.dorsal_horn_tip[0], 0.04) * a, j(shape.dorsal_horn_tip[1], 0.03) * b)
    w0, w1 = shape.dorsal_horn_width
    parts.append(_tapered_horn((0.16 * a, -0.04 * b), tip, (j(w0) * a, j(w1) * a)))
    if shape.lateral_horn:
        parts.append(affinity.scale(Point(0.30 * a, -0.02 * b).buffer(1.0, 32), 0.08 * a, 0.05 * b))
    right = shapely.union_all(parts)
    left = affinity.scale(right, -1.0, 1.0, origin=(0.0, 0.0))
    left = affinity.scale(left, 1.0 + rng.normal(0.0, 0.015), 1.0, origin=(0.0, 0.0))
    gray = _largest(right.union(left).buffer(30.0, 16).buffer(-30.0, 16)).simplify(0.5)
    inner = outline.buffer(-GRAY_CLEARANCE_UM)
    for _ in range(40):
        if inner.contains(gray):
            return gray, tip
        gray = affinity.scale(gray, 0.97, 0.97, origin=(0.0, 0.0))
        tip = (0.97 * tip[0], 0.97 * tip[1])
    raise RuntimeError("gray matter does not fit in the cord outline; try another seed")


def rubrospinal_territory(
    outline: Polygon, gray: Polygon, tip: tuple[float, float], side_sign: float, depth_um: float
) -> Polygon:
    """Subpial band between two rays from the canal, away from the gray matter.

    The band runs from just below the canal's horizontal (−3°) dorsally to
    15° short of the dorsal horn tip's direction, on the side ``side_sign``
    (+1 right, −1 left): the lateral-most dorsolateral funiculus.
    """
    hi = math.degrees(math.atan2(-tip[1], abs(tip[0]))) - 15.0
    lo = -3.0
    angles = np.radians(np.linspace(lo, hi, 64))
    reach = 10.0 * max(outline.bounds[2] - outline.bounds[0], outline.bounds[3] - outline.bounds[1])
    fan = [(0.0, 0.0)] + [(side_sign * reach * math.cos(t), -reach * math.sin(t)) for t in angles]
    sector = Polygon(fan)
    band = outline.buffer(-TERRITORY_PIA_GAP_UM).difference(outline.buffer(-depth_um))
    territory = sector.intersection(band).difference(gray.buffer(TERRITORY_GRAY_GAP_UM))
    return _largest(territory).simplify(0.25)


def coronal_geometry(level: str, side_sign: float, rng: np.random.Generator) -> CoronalGeometry:
    """Build one coronal section's geometry (local frame, canal at the origin)."""
    shape = CORD_SHAPES[level]
    outline = coronal_outline(shape, rng)
    gray, tip = coronal_gray_matter(shape, outline, rng)
    canal_r = shape.canal_diameter_um / 2.0 * (1.0 + rng.normal(0.0, 0.05))
    canal = Point(0.0, 0.0).buffer(canal_r, 32)
    if not gray.buffer(-30.0).contains(canal):
        raise RuntimeError("central canal does not fit in the gray matter; try another seed")
    territory = rubrospinal_territory(outline, gray, tip, side_sign, shape.territory_depth_um)
    return CoronalGeometry(outline, gray, canal, territory, tip)


# --------------------------------------------------------------- horizontal


@dataclass(frozen=True)
class HorizontalGeometry:
    """A horizontal section in local µm (centre at the origin)."""

    outline: Polygon
    gray: Polygon
    cavity: Polygon | None
    epicenter_u_um: float


HORIZONTAL_LENGTH_UM = 9000.0
HORIZONTAL_WIDTH_UM = 2150.0
GRAY_BAND_HALF_WIDTH_UM = 380.0
CAVITY_SEMI_AXES_UM: Mapping[str, tuple[float, float] | None] = {
    "intact": None,
    "vehicle": (620.0, 420.0),
    "treated": (480.0, 330.0),
}
"""Lesion cavity semi-axes (rostro-caudal, lateral) in µm by group."""

NARROWING: Mapping[str, float] = {"intact": 0.0, "vehicle": 0.12, "treated": 0.07}
"""Fractional narrowing of the cord at the epicenter by group."""


def _band(u: F64, upper: F64, lower: F64) -> Polygon:
    pts = np.concatenate([np.column_stack([u, upper]), np.column_stack([u[::-1], lower[::-1]])])
    return Polygon(pts).buffer(0)


def horizontal_geometry(group: str, cavity_factor: float, rng: np.random.Generator) -> HorizontalGeometry:
    """Build one horizontal section's geometry (local frame)."""
    half_len = HORIZONTAL_LENGTH_UM / 2.0 * (1.0 + rng.normal(0.0, 0.02))
    half_w = HORIZONTAL_WIDTH_UM / 2.0 * (1.0 + rng.normal(0.0, 0.03))
    epi = float(rng.uniform(-600.0, 300.0))
    u = np.linspace(-half_len, half_len, 1200)
    phase = 2.0 * np.pi * (u + half_len) / (2.0 * half_len)
    narrow = NARROWING[group] * np.exp(-0.5 * ((u - epi) / 650.0) ** 2)
    cap_len = 380.0
    tail = np.clip((np.abs(u) - (half_len - cap_len)) / cap_len, 0.0, 1.0)
    cap = np.sqrt(np.clip(1.0 - tail**2, 0.0, 1.0))
    top = half_w * (1.0 + _fourier(rng, phase, (0.02, 0.015, 0.01, 0.006, 0.004)) - narrow) * cap
    bottom = -half_w * (1.0 + _fourier(rng, phase, (0.02, 0.015, 0.01, 0.006, 0.004)) - narrow) * cap
    outline = _band(u, top, bottom).simplify(0.5)
    gu = u[np.abs(u) < half_len - 320.0]
    gphase = 2.0 * np.pi * (gu + half_len) / (2.0 * half_len)
    centre = 35.0 * _fourier(rng, gphase, (0.7, 0.5, 0.3))
    g_half = GRAY_BAND_HALF_WIDTH_UM * (1.0 + _fourier(rng, gphase, (0.04, 0.05, 0.03, 0.03)))
    g_tail = np.clip((np.abs(gu) - (half_len - 600.0)) / 280.0, 0.0, 1.0)
    g_half *= np.sqrt(np.clip(1.0 - g_tail**2, 0.02, 1.0))
    gray = _band(gu, centre + g_half, centre - g_half).simplify(0.5)
    gray = _largest(gray.intersection(outline.buffer(-GRAY_CLEARANCE_UM)))
    cavity = None
    axes = CAVITY_SEMI_AXES_UM[group]
    if axes is not None:
        t = np.linspace(0.0, 2.0 * np.pi, 256, endpoint=False)
        rough = 1.0 + _fourier(rng, t, (0.0, 0.06, 0.05, 0.04, 0.03, 0.02))
        ca, cb = axes[0] * cavity_factor, axes[1] * cavity_factor
        v_off = float(rng.uniform(-80.0, 80.0))
        cavity = Polygon(np.column_stack([epi + ca * rough * np.cos(t), v_off + cb * rough * np.sin(t)]))
        cavity = cavity.buffer(0).simplify(0.5)
        room = outline.buffer(-120.0)
        for _ in range(40):
            if room.contains(cavity):
                break
            cavity = affinity.scale(cavity, 0.95, 0.95, origin=(epi, v_off))
        else:
            raise RuntimeError("lesion cavity does not fit in the section; try another seed")
    return HorizontalGeometry(outline, gray, cavity, epi)


# ------------------------------------------------------------------ helpers


def boundary_points(geoms: list[Polygon], spacing_um: float) -> F64:
    """Points at most ``spacing_um`` apart along the boundaries of the polygons (vertices included)."""
    pts = []
    for g in geoms:
        for ring in [g.exterior, *g.interiors]:
            xy = np.asarray(ring.coords, dtype=np.float64)
            seg = np.hypot(*np.diff(xy, axis=0).T)
            n = np.maximum(1, np.ceil(seg / spacing_um).astype(np.int64))
            t = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n)
            start = np.repeat(xy[:-1], n, axis=0)
            step = np.repeat(np.diff(xy, axis=0), n, axis=0)
            pts.append(start + t[:, None] * step)
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def scanline_fill(
    geom: BaseGeometry, origin_um: tuple[float, float], step_um: float, shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """Grid points inside a (multi)polygon with holes (even-odd rule, by scanlines).

    Point ``(i, j)`` of the grid sits at ``origin + step·(j, i)`` (x, y); a
    point on an edge's upper end belongs to the row above (half-open rule).
    """
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    if geom.is_empty:
        return out
    rings = []
    for q in getattr(geom, "geoms", [geom]):
        if isinstance(q, Polygon):
            rings += [np.asarray(q.exterior.coords), *(np.asarray(r.coords) for r in q.interiors)]
    if not rings:
        return out
    e = np.concatenate([np.column_stack([r[:-1], r[1:]]) for r in rings])
    x0 = (e[:, 0] - origin_um[0]) / step_um
    y0 = (e[:, 1] - origin_um[1]) / step_um
    x1 = (e[:, 2] - origin_um[0]) / step_um
    y1 = (e[:, 3] - origin_um[1]) / step_um
    lo = np.clip(np.ceil(np.minimum(y0, y1)), 0, h).astype(np.int64)
    hi = np.clip(np.ceil(np.maximum(y0, y1)), 0, h).astype(np.int64)  # rows lo..hi-1 cross the edge
    count = hi - lo
    edge = np.repeat(np.arange(len(e)), count)
    row = np.repeat(lo, count) + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
    x = x0[edge] + (row - y0[edge]) / (y1[edge] - y0[edge]) * (x1[edge] - x0[edge])
    flips = np.zeros((h, w + 1), dtype=np.int32)
    np.add.at(flips, (row, np.clip(np.ceil(x), 0, w).astype(np.int64)), 1)
    return (np.cumsum(flips[:, :w], axis=1) & 1).astype(bool)
