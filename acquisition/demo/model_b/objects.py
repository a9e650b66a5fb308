"""Model B labelled objects: shapes, strips, placement and truth labels (private).

Every labelled object is first drawn as a polygon (an irregular blob, a
straight capsule or a curved, beaded fibre fragment) and then *defined* as
a union of horizontal strips in stage coordinates: strip ``j`` of an object
centred at ``(cx, cy)`` spans ``y ∈ [cy + (j0 + j)·h, cy + (j0 + j + 1)·h)``
and the polygon's chord(s) at its mid-line in ``x`` (``h`` =
:data:`STRIP_UM`). The strips are the object: its exact area is ``Σ (x1 −
x0)·h``, truth masks rasterise them, and the renderer convolves them with
the PSF in closed form. ``h`` is well below the optical resolution of every
objective, so the staircase is invisible.

Objects never overlap (their bounding capsules are kept apart) and each lies
inside one cell of the truth partition (tissue class × side × dorsal/ventral
or rostro-caudal bin) with a clearance, so region sums are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.spatial import cKDTree
from shapely.geometry import Polygon

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

STRIP_UM = 0.2
"""Strip height (µm) of labelled objects."""

GAP_UM = 0.15
"""Clearance between objects and from region boundaries (µm)."""

BOUNDARY_SPACING_UM = 0.5
"""Spacing of the boundary samples used for clearance tests (µm)."""

KIND_NAMES = ("blob", "elongated", "fibre", "bouton", "bead")
BLOB, ELONGATED, FIBRE, BOUTON, BEAD = range(5)


# ------------------------------------------------------------------ shapes


@dataclass
class Candidates:
    """Objects drawn in a section's local frame, before acceptance.

    ``offsets`` are polygon vertices relative to ``centre`` (local µm, the
    same number ``V`` for every object of a batch, degenerate repeats
    allowed); ``axis`` the end points of the bounding capsule's axis
    (relative to ``centre``) and ``radius`` its radius.
    """

    kind: I64
    centre: F64
    offsets: F64
    axis: F64  # (N, 2, 2)
    radius: F64
    brightness: F64

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, keep: NDArray[np.bool_] | I64) -> Candidates:
        """The candidates selected by a mask or index array."""
        return Candidates(
            self.kind[keep],
            self.centre[keep],
            self.offsets[keep],
            self.axis[keep],
            self.radius[keep],
            self.brightness[keep],
        )

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """Concatenate batches (polygons padded to the same vertex count)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Candidates(
                np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 4, 2)), np.zeros((0, 2, 2)),
                np.zeros(0), np.zeros(0),
            )  # fmt: skip
        v = max(p.offsets.shape[1] for p in parts)

        def pad(o: F64) -> F64:
            if o.shape[1] == v:
                return o
            return np.concatenate([o, np.repeat(o[:, -1:], v - o.shape[1], axis=1)], axis=1)

        return Candidates(
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.centre for p in parts]),
            np.concatenate([pad(p.offsets) for p in parts]),
            np.concatenate([p.axis for p in parts]),
            np.concatenate([p.radius for p in parts]),
            np.concatenate([p.brightness for p in parts]),
        )


def _rotate(pts: F64, angle: F64) -> F64:
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x, y = pts[..., 0], pts[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], axis=-1)


def _shoelace(poly: F64) -> F64:
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * np.abs(np.sum(x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y, axis=-1))


def blobs(rng: np.random.Generator, centre: F64, diameter_um: F64, *, kind: int = BLOB) -> Candidates:
    """Irregular, ellipsoidal blobs of a given area-equivalent diameter.

    The outline is ``r(φ) = 1 + Σ_{k=2..5} a_k cos(kφ + φ_k)`` squashed by a
    random aspect ratio in [0.55, 1] and rotated, then scaled to the area.
    """
    n = len(centre)
    v = 40
    phi = np.linspace(0.0, 2.0 * np.pi, v, endpoint=False)
    r = np.ones((n, v))
    for k in range(2, 6):
        amp = rng.uniform(0.0, 0.13 / math.sqrt(k - 1), n)[:, None]
        r += amp * np.cos(k * phi[None, :] + rng.uniform(0.0, 2.0 * np.pi, n)[:, None])
    aspect = rng.uniform(0.55, 1.0, n)[:, None]
    pts = np.stack([r * np.cos(phi), aspect * r * np.sin(phi)], axis=-1)
    pts = _rotate(pts, rng.uniform(0.0, np.pi, n))
    scale = np.sqrt(np.pi * (diameter_um / 2.0) ** 2 / _shoelace(pts))
    pts *= scale[:, None, None]
    radius = np.hypot(pts[..., 0], pts[..., 1]).max(axis=1)
    axis = np.zeros((n, 2, 2))
    return Candidates(np.full(n, kind, np.int64), centre, pts, axis, radius, np.ones(n))


