"""Exact planar geometry for the virtual slide (private helpers).

Everything here works in micrometres on ``(N, 2)`` float64 arrays of polygon
vertices ``(x, y)`` (closed implicitly: the last vertex joins the first).
The virtual slide's ground truth is *defined* by these polygons, so the
functions are exact where it matters: areas (shoelace), clipping by convex
regions (Sutherland-Hodgman, which gives the right area even for a concave
subject), point-in-polygon and point-to-boundary distance (used to keep every
labelled object inside a single region), and the rasteriser that tells which
pixel centres lie inside a polygon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]
HalfWidth = Callable[[FloatArray], FloatArray]
ObjectArrays = dict[str, NDArray[Any]]
"""Per-object arrays of candidate labelled objects, keyed by field name."""


# ---------------------------------------------------------------- basics


def polygon_area_um2(polygon_um: FloatArray) -> float:
    """Unsigned area of a simple polygon (shoelace formula), in µm²."""
    return abs(signed_area_um2(polygon_um))


def signed_area_um2(polygon_um: FloatArray) -> float:
    """Signed shoelace area (µm²).

    Positive when the vertices run counter-clockwise in a y-up frame
    (clockwise on screen, where rows grow with +y).
    """
    if len(polygon_um) < 3:
        return 0.0
    x = polygon_um[:, 0]
    y = polygon_um[:, 1]
    # Centre the coordinates first: stage positions are ~1e4 µm and the
    # cross products would otherwise lose digits.
    x = x - x.mean()
    y = y - y.mean()
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def rotation_matrix(angle_deg: float) -> FloatArray:
    """2x2 rotation by ``angle_deg`` (positive turns +x toward +y)."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s], [s, c]])


def local_to_stage(
    points_local_um: FloatArray, centre_um: tuple[float, float], angle_deg: float
) -> FloatArray:
    """Rotate local section coordinates by ``angle_deg`` and move them to ``centre_um``.

    Shape ``(N, 2)`` in, ``(N, 2)`` out.
    """
    rot = rotation_matrix(angle_deg)
    return np.asarray(points_local_um, dtype=np.float64) @ rot.T + np.asarray(centre_um)


def stage_to_local(points_um: FloatArray, centre_um: tuple[float, float], angle_deg: float) -> FloatArray:
    """Inverse of :func:`local_to_stage`."""
    rot = rotation_matrix(angle_deg)
    return (np.asarray(points_um, dtype=np.float64) - np.asarray(centre_um)) @ rot


def ellipse_polygon(
    centre_um: tuple[float, float],
    semi_axes_um: tuple[float, float],
    n_vertices: int,
    angle_deg: float = 0.0,
) -> FloatArray:
    """Convex polygon inscribed in an ellipse (vertices on the ellipse)."""
    t = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    pts = np.column_stack([semi_axes_um[0] * np.cos(t), semi_axes_um[1] * np.sin(t)])
    return local_to_stage(pts, centre_um, angle_deg)


def chaikin(polygon_um: FloatArray, iterations: int) -> FloatArray:
    """Smooth a closed polygon by corner cutting.

    Each pass doubles the vertex count and keeps the curve inside the control
    polygon's hull.
    """
    p = np.asarray(polygon_um, dtype=np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def resample_closed(polygon_um: FloatArray, step_um: float) -> FloatArray:
    """Resample a closed polyline at (about) equal arc-length steps."""
    p = np.asarray(polygon_um, dtype=np.float64)
    closed = np.vstack([p, p[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(8, int(np.ceil(s[-1] / step_um)))
    t = np.linspace(0.0, s[-1], n, endpoint=False)
    return np.column_stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])])