def capsules(rng: np.random.Generator, centre: F64, length_um: F64, width_um: F64, angle: F64) -> Candidates:
    """Straight capsules (elongated puncta): total length and width in µm."""
    n = len(centre)
    half = np.maximum(length_um - width_um, 0.0) / 2.0
    rho = width_um / 2.0
    t = np.linspace(-np.pi / 2, np.pi / 2, 13)
    right = np.stack([half[:, None] + rho[:, None] * np.cos(t), rho[:, None] * np.sin(t)], axis=-1)
    left = np.stack([-half[:, None] - rho[:, None] * np.cos(t), -rho[:, None] * np.sin(t)], axis=-1)
    pts = _rotate(np.concatenate([right, left], axis=1), angle)
    ends = _rotate(
        np.stack([np.stack([-half, np.zeros(n)], -1), np.stack([half, np.zeros(n)], -1)], 1), angle
    )
    return Candidates(np.full(n, ELONGATED, np.int64), centre, pts, ends, rho, np.ones(n))


def fibres(
    rng: np.random.Generator,
    centre: F64,
    length_um: F64,
    width_um: F64,
    angle: F64,
    *,
    bead_depth: float = 0.35,
) -> Candidates:
    """Curved fibre fragments with varicosities.

    The axis is a circular arc (curvature radius ≥ 3× the length); the
    half-width swells in smooth beads every 3–6 µm by up to ``bead_depth``.
    """
    n = len(centre)
    m = 24
    s = (np.linspace(-0.5, 0.5, m)[None, :]) * length_um[:, None]  # arc length
    rc = length_um * rng.uniform(3.0, 12.0, n) * rng.choice([-1.0, 1.0], n)
    k = (1.0 / rc)[:, None]
    cx = np.sin(s * k) / k
    cy = (1.0 - np.cos(s * k)) / k
    tx, ty = np.cos(s * k), np.sin(s * k)
    period = rng.uniform(3.0, 6.0, n)[:, None]
    bead = np.maximum(0.0, np.cos(2.0 * np.pi * s / period + rng.uniform(0, 2 * np.pi, n)[:, None])) ** 4
    rho = (width_um / 2.0)[:, None] * (1.0 + bead_depth * bead)
    left = np.stack([cx - rho * ty, cy + rho * tx], axis=-1)
    right = np.stack([cx + rho * ty, cy - rho * tx], axis=-1)
    caps = np.linspace(0.0, np.pi, 9)[1:-1]

    def cap(i: int, sign: float) -> F64:
        a = np.arctan2(ty[:, i], tx[:, i])[:, None] + sign * (np.pi / 2 - caps[None, :])
        return np.stack(
            [
                cx[:, i : i + 1] + rho[:, i : i + 1] * np.cos(a),
                cy[:, i : i + 1] + rho[:, i : i + 1] * np.sin(a),
            ],
            -1,
        )

    pts = np.concatenate([right, cap(m - 1, 1.0), left[:, ::-1], cap(0, -1.0)[:, ::-1]], axis=1)
    # centre the polygon on its chord's midpoint
    mid = 0.5 * (np.stack([cx[:, 0], cy[:, 0]], -1) + np.stack([cx[:, -1], cy[:, -1]], -1))
    pts = pts - mid[:, None, :]
    ends = (
        np.stack([np.stack([cx[:, 0], cy[:, 0]], -1), np.stack([cx[:, -1], cy[:, -1]], -1)], 1)
        - mid[:, None, :]
    )
    sagitta = np.abs(cy - cy[:, :1] - (cy[:, -1:] - cy[:, :1]) * np.linspace(0, 1, m)[None, :]).max(axis=1)
    pts = _rotate(pts, angle)
    ends = _rotate(ends, angle)
    radius = rho.max(axis=1) + sagitta
    return Candidates(np.full(n, FIBRE, np.int64), centre, pts, ends, radius, np.ones(n))


# ------------------------------------------------------------------ strips


@dataclass
class Strips:
    """Objects as horizontal strips in stage µm (see the module docstring).

    Per strip: ``obj`` (object index), ``row`` (row index within its
    object), ``y0`` (bottom edge, µm), ``x0``/``x1`` (µm). Per object:
    ``cy0`` (y of its row 0), ``n_rows``. An object's first ``n_rows``
    strips are its rows in order (the first chord of each; empty rows have
    zero width); strips of second and third chords follow.
    """

    obj: I64
    row: I64
    y0: F64
    x0: F64
    x1: F64
    cy0: F64
    n_rows: I64
    height_um: float = STRIP_UM

    def area_um2(self, n_objects: int) -> F64:
        """Exact area of each object (µm²)."""
        return np.bincount(
            self.obj, weights=(self.x1 - self.x0) * self.height_um, minlength=n_objects
        ).astype(np.float64)

    def centroid_um(self, n_objects: int) -> F64:
        """Exact centroid of each object (stage µm)."""
        a = (self.x1 - self.x0) * self.height_um
        tot = np.bincount(self.obj, weights=a, minlength=n_objects)
        cx = np.bincount(self.obj, weights=a * 0.5 * (self.x0 + self.x1), minlength=n_objects)
        cy = np.bincount(self.obj, weights=a * (self.y0 + 0.5 * self.height_um), minlength=n_objects)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.column_stack([cx / tot, cy / tot])

    def first_strip(self, n_objects: int) -> I64:
        """Index of each object's first strip (strips are grouped by object)."""
        counts = np.bincount(self.obj, minlength=n_objects)
        return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def strips_from_polygons(
    centre_um: F64, offsets_um: F64, *, height_um: float = STRIP_UM, max_intervals: int = 3, chunk: int = 1500
) -> Strips:
    """Cut polygons (stage µm) into strips along their rows' mid-lines.

    Parameters
    ----------
    centre_um : (N, 2) float array
        Object centres (stage µm); rows are anchored at ``cy``.
    offsets_um : (N, V, 2) float array
        Polygon vertices relative to the centres (stage orientation).
    height_um : float
        Strip height.
    max_intervals : int
        Chords per row kept (a row crossing the polygon more often keeps
        its first ones: the strips define the object, so truth stays exact).

    Returns
    -------
    Strips
    """
    n = len(centre_um)
    h = float(height_um)
    ymin = offsets_um[..., 1].min(axis=1)
    ymax = offsets_um[..., 1].max(axis=1)
    j0 = np.floor(ymin / h)
    n_rows = (np.ceil(ymax / h) - j0).astype(np.int64)
    cy0 = centre_um[:, 1] + j0 * h
    out: dict[str, list[F64 | I64]] = {k: [] for k in ("obj", "row", "extra", "y0", "x0", "x1")}
    order = np.argsort(n_rows, kind="stable")  # similar row counts per chunk
    for s in range(0, n, chunk):
        idx = order[s : s + chunk]
        r_max = int(n_rows[idx].max())
        rows = np.arange(r_max)
        ym = (j0[idx, None] + rows[None, :] + 0.5) * h  # (c, R) offsets of mid-lines
        p = offsets_um[idx]
        q = np.roll(p, -1, axis=1)
        y_a, y_b = p[:, None, :, 1], q[:, None, :, 1]
        x_a, x_b = p[:, None, :, 0], q[:, None, :, 0]
        yy = ym[:, :, None]
        cross = (y_a <= yy) != (y_b <= yy)
        with np.errstate(invalid="ignore", divide="ignore"):
            xs = np.where(cross, x_a + (yy - y_a) * (x_b - x_a) / (y_b - y_a), np.inf)
        xs.sort(axis=2)
        k = min(2 * max_intervals, xs.shape[2])
        xs = xs[:, :, :k]
        valid_row = rows[None, :] < n_rows[idx, None]
        for i in range(0, k - 1, 2):
            a, b = xs[:, :, i], xs[:, :, i + 1]
            has = np.isfinite(a) & np.isfinite(b) & (b > a)
            # every row gets its first chord, empty or not: strip j of row j
            ok = valid_row if i == 0 else has & valid_row
            oi, ri = np.nonzero(ok)
            gi = idx[oi]
            a_ok = np.where(has[oi, ri], a[oi, ri], 0.0)
            b_ok = np.where(has[oi, ri], b[oi, ri], 0.0)
            out["obj"].append(gi)
            out["row"].append(ri.astype(np.int64))
            out["extra"].append(np.full(len(gi), i // 2, np.int64))
            out["y0"].append(cy0[gi] + ri * h)
            out["x0"].append(centre_um[gi, 0] + a_ok)
            out["x1"].append(centre_um[gi, 0] + b_ok)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
    obj = cat["obj"].astype(np.int64)
    row = cat["row"].astype(np.int64)
    srt = np.lexsort((row, cat["extra"], obj))
    f64 = {k: np.asarray(cat[k], dtype=np.float64)[srt] for k in ("y0", "x0", "x1")}
    return Strips(obj[srt], row[srt], f64["y0"], f64["x0"], f64["x1"], cy0, n_rows)


# ---------------------------------------------------------------- placement


def segment_distance(a0: F64, a1: F64, b0: F64, b1: F64) -> F64:
    """Distance between segments ``a0–a1`` and ``b0–b1`` (rows of (N, 2) arrays)."""
    d1 = a1 - a0
    d2 = b1 - b0
    r = a0 - b0
    aa = (d1 * d1).sum(1)
    ee = (d2 * d2).sum(1)
    ff = (d2 * r).sum(1)
    cc = (d1 * r).sum(1)
    bb = (d1 * d2).sum(1)
    denom = aa * ee - bb * bb
    eps = 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(denom > eps, np.clip((bb * ff - cc * ee) / denom, 0.0, 1.0), 0.0)
        # second segment a point: the first segment's point nearest it
        s = np.where(ee <= eps, np.where(aa > eps, np.clip(-cc / aa, 0.0, 1.0), 0.0), s)
        t = np.where(ee > eps, (bb * s + ff) / ee, 0.0)
        t_c = np.clip(t, 0.0, 1.0)
        s = np.where(t != t_c, np.where(aa > eps, np.clip((bb * t_c - cc) / aa, 0.0, 1.0), 0.0), s)
    p = a0 + s[:, None] * d1
    q = b0 + t_c[:, None] * d2
    return np.asarray(np.hypot(*(p - q).T), dtype=np.float64)


def keep_disjoint(c: Candidates, gap_um: float = GAP_UM) -> NDArray[np.bool_]:
    """Greedy in candidate order: keep an object unless a kept one comes too close."""
    n = len(c)
    alive = np.ones(n, dtype=bool)
    if n < 2:
        return alive
    a0 = c.centre + c.axis[:, 0]
    a1 = c.centre + c.axis[:, 1]
    half = 0.5 * np.hypot(*(a1 - a0).T)
    reach = float((half + c.radius).max())
    pairs = cKDTree(c.centre).query_pairs(2.0 * reach + gap_um, output_type="ndarray")
    if len(pairs) == 0:
        return alive
    i, j = pairs[:, 0], pairs[:, 1]
    d = segment_distance(a0[i], a1[i], a0[j], a1[j])
    # strips stick out of their polygon by up to half a strip: keep that apart too
    clash = d < c.radius[i] + c.radius[j] + gap_um + STRIP_UM
    i, j = i[clash], j[clash]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    for a, b in zip(*(x[np.lexsort((hi, lo))] for x in (lo, hi)), strict=True):
        if alive[a]:
            alive[b] = False
    return alive


class Partition:
    """Truth partition of one section (local frame) and clearance tests.

    Parameters
    ----------
    tissue : Polygon
        The section minus its hole.
    gray : Polygon
        Gray matter (holes removed or not: cells are classified by centre).
    territory : Polygon or None
        Rubrospinal territory (coronal).
    orientation : {"coronal", "horizontal"}
    epicenter_u_um : float
        Horizontal sections: epicenter; rostro-caudal bins are
        ``floor((u − epicenter)/bin)``.
    bin_um : float
    """

    def __init__(
        self,
        tissue: Polygon,
        gray: Polygon,
        territory: Polygon | None,
        orientation: str,
        epicenter_u_um: float,
        bin_um: float,
    ) -> None:
        self.tissue = tissue
        self.gray = gray
        self.territory = territory
        self.orientation = orientation
        self.epicenter_u_um = epicenter_u_um
        self.bin_um = bin_um
        polys = [tissue, gray] + ([territory] if territory is not None else [])
        for p in polys:
            shapely.prepare(p)
        from .shapes import boundary_points

        self._tree = cKDTree(boundary_points(polys, BOUNDARY_SPACING_UM))

    def classify(self, c: Candidates) -> tuple[NDArray[np.bool_], I64, I64, I64]:
        """(ok, tissue class, side, zone) per candidate.

        ``ok``: the bounding capsule lies inside the tissue and inside one
        cell with :data:`GAP_UM` clearance. Tissue class 0 white, 1
        territory, 2 gray; side 0 left, 1 right; zone 0 dorsal / 1 ventral
        (coronal) or the rostro-caudal bin index (horizontal).
        """
        n = len(c)
        if n == 0:
            z = np.zeros(0, np.int64)
            return np.zeros(0, bool), z, z, z
        a0 = c.centre + c.axis[:, 0]
        a1 = c.centre + c.axis[:, 1]
        length = np.hypot(*(a1 - a0).T)
        need = c.radius + 0.5 * STRIP_UM + GAP_UM + 0.5 * BOUNDARY_SPACING_UM
        # fast path: the axis' midpoint far enough from every boundary clears the whole capsule
        bound = need + 0.5 * length
        d_mid, _ = self._tree.query(0.5 * (a0 + a1), distance_upper_bound=float(bound.max()) + 1.0)
        ok = d_mid >= bound
        close = np.flatnonzero(~ok)
        if len(close):
            # near a boundary: sample the axis every ≤ 1 µm
            k = np.maximum(2, np.ceil(length[close]).astype(np.int64) + 1)
            owner = np.repeat(np.arange(len(close)), k)
            t = ragged_fraction(k)
            pts = a0[close][owner] + t[:, None] * (a1 - a0)[close][owner]
            d, _ = self._tree.query(pts, distance_upper_bound=float(need.max()) + 2.0)
            dmin = np.full(len(close), np.inf)
            np.minimum.at(dmin, owner, d)
            step = length[close] / (k - 1)
            ok[close] = dmin >= need[close] + 0.5 * step
        x, y = c.centre[:, 0], c.centre[:, 1]
        ok &= shapely.contains_xy(self.tissue, x, y)
        in_gray = shapely.contains_xy(self.gray, x, y)
        tclass = np.where(in_gray, 2, 0)
        if self.territory is not None:
            in_rst = shapely.contains_xy(self.territory, x, y)
            tclass = np.where(in_rst & ~in_gray, 1, tclass)
        reach = c.radius + 0.5 * STRIP_UM + GAP_UM

        def clear_of_line(coord: int, at: NDArray[np.floating] | float) -> NDArray[np.bool_]:
            e0 = a0[:, coord] - at
            e1 = a1[:, coord] - at
            return (np.sign(e0) == np.sign(e1)) & (np.minimum(np.abs(e0), np.abs(e1)) >= reach)

        if self.orientation == "coronal":
            ok &= clear_of_line(0, 0.0) & clear_of_line(1, 0.0)
            side = (x > 0).astype(np.int64)
            zone = (y > 0).astype(np.int64)
        else:
            ok &= clear_of_line(1, 0.0)
            side = (y < 0).astype(np.int64)  # the animal's right is −v
            s = x - self.epicenter_u_um
            zone = np.floor(s / self.bin_um).astype(np.int64)
            edge = self.epicenter_u_um + zone * self.bin_um
            ok &= clear_of_line(0, edge) & clear_of_line(0, edge + self.bin_um)
        return ok, tclass.astype(np.int64), side, zone


def ragged_fraction(counts: I64) -> F64:
    """``concatenate([linspace(0, 1, c) for c in counts])`` (every count ≥ 2)."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    i = np.arange(int(counts.sum())) - starts
    return np.asarray(i / np.repeat(counts - 1, counts), dtype=np.float64)


def uniform_in(rng: np.random.Generator, poly: Polygon, n: int) -> F64:
    """``n`` points uniform in a polygon (rejection from its bounding box)."""
    x0, y0, x1, y1 = poly.bounds
    frac = max(poly.area / ((x1 - x0) * (y1 - y0)), 1e-3)
    out = []
    got = 0
    while got < n:
        m = int((n - got) / frac * 1.2) + 16
        pts = np.column_stack([rng.uniform(x0, x1, m), rng.uniform(y0, y1, m)])
        pts = pts[shapely.contains_xy(poly, pts[:, 0], pts[:, 1])]
        out.append(pts)
        got += len(pts)
    return np.concatenate(out)[:n]


def thomas_process(
    rng: np.random.Generator, poly: Polygon, n_points: int, children_per_cluster: float, spread_um: float
) -> F64:
    """Clustered points: Poisson parents, Gaussian children (kept inside ``poly``)."""
    n_parents = max(1, round(n_points / children_per_cluster))
    parents = uniform_in(rng, poly, n_parents)
    counts = rng.poisson(children_per_cluster, n_parents)
    pts = np.repeat(parents, counts, axis=0) + rng.normal(0.0, spread_um, (int(counts.sum()), 2))
    return pts[shapely.contains_xy(poly, pts[:, 0], pts[:, 1])]


def puncta_diameters(rng: np.random.Generator, n: int, median_um: float = 2.3) -> F64:
    """Area-equivalent diameters of puncta: log-normal, within 1–5 µm."""
    return np.clip(median_um * np.exp(rng.normal(0.0, 0.35, n)), 1.0, 5.0)