def lens_area_um2(radius_um: FloatArray | float, spacing_um: FloatArray | float) -> FloatArray:
    """Overlap area of two discs of radius ``r`` whose centres are ``d`` apart (0 if ``d >= 2r``)."""
    r = np.asarray(radius_um, dtype=np.float64)
    d = np.minimum(np.asarray(spacing_um, dtype=np.float64), 2.0 * r)
    return 2.0 * r**2 * np.arccos(d / (2.0 * r)) - 0.5 * d * np.sqrt(np.maximum(4.0 * r**2 - d**2, 0.0))


def chain_area_um2(
    n_discs: NDArray[Any] | int, radius_um: FloatArray | float, spacing_um: FloatArray | float
) -> FloatArray:
    """Area of a straight chain of ``n`` equal discs with centre spacing ``d``.

    With ``r <= d`` only neighbours overlap, so the area is
    ``n·πr² − (n − 1)·lens(r, d)``.
    """
    n = np.asarray(n_discs, dtype=np.float64)
    r = np.asarray(radius_um, dtype=np.float64)
    return n * np.pi * r**2 - (n - 1.0) * lens_area_um2(r, spacing_um)


# ---------------------------------------------------------------- clipping


def clip_halfplane(polygon_um: FloatArray, normal: tuple[float, float], offset: float) -> FloatArray:
    """Keep the part of a polygon where ``normal · p >= offset``.

    One Sutherland-Hodgman pass, vectorised. Works for concave polygons
    too as far as the area is concerned (pieces may be joined by zero-area
    bridges along the clip line).
    """
    p = np.asarray(polygon_um, dtype=np.float64)
    if len(p) == 0:
        return p
    s = p @ np.asarray(normal, dtype=np.float64) - offset
    q = np.roll(p, -1, axis=0)
    s1 = np.roll(s, -1)
    inside = s >= 0.0
    crosses = inside != (s1 >= 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(crosses, s / (s - s1), 0.0)
    cut = p + t[:, None] * (q - p)
    pts = np.stack([p, cut], axis=1)
    keep = np.stack([inside, crosses], axis=1)
    return pts[keep]


def clip_convex(polygon_um: FloatArray, convex_um: FloatArray) -> FloatArray:
    """Intersection of any simple polygon with a convex polygon (area-exact)."""
    c = np.asarray(convex_um, dtype=np.float64)
    orient = 1.0 if signed_area_um2(c) > 0 else -1.0
    out = np.asarray(polygon_um, dtype=np.float64)
    nxt = np.roll(c, -1, axis=0)
    for a, b in zip(c, nxt, strict=True):
        edge = b - a
        # Inward normal of a counter-clockwise (y-up) polygon is (-ey, ex).
        normal = orient * np.array([-edge[1], edge[0]])
        out = clip_halfplane(out, (normal[0], normal[1]), float(normal @ a))
        if len(out) == 0:
            break
    return out


# ---------------------------------------------------------------- queries


def _ragged_pairs(counts: IntArray, starts: IntArray) -> tuple[IntArray, IntArray]:
    """Expand ragged ranges: ``(item index, slot index)`` for every slot.

    Item ``i`` owns ``counts[i]`` consecutive slots from ``starts[i]``.
    """
    total = int(counts.sum())
    item = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    slot = np.arange(total) - np.repeat(first, counts) + np.repeat(starts, counts)
    return item, slot


class PolygonIndex:
    """Exact inside tests and capped boundary distances for many points.

    Edges are bucketed on a uniform grid: each edge is listed in every cell
    that its bounding box, grown by ``cap_um``, touches. A point is compared
    with the edges of its own cell only: the distance is the minimum over
    them (or ``cap_um``), and "inside" is the cell centre's status (found
    once by rasterising the polygon at the cell centres) flipped by every
    edge that crosses the segment from the point to that centre.

    Parameters
    ----------
    polygon_um : (N, 2) float array
        Vertices of a simple polygon, µm.
    cap_um : float
        Distances larger than this are reported as ``cap_um``.
    cell_um : float
        Bucket size.
    """

    def __init__(self, polygon_um: FloatArray, *, cap_um: float = 8.0, cell_um: float = 40.0):
        p = np.asarray(polygon_um, dtype=np.float64)
        self._a = p
        self._b = np.roll(p, -1, axis=0)
        self._cap = float(cap_um)
        self._cell = float(cell_um)
        lo = p.min(axis=0) - self._cap - self._cell
        hi = p.max(axis=0) + self._cap + self._cell
        self._origin = lo
        self._n = np.ceil((hi - lo) / self._cell).astype(np.int64) + 1
        emin = np.minimum(self._a, self._b)
        emax = np.maximum(self._a, self._b)
        c0 = np.floor((emin - self._cap - lo) / self._cell).astype(np.int64)
        c1 = np.floor((emax + self._cap - lo) / self._cell).astype(np.int64)
        nx = c1[:, 0] - c0[:, 0] + 1
        ny = c1[:, 1] - c0[:, 1] + 1
        edge, k = _ragged_pairs(nx * ny, np.zeros(len(p), dtype=np.int64))
        cx = c0[edge, 0] + k % nx[edge]
        cy = c0[edge, 1] + k // nx[edge]
        keys = cy * self._n[0] + cx
        order = np.argsort(keys, kind="stable")
        self._edges = edge[order]
        self._offsets = np.concatenate(
            [[0], np.cumsum(np.bincount(keys, minlength=int(self._n[0] * self._n[1])))]
        )
        centres_px = (p - lo) / self._cell - 0.5
        self._centre_inside = rasterize_polygon(centres_px, (int(self._n[1]), int(self._n[0]))).ravel()

    def _pairs(self, pts: FloatArray) -> tuple[IntArray, IntArray, IntArray, IntArray]:
        """(points in the grid, their cell, pair->point position, pair->edge)."""
        c = np.floor((pts - self._origin) / self._cell).astype(np.int64)
        ok = (c[:, 0] >= 0) & (c[:, 0] < self._n[0]) & (c[:, 1] >= 0) & (c[:, 1] < self._n[1])
        idx = np.flatnonzero(ok)
        cell = c[idx, 1] * self._n[0] + c[idx, 0]
        start = self._offsets[cell]
        item, slot = _ragged_pairs(self._offsets[cell + 1] - start, start)
        return idx, cell, item, self._edges[slot]

    def contains(self, points_um: FloatArray) -> BoolArray:
        """Whether each point lies inside the polygon."""
        pts = np.asarray(points_um, dtype=np.float64).reshape(-1, 2)
        out = np.zeros(len(pts), dtype=bool)
        idx, cell, item, e = self._pairs(pts)
        inside = self._centre_inside[cell].copy()
        if len(item):
            n0 = self._n[0]
            centre = self._origin + (np.column_stack([cell[item] % n0, cell[item] // n0]) + 0.5) * self._cell
            p = pts[idx[item]]
            a = self._a[e]
            b = self._b[e]

            def orient(o: FloatArray, u: FloatArray, v: FloatArray) -> FloatArray:
                return (u[:, 0] - o[:, 0]) * (v[:, 1] - o[:, 1]) - (u[:, 1] - o[:, 1]) * (v[:, 0] - o[:, 0])

            hit = (orient(p, centre, a) * orient(p, centre, b) < 0) & (
                orient(a, b, p) * orient(a, b, centre) < 0
            )
            flips = np.bincount(item, weights=hit, minlength=len(idx)).astype(np.int64)
            inside ^= (flips % 2) == 1
        out[idx] = inside
        return out

    def distance_um(self, points_um: FloatArray) -> FloatArray:
        """Distance from each point to the polygon boundary, capped at ``cap_um``."""
        pts = np.asarray(points_um, dtype=np.float64).reshape(-1, 2)
        out = np.full(len(pts), self._cap)
        idx, _, item, e = self._pairs(pts)
        if len(item) == 0:
            return out
        p = pts[idx[item]]
        a = self._a[e]
        ab = self._b[e] - a
        ap = p - a
        denom = np.einsum("ij,ij->i", ab, ab)
        t = np.clip(np.einsum("ij,ij->i", ap, ab) / np.maximum(denom, 1e-300), 0.0, 1.0)
        d = np.hypot(ap[:, 0] - t * ab[:, 0], ap[:, 1] - t * ab[:, 1])
        best = np.full(len(idx), self._cap)
        np.minimum.at(best, item, d)
        out[idx] = np.minimum(best, self._cap)
        return out


# ---------------------------------------------------------------- raster


def rasterize_polygon(polygon_px: FloatArray, shape: tuple[int, int]) -> BoolArray:
    """Which pixel centres lie inside a polygon given in pixel units.

    Pixel ``(row, col)`` has its centre at ``(x, y) = (col, row)``. Exact for
    pixel centres (even-odd rule: inside when an odd number of edges cross
    the pixel's row at ``x <= col``, half-open in y), vectorised by scanline
    over the polygon's bounding window.

    Parameters
    ----------
    polygon_px : (N, 2) float array
        Vertices ``(x, y)`` in pixel units.
    shape : (H, W)

    Returns
    -------
    (H, W) bool array
    """
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    p = np.asarray(polygon_px, dtype=np.float64)
    if len(p) < 3:
        return mask
    c0 = int(np.clip(np.floor(p[:, 0].min()), 0, w))
    c1 = int(np.clip(np.ceil(p[:, 0].max()) + 1, 0, w))
    r0w = int(np.clip(np.floor(p[:, 1].min()), 0, h))
    r1w = int(np.clip(np.ceil(p[:, 1].max()) + 1, 0, h))
    if c1 <= c0 or r1w <= r0w:
        return mask
    x1 = p[:, 0] - c0
    y1 = p[:, 1] - r0w
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    hh, ww = r1w - r0w, c1 - c0
    ylo = np.minimum(y1, y2)
    yhi = np.maximum(y1, y2)
    r0 = np.clip(np.ceil(ylo), 0, hh).astype(np.int64)
    r1 = np.clip(np.ceil(yhi), 0, hh).astype(np.int64)
    count = np.maximum(r1 - r0, 0)
    if count.sum() == 0:
        return mask
    edge, row = _ragged_pairs(count, r0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x1[edge] + (row - y1[edge]) * (x2[edge] - x1[edge]) / (y2[edge] - y1[edge])
    # a crossing at x toggles the state of every pixel centre c >= x
    col = np.clip(np.ceil(xc), 0, ww).astype(np.int64)
    flips = np.zeros((hh, ww + 1), dtype=np.uint8)
    np.add.at(flips, (row, col), 1)
    np.bitwise_and(flips, 1, out=flips)
    inside = flips.view(bool)
    np.logical_xor.accumulate(inside, axis=1, out=inside)
    mask[r0w:r1w, c0:c1] = inside[:, :ww]
    return mask


# ---------------------------------------------------------------- anatomy
#
# Local section coordinates (µm, origin at the section centre, before the
# section's rotation): coronal sections use u = toward the animal's right,
# v = toward ventral; horizontal sections use u = toward caudal, v = toward
# the animal's left. With zero rotation u runs along stage +x and v along +y.


def coronal_outline_um(
    width_um: float, height_um: float, rng: np.random.Generator, n_vertices: int = 360
) -> FloatArray:
    """Smooth, slightly flattened oval cord outline (local coordinates).

    A superellipse that is boxier on the dorsal side (exponent 2.6) than on
    the ventral side (2.15), with a small random low-order irregularity.
    """
    a, b = width_um / 2.0, height_um / 2.0
    t = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    n = np.where(s < 0.0, 2.6, 2.15)
    u = a * np.sign(c) * np.abs(c) ** (2.0 / n)
    v = b * np.sign(s) * np.abs(s) ** (2.0 / n)
    k = np.arange(2, 6)
    amp = rng.normal(0.0, 0.005, len(k))
    phase = rng.uniform(0.0, 2.0 * np.pi, len(k))
    scale = 1.0 + (amp[:, None] * np.cos(k[:, None] * t[None, :] + phase[:, None])).sum(axis=0)
    return np.column_stack([u * scale, v * scale])


def coronal_gray_matter_um(
    control_right: FloatArray,
    width_um: float,
    height_um: float,
    rng: np.random.Generator,
    jitter_um: float = 10.0,
) -> FloatArray:
    """Butterfly-shaped gray matter (local coordinates).

    ``control_right`` holds control points of the right half, in units of
    the half-width and half-height, running from the dorsal commissure on the
    midline round the dorsal horn, the intermediate zone and the ventral horn
    to the ventral commissure on the midline. The left half is its mirror
    image; each control point gets a little independent jitter, then three
    Chaikin passes round the corners.
    """
    right = np.asarray(control_right, dtype=np.float64) * [width_um / 2.0, height_um / 2.0]
    left = right[-2:0:-1] * [-1.0, 1.0]
    ctrl = np.vstack([right, left])
    off_midline = np.abs(ctrl[:, 0]) > 1e-9
    ctrl[off_midline] += rng.normal(0.0, jitter_um, (int(off_midline.sum()), 2))
    return chaikin(ctrl, 3)


def _inward_normals(points: FloatArray, orient: float) -> FloatArray:
    tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
    normal = orient * np.column_stack([-tangent[:, 1], tangent[:, 0]])
    return normal / np.hypot(normal[:, 0], normal[:, 1])[:, None]


def rubrospinal_territory_um(
    outline_um: FloatArray,
    gray_index: PolygonIndex,
    side_sign: float,
    angles_deg: tuple[float, float],
    depth_um: float,
    *,
    inset_um: float = 12.0,
    gray_gap_um: float = 40.0,
) -> FloatArray:
    """Crescent of lateral white matter under the pia (local coordinates).

    It spans polar angles ``angles_deg`` (0 = lateral, positive = dorsal) on
    the side ``side_sign`` (+1 right, -1 left), from ``inset_um`` below the
    outline to ``depth_um`` at its middle, tapering to its ends, and is kept
    ``gray_gap_um`` away from the gray matter.
    """
    dense = resample_closed(outline_um, 8.0)
    ang = np.degrees(np.arctan2(-dense[:, 1], side_sign * dense[:, 0]))
    # start the ring on the far (medial) side so the arc is contiguous
    start = int(np.argmax(np.abs(ang)))
    dense = np.roll(dense, -start, axis=0)
    ang = np.roll(ang, -start)
    orient = 1.0 if signed_area_um2(outline_um) > 0 else -1.0
    normals = _inward_normals(dense, orient)
    sel = np.flatnonzero((ang >= angles_deg[0]) & (ang <= angles_deg[1]))
    pts = dense[sel]
    nrm = normals[sel]
    t = (ang[sel] - angles_deg[0]) / (angles_deg[1] - angles_deg[0])
    depth = inset_um + (depth_um - inset_um) * np.sin(np.pi * t) ** 0.5
    for _ in range(100):
        inner = pts + nrm * depth[:, None]
        bad = (gray_index.distance_um(inner) < gray_gap_um) | gray_index.contains(inner)
        if not bad.any():
            break
        depth[bad] = np.maximum(depth[bad] - 10.0, inset_um + 1.0)
    outer = pts + nrm * inset_um
    inner = pts + nrm * depth[:, None]
    return np.vstack([outer, inner[::-1]])


def horizontal_outline_um(
    length_um: float,
    width_um: float,
    epicenter_u_um: float,
    atrophy: float,
    rng: np.random.Generator,
    step_um: float = 20.0,
) -> FloatArray:
    """Horizontal section outline (local coordinates).

    A long band with rounded ends, slightly narrowed (by ``atrophy``) around
    the lesion epicenter.
    """
    phase = rng.uniform(0.0, 2.0 * np.pi)

    def half_width(u: FloatArray) -> FloatArray:
        u = np.asarray(u, dtype=np.float64)
        return (
            (width_um / 2.0)
            * (1.0 - atrophy * np.exp(-(((u - epicenter_u_um) / 1500.0) ** 2)))
            * (1.0 + 0.012 * np.sin(2.0 * np.pi * u / 2300.0 + phase))
        )

    return _stadium(length_um / 2.0, half_width, width_um / 2.0, step_um)


def _stadium(
    half_length_um: float,
    half_width: HalfWidth,
    nominal_half_width_um: float,
    step_um: float,
) -> FloatArray:
    """Band ``|v| <= half_width(u)`` closed by semicircular caps ending at ``u = ±half_length_um``."""
    u_l = -half_length_um + float(half_width(np.array(-half_length_um + nominal_half_width_um)))
    u_r = half_length_um - float(half_width(np.array(half_length_um - nominal_half_width_um)))
    r_l = float(half_width(np.array(u_l)))
    r_r = float(half_width(np.array(u_r)))
    u_l = -half_length_um + r_l
    u_r = half_length_um - r_r
    u = np.linspace(u_l, u_r, max(4, int(np.ceil((u_r - u_l) / step_um))) + 1)
    hw = half_width(u)
    top = np.column_stack([u, -hw])[:-1]
    bottom = np.column_stack([u[::-1], hw[::-1]])[:-1]
    n_r = max(8, int(np.ceil(np.pi * r_r / step_um)))
    n_l = max(8, int(np.ceil(np.pi * r_l / step_um)))
    phi_r = np.linspace(-np.pi / 2, np.pi / 2, n_r, endpoint=False)
    phi_l = np.linspace(np.pi / 2, 3 * np.pi / 2, n_l, endpoint=False)
    cap_r = np.column_stack([u_r + r_r * np.cos(phi_r), r_r * np.sin(phi_r)])
    cap_l = np.column_stack([u_l + r_l * np.cos(phi_l), r_l * np.sin(phi_l)])
    return np.vstack([top, cap_r, bottom, cap_l])


def horizontal_gray_band_um(
    length_um: float,
    half_width_um: float,
    epicenter_u_um: float,
    cavity: tuple[float, float, float] | None,
    rng: np.random.Generator,
    *,
    end_margin_um: float = 260.0,
    rim_um: float = 90.0,
    step_um: float = 20.0,
) -> FloatArray:
    """Central gray-matter band of a horizontal section (local coordinates).

    ``cavity`` is ``(semi-axis along u, semi-axis along v, v offset)``; the
    band widens smoothly (a soft maximum) so the cavity plus ``rim_um`` of
    scarred penumbra fits inside it.
    """
    phase = rng.uniform(0.0, 2.0 * np.pi)

    def half_width(u: FloatArray) -> FloatArray:
        u = np.asarray(u, dtype=np.float64)
        g = half_width_um * (1.0 + 0.05 * np.sin(2.0 * np.pi * u / 1700.0 + phase))
        if cavity is None:
            return g
        ca, cb, cv = cavity
        x = (u - epicenter_u_um) / (ca + rim_um)
        env = abs(cv) + (cb + rim_um) * np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
        soft = 30.0
        top = np.maximum(g, env)
        return top + soft * np.log(np.exp((g - top) / soft) + np.exp((env - top) / soft))

    return _stadium(length_um / 2.0 - end_margin_um, half_width, half_width_um, step_um)


# ---------------------------------------------------------------- placement


def jittered_discs(
    rng: np.random.Generator,
    lo_um: tuple[float, float],
    hi_um: tuple[float, float],
    cell_um: float,
    sample_radius: Callable[[int], FloatArray],
    gap_um: float,
) -> tuple[FloatArray, FloatArray]:
    """Place one candidate disc per grid cell, wholly inside its cell.

    Discs of different cells therefore never touch. Returns centres
    ``(N, 2)`` and radii ``(N,)``.
    """
    nx = max(1, int(np.ceil((hi_um[0] - lo_um[0]) / cell_um)))
    ny = max(1, int(np.ceil((hi_um[1] - lo_um[1]) / cell_um)))
    iy, ix = np.divmod(np.arange(nx * ny), nx)
    origin = np.column_stack([lo_um[0] + ix * cell_um, lo_um[1] + iy * cell_um])
    r = sample_radius(len(origin))
    free = np.maximum(cell_um - 2.0 * r - gap_um, 0.0)
    centre = origin + (r + gap_um / 2.0)[:, None] + rng.uniform(0.0, 1.0, (len(r), 2)) * free[:, None]
    return centre, r


def jittered_chains(
    rng: np.random.Generator,
    lo_um: tuple[float, float],
    hi_um: tuple[float, float],
    cell_um: tuple[float, float],
    *,
    angle_rad: FloatArray,
    length_um: FloatArray,
    radius_um: FloatArray,
    spacing_ratio: FloatArray,
    gap_um: float,
) -> ObjectArrays:
    """One candidate chain of equal overlapping discs per grid cell.

    The per-cell arrays (``angle_rad``, ``length_um``, ``radius_um``,
    ``spacing_ratio`` = spacing / radius, in [1, 2)) must have one entry per
    cell, cells numbered row-major over the box. Each chain is shortened if
    needed so that it stays inside its cell. Returns per-chain arrays
    (``centre`` (N, 2), ``angle``, ``radius``, ``spacing``, ``n``) .
    """
    cu, cv = cell_um
    nx = max(1, int(np.ceil((hi_um[0] - lo_um[0]) / cu)))
    ny = max(1, int(np.ceil((hi_um[1] - lo_um[1]) / cv)))
    iy, ix = np.divmod(np.arange(nx * ny), nx)
    origin = np.column_stack([lo_um[0] + ix * cu, lo_um[1] + iy * cv])
    c, s = np.abs(np.cos(angle_rad)), np.abs(np.sin(angle_rad))
    r = radius_um
    room_u = cu / 2.0 - gap_um / 2.0 - r
    room_v = cv / 2.0 - gap_um / 2.0 - r
    with np.errstate(divide="ignore"):
        max_len = 2.0 * np.minimum(room_u / np.maximum(c, 1e-12), room_v / np.maximum(s, 1e-12))
    length = np.clip(np.minimum(length_um, max_len), 0.0, None)
    spacing = spacing_ratio * r
    n = np.floor(length / spacing).astype(np.int64) + 1
    real = (n - 1) * spacing
    ext_u = c * real / 2.0 + r
    ext_v = s * real / 2.0 + r
    free_u = np.maximum(cu - 2.0 * ext_u - gap_um, 0.0)
    free_v = np.maximum(cv - 2.0 * ext_v - gap_um, 0.0)
    centre = origin + np.column_stack(
        [
            ext_u + gap_um / 2.0 + rng.uniform(0.0, 1.0, len(r)) * free_u,
            ext_v + gap_um / 2.0 + rng.uniform(0.0, 1.0, len(r)) * free_v,
        ]
    )
    return {"centre": centre, "angle": angle_rad, "radius": r, "spacing": spacing, "n": n}


def chain_discs(chains: ObjectArrays) -> tuple[FloatArray, IntArray]:
    """Disc centres ``(M, 2)`` of all chains, chain by chain, and each disc's chain index."""
    n = chains["n"].astype(np.int64)
    owner = np.repeat(np.arange(len(n)), n)
    k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    offset = (k - (n[owner] - 1) / 2.0) * chains["spacing"][owner]
    direction = np.column_stack([np.cos(chains["angle"]), np.sin(chains["angle"])])
    return chains["centre"][owner] + offset[:, None] * direction[owner], owner
