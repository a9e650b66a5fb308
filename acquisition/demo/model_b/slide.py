"""Model B's virtual slide: sections, labelled objects, nuclei, beads and truth.

See the package docstring for the image model. Truth records reuse model A's
dataclasses (:class:`~acquisition.demo.slide.SectionSpec`,
:class:`~acquisition.demo.slide.SectionTruth`,
:class:`~acquisition.demo.slide.RegionTruth`, ``FocusBump``, ``Beads``),
which are plain data; nothing of model A's geometry or rendering is used.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from acquisition.demo.slide import Beads, FocusBump, RegionTruth, SectionSpec, SectionTruth

from . import objects as ob
from . import optics
from . import render as rd
from . import shapes as sh

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# ====================================================================== tables

SLIDE_SIZE_UM: tuple[float, float] = (75_000.0, 25_000.0)
"""Slide extent (x, y) in µm."""

TISSUE_ZONE_UM: tuple[float, float, float, float] = (18_000.0, 1_500.0, 73_500.0, 23_500.0)
"""Where sections may lie (xmin, ymin, xmax, ymax), µm; left of it is the label."""

BEAD_AREA_UM: tuple[float, float, float, float] = (58_000.0, 19_500.0, 66_000.0, 22_500.0)
"""Stage rectangle (xmin, ymin, xmax, ymax), µm, of the bead area (no tissue)."""

CHANNELS: tuple[str, ...] = ("DAPI", "tdTomato")
RC_BIN_UM = 500.0

RST_DENSITY: Mapping[str, Mapping[str, float]] = {
    "intact": {"C5": 0.052, "Th7": 0.045, "L2": 0.038},
    "vehicle": {"C5": 0.050, "Th7": 0.043, "L2": 0.0055},
    "treated": {"C5": 0.051, "Th7": 0.044, "L2": 0.016},
}
"""Target fraction of the rubrospinal territory covered by labelled puncta."""

WM_DENSITY: Mapping[str, Mapping[str, float]] = {
    "intact": {"C5": 0.0045, "Th7": 0.0038, "L2": 0.0032},
    "vehicle": {"C5": 0.0043, "Th7": 0.0036, "L2": 0.0006},
    "treated": {"C5": 0.0044, "Th7": 0.0037, "L2": 0.0013},
}
"""Target fraction of the rest of the contralateral white matter covered by puncta."""

GM_DENSITY: Mapping[str, Mapping[str, float]] = {
    "intact": {"C5": 0.0035, "Th7": 0.0030, "L2": 0.0028},
    "vehicle": {"C5": 0.0033, "Th7": 0.0029, "L2": 0.0004},
    "treated": {"C5": 0.0034, "Th7": 0.0029, "L2": 0.0011},
}
"""Target fraction of the contralateral gray matter covered by fibre fragments and boutons."""

HORIZONTAL_PROFILE: Mapping[str, tuple[float, float, float]] = {
    # (rostral density, fraction left caudally, dieback length µm)
    "intact": (0.024, 1.0, 1.0),
    "vehicle": (0.024, 0.10, 900.0),
    "treated": (0.024, 0.32, 1300.0),
}
"""Labelled-fibre density along horizontal sections; see :func:`horizontal_density`."""

ANIMAL_SD: Mapping[str, float] = {"density": 0.15, "sparing": 0.20, "cavity": 0.10}
"""Log-normal SDs of per-animal factors."""

TRACER_EMISSION = 52.0
"""Median emission of labelled objects (photons / ms / µm² at the 10x/0.30 reference)."""

BEAD_EMISSION = 16_000.0
"""Emission of a bead (photons / ms / µm²): about 360 photons / ms per bead."""

BEAD_DIAMETER_UM = 0.17
"""Bead diameter (µm): sub-resolution for every objective."""

AUTOFLUORESCENCE: Mapping[str, tuple[float, float]] = {"DAPI": (2.0, 2.0), "tdTomato": (0.70, 0.95)}
"""Tissue background (white, gray) in photons / ms / µm² at the reference. For DAPI
this is the haze of out-of-focus nuclei; its gray value is scaled by the
slide's gray/white contrast."""

NUCLEUS_EMISSION: Mapping[str, float] = {"glia": 95.0, "neuron": 62.0}
"""Emission of DAPI nuclei (photons / ms / µm²): small bright glia, large pale neurons."""

WHITE_NUCLEI_PER_MM2 = 1400.0
"""Nuclei per mm² in white matter (all glia)."""

NEURON_FRACTION = 0.4
"""Share of large neuronal nuclei among gray-matter nuclei."""

LAYOUT: tuple[tuple[str, str, str, str, str, str, tuple[float, float]], ...] = (
    ("rat11-C5", "rat11", "intact", "C5", "coronal", "left", (21_000.0, 4_700.0)),
    ("rat11-Th7", "rat11", "intact", "Th7", "coronal", "left", (27_000.0, 4_700.0)),
    ("rat11-L2", "rat11", "intact", "L2", "coronal", "left", (33_000.0, 4_700.0)),
    ("rat13-C5", "rat13", "vehicle", "C5", "coronal", "left", (39_000.0, 4_700.0)),
    ("rat13-Th7", "rat13", "vehicle", "Th7", "coronal", "left", (45_000.0, 4_700.0)),
    ("rat13-L2", "rat13", "vehicle", "L2", "coronal", "left", (51_000.0, 4_700.0)),
    ("rat15-C5", "rat15", "treated", "C5", "coronal", "left", (57_000.0, 4_700.0)),
    ("rat15-Th7", "rat15", "treated", "Th7", "coronal", "left", (63_000.0, 4_700.0)),
    ("rat15-L2", "rat15", "treated", "L2", "coronal", "left", (69_000.0, 4_700.0)),
    ("rat12-C5", "rat12", "intact", "C5", "coronal", "right", (21_000.0, 10_300.0)),
    ("rat12-Th7", "rat12", "intact", "Th7", "coronal", "right", (27_000.0, 10_300.0)),
    ("rat12-L2", "rat12", "intact", "L2", "coronal", "right", (33_000.0, 10_300.0)),
    ("rat14-C5", "rat14", "vehicle", "C5", "coronal", "right", (39_000.0, 10_300.0)),
    ("rat14-Th7", "rat14", "vehicle", "Th7", "coronal", "right", (45_000.0, 10_300.0)),
    ("rat14-L2", "rat14", "vehicle", "L2", "coronal", "right", (51_000.0, 10_300.0)),
    ("rat16-C5", "rat16", "treated", "C5", "coronal", "right", (57_000.0, 10_300.0)),
    ("rat16-Th7", "rat16", "treated", "Th7", "coronal", "right", (63_000.0, 10_300.0)),
    ("rat16-L2", "rat16", "treated", "L2", "coronal", "right", (69_000.0, 10_300.0)),
    ("rat11-lesion", "rat11", "intact", "lesion", "horizontal", "left", (24_500.0, 15_900.0)),
    ("rat13-lesion", "rat13", "vehicle", "lesion", "horizontal", "left", (36_500.0, 15_900.0)),
    ("rat15-lesion", "rat15", "treated", "lesion", "horizontal", "left", (48_500.0, 15_900.0)),
    ("rat14-lesion", "rat14", "vehicle", "lesion", "horizontal", "right", (24_500.0, 21_100.0)),
    ("rat16-lesion", "rat16", "treated", "lesion", "horizontal", "right", (36_500.0, 21_100.0)),
)
"""Model B's demo slide: six animals (rat11/12 intact, rat13/14 vehicle, rat15/16
treated; odd injected left, even right), C5/Th7/L2 of each in two rows and
five horizontal sections through the T9-10 lesion (rat11's intact)."""

MAX_ROTATION_DEG = {"coronal": 10.0, "horizontal": 3.0}


@dataclass(frozen=True)
class SlideParameters:
    """Parameters of model B's slide that a user may vary.

    Attributes
    ----------
    dapi_gray_white_contrast : float
        Ratio of mean DAPI signal in gray vs white matter (stain and
        thickness dependent). Default 1.35 (model A's slide has about 2).
    object_depth_range_um : float
        Labelled objects lie within ± half of this of the focal surface.
    nucleus_depth_range_um : float
        Nuclei lie within ± half of this (the section's thickness shows).
    focus_bumps : bool
        Local focus bumps (see :attr:`ModelBSlide.focus_bumps`) on or off.
    """

    dapi_gray_white_contrast: float = 1.35
    object_depth_range_um: float = 2.0
    nucleus_depth_range_um: float = 8.0
    focus_bumps: bool = False

    def __post_init__(self) -> None:
        if not 0.5 <= self.dapi_gray_white_contrast <= 5.0:
            raise ValueError(
                f"dapi_gray_white_contrast must be within 0.5..5, got {self.dapi_gray_white_contrast!r}"
            )
        for name in ("object_depth_range_um", "nucleus_depth_range_um"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 40.0):
                raise ValueError(f"{name} must be within 0..40 µm, got {value!r}")


# ============================================================ truth records


@dataclass(frozen=True, eq=False)
class ModelBAxonObjects:
    """Labelled objects of one section (ground truth, stage µm).

    Attributes
    ----------
    xy_um : (N, 2) float array
        Exact centroid of each object.
    area_um2 : (N,) float array
        Exact area of each object (sum of its strips).
    equivalent_diameter_um : (N,) float array
        ``2·sqrt(area/π)``.
    major_axis_um, minor_axis_um : (N,) float arrays
        ``4·sqrt(λ)`` of the eigenvalues of each object's second-moment
        matrix (as ``skimage.measure.regionprops`` defines them).
    kind : (N,) str array
        "blob", "elongated", "fibre" or "bouton".
    tissue, side, zone : (N,) str arrays
        Truth labels as in model A's ``AxonObjects``.
    strip_object : (M,) int array
        Object of each strip; strips span ``[strip_y0_um, strip_y0_um +
        strip_height_um)`` × ``[strip_x0_um, strip_x1_um)``.
    strip_y0_um, strip_x0_um, strip_x1_um : (M,) float arrays
    strip_height_um : float
    """

    xy_um: F64
    area_um2: F64
    equivalent_diameter_um: F64
    major_axis_um: F64
    minor_axis_um: F64
    kind: NDArray[np.str_]
    tissue: NDArray[np.str_]
    side: NDArray[np.str_]
    zone: NDArray[np.str_]
    strip_object: I64
    strip_y0_um: F64
    strip_x0_um: F64
    strip_x1_um: F64
    strip_height_um: float


# ============================================================ focal surface


@dataclass(frozen=True)
class FocalSurface:
    """Tilt plus a quadratic bow (the slide's sag), plus optional bumps."""

    z0_um: float
    centre_um: tuple[float, float]
    tilt_um_per_mm: tuple[float, float]
    bow_um: float  # deviation at 30 mm from the centre along x (15 mm along y)
    bumps: tuple[FocusBump, ...] = ()
    bumps_on: bool = False

    def smooth_z_um(self, x: F64, y: F64) -> F64:
        """Focal surface without bumps (µm)."""
        u = (np.asarray(x, np.float64) - self.centre_um[0]) / 1000.0
        v = (np.asarray(y, np.float64) - self.centre_um[1]) / 1000.0
        bow = self.bow_um * ((u / 30.0) ** 2 + (v / 15.0) ** 2)
        return np.asarray(self.z0_um + self.tilt_um_per_mm[0] * u + self.tilt_um_per_mm[1] * v + bow)

    def bump_z_um(self, x: F64, y: F64) -> F64:
        """Sum of the bumps at (x, y) (µm); 0 when they are off."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        out = np.zeros(np.broadcast(x, y).shape)
        if not self.bumps_on:
            return out
        for bump in self.bumps:
            c, s = math.cos(math.radians(bump.angle_deg)), math.sin(math.radians(bump.angle_deg))
            dx, dy = x - bump.x_um, y - bump.y_um
            a = (c * dx + s * dy) / bump.sigma_major_um
            b = (-s * dx + c * dy) / bump.sigma_minor_um
            out = out + bump.amplitude_um * np.exp(-0.5 * (a * a + b * b))
        return out

    def z_um(self, x: F64, y: F64) -> F64:
        """Focal surface z (µm)."""
        return np.asarray(self.smooth_z_um(x, y) + self.bump_z_um(x, y), dtype=np.float64)

    def max_bump_um(self) -> float:
        """Upper bound of the bumps' deviation (µm)."""
        return sum(abs(b.amplitude_um) for b in self.bumps) if self.bumps_on else 0.0


# ============================================================ sections


@dataclass(frozen=True)
class _AnimalFactors:
    density: float
    sparing: float
    cavity: float


def _animal(seed: int, animal: str) -> _AnimalFactors:
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(animal.encode()), 0xB]))
    z = rng.standard_normal(3)
    return _AnimalFactors(
        float(np.exp(ANIMAL_SD["density"] * z[0])),
        float(np.exp(ANIMAL_SD["sparing"] * z[1])),
        float(np.exp(ANIMAL_SD["cavity"] * z[2])),
    )


def horizontal_density(distance_um: F64 | float, group: str, *, sparing: float = 1.0) -> F64:
    """Labelled-fibre area fraction along a horizontal section.

    Rostral of the lesion (``s < 0``) the density is ``d0``; it falls
    logistically across the epicenter to the spared fraction ``c·sparing``
    of ``d0`` caudally, over the group's dieback length ``L``: ``f(s) =
    d0·(c' + (1 − c')/(1 + exp(s/L)))``; intact animals are flat.

    Parameters
    ----------
    distance_um : float or array
        Signed distance from the epicenter (µm, negative = rostral).
    group : str
    sparing : float
        Per-animal factor on the spared fraction (injured groups).
    """
    d0, c, length = HORIZONTAL_PROFILE[group]
    s = np.asarray(distance_um, dtype=np.float64)
    if group == "intact":
        return np.full(s.shape, d0)
    cc = min(1.0, c * sparing)
    return np.asarray(d0 * (cc + (1.0 - cc) / (1.0 + np.exp(np.clip(s / length, -50, 50)))))


def _bin_name(s0: float, s1: float) -> str:
    return f"rc_{round(s0)}_{round(s1)}"


@dataclass
class _Geometry:
    """Eagerly built geometry of a section."""

    spec: SectionSpec
    orientation: str
    tissue: Polygon  # local
    gray: Polygon  # local (the hole cut out)
    territory: Polygon | None
    hole: Polygon | None
    epicenter_u_um: float
    regions_local: dict[str, BaseGeometry]
    truth: SectionTruth

    def to_stage(self, g: BaseGeometry) -> BaseGeometry:
        return affinity.translate(
            affinity.rotate(g, self.spec.rotation_deg, origin=(0.0, 0.0)), *self.spec.centre_um
        )

    def pts_to_stage(self, pts: F64) -> F64:
        a = math.radians(self.spec.rotation_deg)
        c, s = math.cos(a), math.sin(a)
        x, y = pts[..., 0], pts[..., 1]
        return np.stack([c * x - s * y + self.spec.centre_um[0], s * x + c * y + self.spec.centre_um[1]], -1)


@dataclass
class _Content:
    """Lazily built content of a section: objects, nuclei, background fields."""

    objects: rd.StripObjects
    n_objects: int
    kind: I64
    tclass: I64
    side: I64
    zone: I64
    strips: ob.Strips
    nuclei: rd.Nuclei
    fields: rd.Fields


def _build_geometry(spec: SectionSpec, seed: int) -> _Geometry:
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(spec.section_id.encode()), 0x6E0]))
    animal = _animal(seed, spec.animal)
    side_sign = 1.0 if spec.tracer_side == "right" else -1.0
    half = 1e6
    if spec.orientation == "coronal":
        geo = sh.coronal_geometry(spec.level, side_sign, rng)
        hole: Polygon | None = geo.canal
        tissue = geo.outline.difference(geo.canal)
        gray = geo.gray.difference(geo.canal)
        territory: Polygon | None = geo.territory
        epi = 0.0
        right_half = box(0.0, -half, half, half)
        left_half = box(-half, -half, 0.0, half)
        regions: dict[str, BaseGeometry] = {
            "section": tissue,
            "white_matter": tissue.difference(gray),
            "gray_matter": gray,
            "rubrospinal_territory": territory,
            "left": tissue.intersection(left_half),
            "right": tissue.intersection(right_half),
            "dorsal": tissue.intersection(box(-half, -half, half, 0.0)),
            "ventral": tissue.intersection(box(-half, 0.0, half, half)),
        }
        outline = geo.outline
    else:
        geo_h = sh.horizontal_geometry(spec.group, animal.cavity, rng)
        hole = geo_h.cavity
        outline = geo_h.outline
        tissue = outline.difference(hole) if hole is not None else outline
        gray = geo_h.gray.difference(hole) if hole is not None else geo_h.gray
        territory = None
        epi = geo_h.epicenter_u_um
        u_min, _, u_max, _ = outline.bounds
        k0 = math.floor((u_min - epi) / RC_BIN_UM)
        k1 = math.ceil((u_max - epi) / RC_BIN_UM)
        regions = {
            "section": tissue,
            "white_matter": tissue.difference(gray),
            "gray_matter": gray,
            "left": tissue.intersection(box(-half, 0.0, half, half)),  # left is +v
            "right": tissue.intersection(box(-half, -half, half, 0.0)),
        }
        for k in range(k0, k1):
            s0, s1 = k * RC_BIN_UM, (k + 1) * RC_BIN_UM
            regions[_bin_name(s0, s1)] = tissue.intersection(box(epi + s0, -half, epi + s1, half))
    stage_outline = _stage_pts(spec, sh.polygon_array(outline))
    gray_full = geo.gray if spec.orientation == "coronal" else geo_h.gray
    rot = spec.rotation_deg

    def unit(vec: tuple[float, float]) -> tuple[float, float]:
        a = math.radians(rot)
        return (math.cos(a) * vec[0] - math.sin(a) * vec[1], math.sin(a) * vec[0] + math.cos(a) * vec[1])

    coronal = spec.orientation == "coronal"
    epi_stage = None if coronal else tuple(float(v) for v in _stage_pts(spec, np.array([[epi, 0.0]]))[0])
    truth = SectionTruth(
        spec=spec,
        outline=stage_outline,
        gray_matter=(_stage_pts(spec, sh.polygon_array(gray_full)),),
        central_canal=_stage_pts(spec, sh.polygon_array(hole)) if coronal and hole is not None else None,
        lesion_cavity=_stage_pts(spec, sh.polygon_array(hole)) if not coronal and hole is not None else None,
        rubrospinal_territory=_stage_pts(spec, sh.polygon_array(territory))
        if territory is not None
        else None,
        epicenter_um=epi_stage,  # type: ignore[arg-type]
        rostral_direction=None if coronal else unit((-1.0, 0.0)),
        right_direction=unit((1.0, 0.0)) if coronal else unit((0.0, -1.0)),
        midline_point_um=tuple(float(v) for v in spec.centre_um),  # type: ignore[arg-type]
        ventral_direction=unit((0.0, 1.0)) if coronal else None,
        bbox_um=(
            float(stage_outline[:, 0].min()),
            float(stage_outline[:, 1].min()),
            float(stage_outline[:, 0].max()),
            float(stage_outline[:, 1].max()),
        ),
        region_names=tuple(regions),
    )
    return _Geometry(spec, spec.orientation, tissue, gray, territory, hole, epi, regions, truth)


def _stage_pts(spec: SectionSpec, pts: F64) -> F64:
    a = math.radians(spec.rotation_deg)
    c, s = math.cos(a), math.sin(a)
    return np.column_stack(
        [c * pts[:, 0] - s * pts[:, 1] + spec.centre_um[0], s * pts[:, 0] + c * pts[:, 1] + spec.centre_um[1]]
    )


# ------------------------------------------------------------ content builders


def _draw_puncta(
    rng: np.random.Generator, centres: F64, *, median_um: float, elongated: float
) -> ob.Candidates:
    n = len(centres)
    is_cap = rng.uniform(0.0, 1.0, n) < elongated
    parts = []
    if (~is_cap).any():
        d = ob.puncta_diameters(rng, int((~is_cap).sum()), median_um)
        parts.append(ob.blobs(rng, centres[~is_cap], d))
    if is_cap.any():
        m = int(is_cap.sum())
        parts.append(
            ob.capsules(
                rng,
                centres[is_cap],
                rng.uniform(2.0, 5.0, m),
                rng.uniform(0.9, 1.7, m),
                rng.uniform(0, np.pi, m),
            )
        )
    return ob.Candidates.concat(parts)


def _areas(c: ob.Candidates) -> F64:
    x, y = c.offsets[..., 0], c.offsets[..., 1]
    return np.asarray(
        0.5 * np.abs(np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1)), dtype=np.float64
    )


def _fill(
    rng: np.random.Generator,
    part: ob.Partition,
    region: BaseGeometry,
    fraction: float,
    draw: ob.Candidates,
    want_class: int,
    want_side: int,
    *,
    clustered: bool = False,
) -> ob.Candidates:
    """Place shapes from ``draw`` until they cover ``fraction`` of ``region``.

    Rounds of candidates (clustered or uniform) top up the covered area;
    each round keeps the candidates that lie in the wanted cell and clear
    of every object already placed.
    """
    placed = draw.take(np.zeros(0, np.int64))
    pieces = [q for q in getattr(region, "geoms", [region]) if isinstance(q, Polygon) and q.area > 50.0]
    if fraction <= 0.0 or not pieces:
        return placed
    target = fraction * sum(q.area for q in pieces)
    mean_area = float(_areas(draw).mean())
    covered = 0.0
    for _ in range(6):
        deficit = target - covered
        if deficit <= 0.02 * target:
            break
        n = deficit / mean_area * 1.15
        pts = []
        for q in pieces:
            m = int(rng.poisson(n * q.area / target * fraction))
            if m:
                pts.append(ob.thomas_process(rng, q, m, 5.0, 6.0) if clustered else ob.uniform_in(rng, q, m))
        if not pts or sum(len(x) for x in pts) == 0:
            continue
        centres = np.concatenate(pts)
        shapes = draw.take(rng.integers(0, len(draw), len(centres)))
        shapes.centre = centres
        ok, tclass, side, _ = part.classify(shapes)
        shapes = shapes.take(np.flatnonzero(ok & (tclass == want_class) & (side == want_side)))
        both = ob.Candidates.concat([placed, shapes])
        placed = both.take(np.flatnonzero(ob.keep_disjoint(both)))
        covered = float(_areas(placed).sum())
    return placed


def _build_content(geom: _Geometry, seed: int, params: SlideParameters) -> _Content:
    spec = geom.spec
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(spec.section_id.encode()), 0xC0]))
    animal = _animal(seed, spec.animal)
    part = ob.Partition(
        geom.tissue, geom.gray, geom.territory, geom.orientation, geom.epicenter_u_um, RC_BIN_UM
    )
    want_side = 1 if spec.tracer_side == "right" else 0
    half_box = box(0.0, -1e6, 1e6, 1e6) if want_side == 1 else box(-1e6, -1e6, 0.0, 1e6)
    pool = 4000

    def shapes_like(kind: str) -> ob.Candidates:
        z = np.zeros((pool, 2))
        if kind == "rst":
            return _draw_puncta(rng, z, median_um=2.5, elongated=0.35)
        if kind == "wm":
            return _draw_puncta(rng, z, median_um=1.9, elongated=0.3)
        if kind == "gm":
            half = pool // 2
            fib = ob.fibres(
                rng,
                z[:half],
                rng.uniform(6.0, 25.0, half),
                rng.uniform(0.8, 1.3, half),
                rng.uniform(0, np.pi, half),
            )
            bout = ob.blobs(rng, z[:half], rng.uniform(1.0, 1.8, half), kind=ob.BOUTON)
            return ob.Candidates.concat([fib, bout])
        m = pool
        fib = ob.fibres(
            rng, z, rng.uniform(10.0, 40.0, m), rng.uniform(1.0, 1.6, m), np.radians(rng.normal(0.0, 4.0, m))
        )
        return ob.Candidates.concat([fib, _draw_puncta(rng, z[: m // 6], median_um=2.0, elongated=0.2)])

    parts: list[ob.Candidates] = []
    if geom.orientation == "coronal":
        factor = animal.density
        if spec.group != "intact" and spec.level == "L2":
            factor *= animal.sparing
        assert geom.territory is not None
        parts.append(
            _fill(
                rng,
                part,
                geom.territory,
                RST_DENSITY[spec.group][spec.level] * factor,
                shapes_like("rst"),
                1,
                want_side,
                clustered=True,
            )
        )
        wm = geom.regions_local["white_matter"].intersection(half_box).difference(geom.territory.buffer(2.0))
        parts.append(
            _fill(rng, part, wm, WM_DENSITY[spec.group][spec.level] * factor, shapes_like("wm"), 0, want_side)
        )
        gm = geom.gray.intersection(half_box)
        parts.append(
            _fill(rng, part, gm, GM_DENSITY[spec.group][spec.level] * factor, shapes_like("gm"), 2, want_side)
        )
    else:
        wm = geom.regions_local["white_matter"].intersection(
            box(-1e6, -1e6, 1e6, 0.0) if want_side == 1 else box(-1e6, 0.0, 1e6, 1e6)
        )
        # place along the section in 250 µm slices at the profile's density
        u0, _, u1, _ = wm.bounds
        edges = np.arange(u0, u1 + 250.0, 250.0)
        pool_shapes = shapes_like("hz")
        for a, b in itertools.pairwise(edges):
            sl = wm.intersection(box(a, -1e6, b, 1e6))
            if sl.is_empty or sl.area < 100.0:
                continue
            s_mid = 0.5 * (a + b) - geom.epicenter_u_um
            frac = float(horizontal_density(s_mid, spec.group, sparing=animal.sparing)) * animal.density
            for piece in getattr(sl, "geoms", [sl]):
                if isinstance(piece, Polygon) and piece.area > 100.0:
                    parts.append(_fill(rng, part, piece, frac, pool_shapes, 0, want_side))
                    # one disjointness pass across slices (fibres may reach across slice edges)
    cand = ob.Candidates.concat(parts)
    cand = cand.take(np.flatnonzero(ob.keep_disjoint(cand)))
    ok, tclass, side, zone = part.classify(cand)
    assert ok.all()
    # to stage coordinates, strips, sorted by centre y for rendering
    a = math.radians(spec.rotation_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = geom.pts_to_stage(cand.centre)
    offsets = cand.offsets @ rot.T
    order = np.lexsort((centre[:, 0], centre[:, 1]))
    centre, offsets = centre[order], offsets[order]
    kind, tclass, side, zone = cand.kind[order], tclass[order], side[order], zone[order]
    n = len(order)
    strips = ob.strips_from_polygons(centre, offsets)
    counts = np.bincount(strips.obj, minlength=n)
    emission = TRACER_EMISSION * rng.lognormal(0.0, 0.30, n) * np.where(kind == ob.FIBRE, 0.85, 1.0)
    depth = rng.uniform(-0.5, 0.5, n) * params.object_depth_range_um
    x0 = np.full(n, np.inf)
    x1 = np.full(n, -np.inf)
    np.minimum.at(x0, strips.obj, strips.x0)
    np.maximum.at(x1, strips.obj, strips.x1)
    reach = float(np.max(np.maximum(x1 - centre[:, 0], centre[:, 0] - x0), initial=0.0))
    reach = max(
        reach, float(np.max(np.abs(strips.cy0 - centre[:, 1]) + strips.n_rows * ob.STRIP_UM, initial=0.0))
    )
    objs = rd.StripObjects(
        x_um=centre[:, 0].copy(),
        y_um=centre[:, 1].copy(),
        x0_um=np.where(np.isfinite(x0), x0, centre[:, 0]),
        x1_um=np.where(np.isfinite(x1), x1, centre[:, 0]),
        cy0_um=strips.cy0,
        n_rows=strips.n_rows,
        first=strips.first_strip(n),
        count=counts.astype(np.int64),
        strip_row=strips.row,
        strip_x0_um=strips.x0,
        strip_x1_um=strips.x1,
        emission=emission,
        depth_um=depth,
        order=np.arange(n, dtype=np.int64),
        strip_um=ob.STRIP_UM,
        max_reach_um=reach,
    )
    nuclei = _build_nuclei(geom, rng, params)
    fields = _build_fields(geom, rng)
    return _Content(objs, n, kind, tclass, side, zone, strips, nuclei, fields)


def _build_nuclei(geom: _Geometry, rng: np.random.Generator, params: SlideParameters) -> rd.Nuclei:
    """DAPI nuclei: Poisson points thinned by tissue class, shapes by cell type."""
    contrast = params.dapi_gray_white_contrast
    glia_r = optics.NUCLEUS_RADII_UM[optics.NUCLEUS_RADII_UM <= 3.5]
    neuron_r = optics.NUCLEUS_RADII_UM[optics.NUCLEUS_RADII_UM >= 4.0]
    glia_signal = NUCLEUS_EMISSION["glia"] * np.pi * float(np.mean(glia_r**2))
    neuron_signal = NUCLEUS_EMISSION["neuron"] * np.pi * float(np.mean(neuron_r**2))
    gray_signal = NEURON_FRACTION * neuron_signal + (1 - NEURON_FRACTION) * glia_signal
    rho_w = WHITE_NUCLEI_PER_MM2 / 1e6
    rho_g = contrast * rho_w * glia_signal / gray_signal
    boost = 3.0  # ependyma and lesion scar
    rho_max = max(rho_w, rho_g) * boost
    n = int(rng.poisson(rho_max * geom.tissue.area))
    pts = ob.uniform_in(rng, geom.tissue, n)
    in_gray = shapely.contains_xy(geom.gray, pts[:, 0], pts[:, 1])
    rho = np.where(in_gray, rho_g, rho_w)
    if geom.hole is not None:
        rim = 25.0 if geom.orientation == "coronal" else 150.0
        hole_tree = cKDTree(sh.boundary_points([geom.hole], 1.0))
        d_hole, _ = hole_tree.query(pts, distance_upper_bound=rim + 1.0)
        rho = np.where(d_hole < rim, rho_max, rho)
    keep = rng.uniform(0.0, rho_max, len(pts)) < rho
    pts, in_gray = pts[keep], in_gray[keep]
    m = len(pts)
    neuron = in_gray & (rng.uniform(0.0, 1.0, m) < NEURON_FRACTION)
    ri = np.where(
        neuron,
        rng.integers(0, len(neuron_r), m) + int(np.flatnonzero(optics.NUCLEUS_RADII_UM >= 4.0)[0]),
        rng.integers(0, len(glia_r), m),
    )
    r_eq = optics.NUCLEUS_RADII_UM[ri]
    elong = np.where(neuron, rng.uniform(1.0, 1.2, m), rng.uniform(1.0, 1.25, m))
    theta = rng.uniform(0.0, np.pi, m)
    if geom.orientation == "horizontal":
        along = ~in_gray
        elong = np.where(along, rng.uniform(1.3, 1.8, m), elong)
        theta = np.where(along, rng.normal(0.0, 0.15, m), theta)
    a = r_eq * np.sqrt(elong)
    b = r_eq / np.sqrt(elong)
    # whole nucleus in tissue
    tree = cKDTree(sh.boundary_points([geom.tissue], ob.BOUNDARY_SPACING_UM))
    d, _ = tree.query(pts, distance_upper_bound=float(a.max(initial=0.0)) + 2.0)
    ok = d >= a + 1.0
    pts, a, b, theta, ri, neuron = pts[ok], a[ok], b[ok], theta[ok], ri[ok], neuron[ok]
    m = len(pts)
    theta = theta + math.radians(geom.spec.rotation_deg)
    xy = geom.pts_to_stage(pts)
    c, s = np.cos(theta), np.sin(theta)
    ia2, ib2 = 1.0 / a**2, 1.0 / b**2
    quad = np.column_stack([c * c * ia2 + s * s * ib2, c * s * (ia2 - ib2), s * s * ia2 + c * c * ib2])
    half = np.column_stack([np.sqrt((a * c) ** 2 + (b * s) ** 2), np.sqrt((a * s) ** 2 + (b * c) ** 2)])
    emission = np.where(neuron, NUCLEUS_EMISSION["neuron"], NUCLEUS_EMISSION["glia"]) * rng.lognormal(
        0.0, 0.2, m
    )
    depth = rng.uniform(-0.5, 0.5, m) * params.nucleus_depth_range_um
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    return rd.Nuclei(
        x_um=xy[order, 0].copy(),
        y_um=xy[order, 1].copy(),
        quad=quad[order],
        half=half[order],
        radius_index=ri[order].astype(np.int64),
        radius_um=optics.NUCLEUS_RADII_UM[ri[order]],
        emission=emission[order],
        depth_um=depth[order],
        order=np.arange(m, dtype=np.int64),
        max_reach_um=float(half.max(initial=0.0)),
    )


_FIELD_MARGIN_UM = 24.0


def _signed_distance(poly: BaseGeometry, xs: F64, ys: F64) -> NDArray[np.uint8]:
    """Signed distance (positive inside) to a polygon's boundary on a grid, coded ``128 + 8·d``.

    Exact (to 0.1 µm) within 20 µm of the boundary, clipped to ±16 µm by the code.
    """
    gx, gy = np.meshgrid(xs, ys)
    inside = sh.scanline_fill(poly, (float(xs[0]), float(ys[0])), float(xs[1] - xs[0]), gx.shape)
    reach = math.ceil(20.0 / rd.FIELD_UM)
    size = 2 * reach + 1
    grown = ndimage.maximum_filter(inside, size=size)
    shrunk = ndimage.minimum_filter(inside, size=size)
    near = grown != shrunk
    d = np.where(inside, 16.0, -16.0)
    polys = list(poly.geoms) if isinstance(poly, MultiPolygon) else [poly]
    tree = cKDTree(sh.boundary_points(polys, 0.2))
    dist, _ = tree.query(np.column_stack([gx[near], gy[near]]), distance_upper_bound=40.0)
    d[near] = np.where(inside[near], dist, -dist)
    return np.clip(np.rint(128.0 + 8.0 * d), 0, 255).astype(np.uint8)


def _build_fields(geom: _Geometry, rng: np.random.Generator) -> rd.Fields:
    x0, y0, x1, y1 = geom.truth.bbox_um
    g = rd.FIELD_UM
    ox = math.floor((x0 - _FIELD_MARGIN_UM) / g) * g
    oy = math.floor((y0 - _FIELD_MARGIN_UM) / g) * g
    nx = math.ceil((x1 + _FIELD_MARGIN_UM - ox) / g) + 1
    ny = math.ceil((y1 + _FIELD_MARGIN_UM - oy) / g) + 1
    xs = ox + g * np.arange(nx, dtype=np.float64)
    ys = oy + g * np.arange(ny, dtype=np.float64)
    tissue = geom.to_stage(geom.tissue)
    gray = geom.to_stage(geom.gray)
    noise = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 2.5)
    noise *= 0.07 / max(float(noise.std()), 1e-9)
    grain = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 0.8)
    noise += grain * (0.04 / max(float(grain.std()), 1e-9))
    if geom.orientation == "horizontal":
        streak = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), (0.6, 8.0))
        noise += streak * (0.06 / max(float(streak.std()), 1e-9))
    texture = np.clip(np.rint(128.0 + 400.0 * noise), 0, 255).astype(np.uint8)
    return rd.Fields(
        origin_um=(ox, oy),
        tissue=_signed_distance(tissue, xs, ys),
        gray=_signed_distance(gray, xs, ys),
        texture=texture,
        bbox_um=(ox, oy, float(xs[-1]), float(ys[-1])),
    )


# ============================================================ the slide


class ModelBSlide:
    """Model B's virtual slide (see the package docstring).

    Build one with :func:`make_model_b_slide` or :func:`model_b_slide`. The
    same truth interface as model A's ``VirtualSlide``: :attr:`sections`,
    :meth:`section`, :meth:`truth_table`, :meth:`axon_objects`,
    :meth:`render_truth_labels`, :meth:`section_bbox_um`,
    :meth:`tissue_bbox_um`, :meth:`focal_plane_z_um`, :meth:`render`. A
    section's objects, nuclei and background fields are built on first use
    (thread-safe); the slide is otherwise immutable.
    """

    channels: tuple[str, ...] = CHANNELS

    def __init__(
        self,
        geometries: Sequence[_Geometry],
        focal: FocalSurface,
        seed: int,
        params: SlideParameters,
        beads: Beads,
        _content: dict[str, _Content] | None = None,
        _lock: threading.Lock | None = None,
    ) -> None:
        self._geoms = tuple(geometries)
        self._by_id = {g.spec.section_id: g for g in self._geoms}
        self._focal = focal
        self.seed = seed
        self.parameters = params
        self._beads = beads
        self._bead_objects = _bead_strip_objects(beads)
        self._content: dict[str, _Content] = {} if _content is None else _content
        self._lock = threading.Lock() if _lock is None else _lock

    # ------------------------------------------------------------ geometry

    @property
    def sections(self) -> tuple[SectionTruth, ...]:
        """Ground-truth geometry of every section, in slide order."""
        return tuple(g.truth for g in self._geoms)

    def section(self, section_id: str) -> SectionTruth:
        """Ground truth of one section (``KeyError`` naming it if unknown)."""
        return self._geom(section_id).truth

    def _geom(self, section_id: str) -> _Geometry:
        try:
            return self._by_id[section_id]
        except KeyError:
            raise KeyError(f"no section {section_id!r} on this slide; known: {sorted(self._by_id)}") from None

    def _get(self, section_id: str) -> _Content:
        geom = self._geom(section_id)
        with self._lock:
            content = self._content.get(section_id)
            if content is None:
                content = _build_content(geom, self.seed, self.parameters)
                self._content[section_id] = content
            return content

    def section_bbox_um(self, section_id: str) -> tuple[float, float, float, float]:
        """Bounding box (xmin, ymin, xmax, ymax) of a section's tissue, µm."""
        return self._geom(section_id).truth.bbox_um

    def tissue_bbox_um(self) -> tuple[float, float, float, float]:
        """Bounding box (xmin, ymin, xmax, ymax) of all tissue, µm."""
        b = np.array([g.truth.bbox_um for g in self._geoms])
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    def focal_plane_z_um(
        self, x_um: float | NDArray[np.floating], y_um: float | NDArray[np.floating]
    ) -> NDArray[np.float64]:
        """Z (µm) at which the slide surface at stage ``(x, y)`` is in focus.

        A tilt of 0.2-0.5 µm/mm, a bow of 4-8 µm over the slide, and the
        focus bumps when they are switched on. Broadcasts like numpy.
        """
        return self._focal.z_um(np.asarray(x_um, np.float64), np.asarray(y_um, np.float64))

    @property
    def focus_bumps(self) -> tuple[FocusBump, ...]:
        """The slide's local focus bumps (whether or not they are switched on)."""
        return self._focal.bumps

    @property
    def focus_bumps_on(self) -> bool:
        """Whether the focus bumps deform the focal surface."""
        return self._focal.bumps_on

    def with_focus_bumps(self, on: bool) -> ModelBSlide:
        """Return the slide with its focus bumps switched on or off (sharing all content)."""
        if on == self._focal.bumps_on:
            return self
        return ModelBSlide(
            self._geoms,
            replace(self._focal, bumps_on=bool(on)),
            self.seed,
            replace(self.parameters, focus_bumps=bool(on)),
            self._beads,
            self._content,
            self._lock,
        )

    def beads(self) -> Beads:
        """The bead area's beads (positions known exactly)."""
        return self._beads

    @staticmethod
    def psf(objective: str, channel: str) -> optics.PsfTable:
        """The PSF mixture table of one of model B's objectives in a channel."""
        if objective not in optics.OBJECTIVE_NA:
            raise KeyError(f"unknown objective {objective!r}; model B has {sorted(optics.OBJECTIVE_NA)}")
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; the slide has {CHANNELS}")
        return optics.psf_table(optics.OBJECTIVE_NA[objective][1], optics.EMISSION_UM[channel])

    # ------------------------------------------------------------ truth

    def axon_objects(self, section_id: str) -> ModelBAxonObjects:
        """Return the labelled objects of one section (see :class:`ModelBAxonObjects`)."""
        c = self._get(section_id)
        n = c.n_objects
        st = c.strips
        area = st.area_um2(n)
        cen = st.centroid_um(n)
        h = st.height_um
        a = (st.x1 - st.x0) * h
        dx_c = 0.5 * (st.x0 + st.x1) - cen[st.obj, 0]
        dy_c = st.y0 + 0.5 * h - cen[st.obj, 1]
        w = st.x1 - st.x0
        # second moments of each strip about the object's centroid
        mxx = np.bincount(st.obj, weights=a * (dx_c**2 + w**2 / 12.0), minlength=n) / area
        myy = np.bincount(st.obj, weights=a * (dy_c**2 + h**2 / 12.0), minlength=n) / area
        mxy = np.bincount(st.obj, weights=a * dx_c * dy_c, minlength=n) / area
        tr = 0.5 * (mxx + myy)
        disc = np.sqrt(np.maximum(0.25 * (mxx - myy) ** 2 + mxy**2, 0.0))
        geom = self._geom(section_id)
        tissue_names = np.array(["white_matter", "rubrospinal_territory", "gray_matter"])
        if geom.orientation == "coronal":
            zone = np.array(["dorsal", "ventral"])[c.zone]
        else:
            zone = np.array([_bin_name(k * RC_BIN_UM, (k + 1) * RC_BIN_UM) for k in c.zone], dtype=np.str_)
        return ModelBAxonObjects(
            xy_um=cen,
            area_um2=area,
            equivalent_diameter_um=2.0 * np.sqrt(area / np.pi),
            major_axis_um=4.0 * np.sqrt(tr + disc),
            minor_axis_um=4.0 * np.sqrt(np.maximum(tr - disc, 0.0)),
            kind=np.array(ob.KIND_NAMES)[c.kind],
            tissue=tissue_names[c.tclass],
            side=np.array(["left", "right"])[c.side],
            zone=zone.astype(np.str_),
            strip_object=st.obj.copy(),
            strip_y0_um=st.y0.copy(),
            strip_x0_um=st.x0.copy(),
            strip_x1_um=st.x1.copy(),
            strip_height_um=h,
        )

    def _object_mask(self, geom: _Geometry, c: _Content, region: str) -> NDArray[np.bool_]:
        if region == "section":
            return np.ones(c.n_objects, dtype=bool)
        if region == "white_matter":
            return c.tclass != 2
        if region == "gray_matter":
            return c.tclass == 2
        if region == "rubrospinal_territory":
            return c.tclass == 1
        if region in ("left", "right"):
            return c.side == (1 if region == "right" else 0)
        if region in ("dorsal", "ventral"):
            return c.zone == (1 if region == "ventral" else 0)
        s0 = float(region[3:].rsplit("_", 1)[0])
        return c.zone == round(s0 / RC_BIN_UM)

    def truth_table(self, section_id: str) -> list[RegionTruth]:
        """True area, labelled area and tracer signal per region.

        Areas are exact polygon areas (shapely; holes removed, halves and
        bins by exact clipping); labelled areas exact sums of the objects'
        strips. ``mean_tracer_photons`` is the mean expected in-focus rate
        per pixel of the 10x/0.30 objective (0.454 µm pixels): objects
        exactly, autofluorescence at its nominal level; other objectives
        scale by ``(p/0.454)² · (NA/0.30)⁴``.

        Returns
        -------
        list of RegionTruth, in the order of ``section(section_id).region_names``
        """
        geom = self._geom(section_id)
        c = self._get(section_id)
        area_obj = c.strips.area_um2(c.n_objects)
        signal = area_obj * c.objects.emission
        white, gray_rate = AUTOFLUORESCENCE["tdTomato"]
        p2 = optics.REFERENCE_PIXEL_UM**2
        rows = []
        for name in geom.truth.region_names:
            region = geom.regions_local[name]
            total = float(region.area)
            g_area = float(region.intersection(geom.gray).area)
            sel = self._object_mask(geom, c, name)
            axon = float(area_obj[sel].sum())
            background = white * (total - g_area) + gray_rate * g_area
            rows.append(
                RegionTruth(
                    section_id=section_id,
                    region=name,
                    area_um2=total,
                    axon_area_um2=axon,
                    pct_axonal_area=100.0 * axon / total if total > 0 else 0.0,
                    n_axon_objects=int(sel.sum()),
                    mean_tracer_photons=p2 * (background + float(signal[sel].sum())) / total
                    if total > 0
                    else 0.0,
                )
            )
        return rows

    def render_truth_labels(
        self,
        *,
        center_um: tuple[float, float],
        pixel_size_um: float,
        shape: tuple[int, int],
        section_id: str,
    ) -> dict[str, NDArray[np.bool_]]:
        """Boolean truth masks of one section on a frame's pixel grid.

        A pixel belongs to a region when its centre does (the pixel geometry
        of :meth:`render`).

        Returns
        -------
        dict of (H, W) bool arrays
            One per region name, ``"central_canal"`` or ``"lesion_cavity"``
            when the section has one, and ``"axons"``.
        """
        geom = self._geom(section_id)
        lat = rd.FrameLattice.from_center(center_um, pixel_size_um, shape)
        masks = {
            name: self._raster(geom.to_stage(geom.regions_local[name]), lat)
            for name in geom.truth.region_names
        }
        if geom.hole is not None:
            masks["central_canal" if geom.orientation == "coronal" else "lesion_cavity"] = self._raster(
                geom.to_stage(geom.hole), lat
            )
        masks["axons"] = (
            self.render_axon_labels(
                center_um=center_um, pixel_size_um=pixel_size_um, shape=shape, section_id=section_id
            )
            > 0
        )
        return masks

    @staticmethod
    def _raster(g: BaseGeometry, lat: rd.FrameLattice) -> NDArray[np.bool_]:
        """Pixels whose centre lies inside a (multi)polygon with holes."""
        p = lat.pixel_um
        origin = ((lat.n_x + lat.phi_x) * p, (lat.n_y + lat.phi_y) * p)
        return sh.scanline_fill(g, origin, p, (lat.height, lat.width))

    def render_axon_labels(
        self,
        *,
        center_um: tuple[float, float],
        pixel_size_um: float,
        shape: tuple[int, int],
        section_id: str,
    ) -> NDArray[np.int32]:
        """Label image of the section's objects (``index + 1`` where a pixel centre lies in an object)."""
        c = self._get(section_id)
        lat = rd.FrameLattice.from_center(center_um, pixel_size_um, shape)
        st = c.strips
        p = lat.pixel_um
        h, w = lat.height, lat.width
        out = np.zeros((h, w), dtype=np.int32)
        # pixel centre (row r) at y = (n_y + r + phi_y)·p: rows with y in [y0, y0 + h)
        r_lo = np.ceil(st.y0 / p - lat.phi_y - lat.n_y).astype(np.int64)
        r_hi = np.ceil((st.y0 + st.height_um) / p - lat.phi_y - lat.n_y).astype(np.int64)
        c_lo = np.ceil(st.x0 / p - lat.phi_x - lat.n_x).astype(np.int64)
        c_hi = np.ceil(st.x1 / p - lat.phi_x - lat.n_x).astype(np.int64)
        r_lo, r_hi = np.clip(r_lo, 0, h), np.clip(r_hi, 0, h)
        c_lo, c_hi = np.clip(c_lo, 0, w), np.clip(c_hi, 0, w)
        hit = np.flatnonzero((r_hi > r_lo) & (c_hi > c_lo))
        for i in hit:
            out[r_lo[i] : r_hi[i], c_lo[i] : c_hi[i]] = st.obj[i] + 1
        return out

    # ------------------------------------------------------------ rendering

    def render(
        self,
        *,
        center_um: tuple[float, float],
        pixel_size_um: float,
        shape: tuple[int, int],
        channel: str,
        z_um: float,
        out: NDArray[np.float32] | None = None,
        numerical_aperture: float | None = None,
    ) -> NDArray[np.float32]:
        """Noiseless expected photon rate of one camera frame.

        Parameters
        ----------
        center_um : (float, float)
            True stage position of the image centre (µm).
        pixel_size_um : float
            Pixel size on the slide (µm).
        shape : (int, int)
            Frame (H, W) in pixels.
        channel : {"DAPI", "tdTomato"}
        z_um : float
            Focus position (µm); each object's defocus is ``z_um −
            focal_plane_z_um − its depth``.
        out : (H, W) float32 C-contiguous array, optional
            Written in place and returned.
        numerical_aperture : float, optional
            Objective NA; by default model B's NA for the magnification
            ``4.54 µm / pixel_size_um``.

        Returns
        -------
        (H, W) float32 array
            Expected photons per ms of exposure per pixel, before the
            camera's vignetting; 0 on bare glass. Frames whose centres differ
            by whole pixels agree exactly where they overlap.
        """
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; the slide has {CHANNELS}")
        p = float(pixel_size_um)
        if not (math.isfinite(p) and p > 0.0):
            raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
        h, w = int(shape[0]), int(shape[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must be two positive ints, got {shape!r}")
        if not all(math.isfinite(float(v)) for v in (*center_um, z_um)):
            raise ValueError(f"center_um and z_um must be finite, got {center_um!r}, {z_um!r}")
        if out is not None and (out.shape != (h, w) or out.dtype != np.float32 or not out.flags.c_contiguous):
            raise ValueError(
                f"out must be a C-contiguous float32 array of shape {(h, w)}, got {out.dtype} {out.shape}"
            )
        na = numerical_aperture_for_pixel(p) if numerical_aperture is None else float(numerical_aperture)
        if not 0.01 <= na <= 0.95:
            raise ValueError(f"numerical_aperture must be within 0.01..0.95 (dry objective), got {na!r}")
        lat = rd.FrameLattice.from_center(center_um, p, (h, w))
        psf = optics.psf_table(round(na, 6), optics.EMISSION_UM[channel])
        scale = p * p * optics.brightness_factor(na)
        m = rd.coarse_step(p)
        jy0, jx0, ny, nx = lat.coarse_range(m)
        coarse = rd.Target(np.zeros((ny, nx), dtype=np.float32), jy0, jx0, m)
        fb = lat.bbox_um()
        z = float(z_um)
        # bound the defocus over the frame (focal surface, bumps, depths) for selection margins
        gx = np.linspace(fb[0], fb[2], 5)
        gy = np.linspace(fb[1], fb[3], 5)
        zf = self._focal.z_um(*np.meshgrid(gx, gy))
        depth = 0.5 * max(self.parameters.object_depth_range_um, self.parameters.nucleus_depth_range_um)
        dz_max = float(np.max(np.abs(z - zf))) + depth + self._focal.max_bump_um() + 1.0
        sig_max = float(psf.at(np.array([dz_max]))[1].max())
        margin = rd.STAMP_SIGMAS * sig_max + 2.0 * m * p + 2.0
        hits = [g for g in self._geoms if _overlap(g.truth.bbox_um, fb, margin + 60.0)]
        contents = [self._get(g.spec.section_id) for g in hits]
        rates = AUTOFLUORESCENCE[channel]
        if channel == "DAPI":
            rates = (rates[0], rates[0] * self.parameters.dapi_gray_white_contrast)
        rd.add_background(coarse, lat, [c.fields for c in contents], rates, scale)
        jobs: list[tuple[str, object, NDArray[np.int64], F64]] = []
        for c in contents:
            if channel == "DAPI":
                nuc = c.nuclei
                sel = nuc.select(_grow(fb, margin + nuc.max_reach_um))
                dz = z - self._focal.z_um(nuc.x_um[sel], nuc.y_um[sel]) - nuc.depth_um[sel]
                jobs.append(("nuclei", nuc, sel, dz))
            else:
                objs = c.objects
                sel = objs.select(_grow(fb, margin + objs.max_reach_um))
                dz = z - self._focal.z_um(objs.x_um[sel], objs.y_um[sel]) - objs.depth_um[sel]
                jobs.append(("strips", objs, sel, dz))
        if channel == "tdTomato" and _overlap(self._beads.area_um, fb, margin + 5.0):
            beads = self._bead_objects
            sel = beads.select(_grow(fb, margin + beads.max_reach_um))
            dz = z - self._focal.z_um(beads.x_um[sel], beads.y_um[sel])
            jobs.append(("strips", beads, sel, dz))
        discs = optics.disc_table(round(na, 6), optics.EMISSION_UM[channel], p) if channel == "DAPI" else None
        if out is None:
            out = np.empty((h, w), dtype=np.float32)
        frame = rd.Target(out, lat.n_y, lat.n_x, 1)
        wide = rd.WideLayers(lat, m, (jy0, jx0), (ny, nx), scale)
        # narrow components stamp straight into the frame, after the coarse lattice is in
        stamps: list[tuple[str, object, NDArray[np.int64], F64]] = []
        for kind, data, sel, dz in jobs:
            narrow = rd.Target(np.zeros((0, 0), np.float32), 0, 0, 1)  # collects nothing
            if kind == "nuclei":
                assert discs is not None
                rd.render_nuclei(narrow, wide, data, sel, lat, dz, psf, discs, only="wide")  # type: ignore[arg-type]
            else:
                rd.render_strip_objects(narrow, wide, data, sel, lat, dz, psf, only="wide")  # type: ignore[arg-type]
            stamps.append((kind, data, sel, dz))
        wide.blur_into(coarse.buffer)
        rd.upsample(coarse.buffer, m, (jy0, jx0), (lat.n_y, lat.n_x), out=out)
        for kind, data, sel, dz in stamps:
            if kind == "nuclei":
                assert discs is not None
                rd.render_nuclei(frame, wide, data, sel, lat, dz, psf, discs, only="narrow")  # type: ignore[arg-type]
            else:
                rd.render_strip_objects(frame, wide, data, sel, lat, dz, psf, only="narrow")  # type: ignore[arg-type]
        assert out is not None
        return out


def numerical_aperture_for_pixel(pixel_size_um: float) -> float:
    """Model B's objective NA for an image pixel size (µm)."""
    return optics.numerical_aperture_for(optics.SENSOR_PIXEL_UM / float(pixel_size_um))


def _overlap(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float], margin: float
) -> bool:
    return a[0] - margin < b[2] and b[0] - margin < a[2] and a[1] - margin < b[3] and b[1] - margin < a[3]


def _grow(b: tuple[float, float, float, float], m: float) -> tuple[float, float, float, float]:
    return (b[0] - m, b[1] - m, b[2] + m, b[3] + m)


def _bead_strip_objects(beads: Beads) -> rd.StripObjects:
    n = len(beads.xy_um)
    side = beads.diameter_um * math.sqrt(math.pi) / 2.0  # a square of the bead's area
    order = np.lexsort((beads.xy_um[:, 0], beads.xy_um[:, 1]))
    xy = beads.xy_um[order]
    return rd.StripObjects(
        x_um=xy[:, 0].copy(),
        y_um=xy[:, 1].copy(),
        x0_um=xy[:, 0] - side / 2,
        x1_um=xy[:, 0] + side / 2,
        cy0_um=xy[:, 1] - side / 2,
        n_rows=np.ones(n, np.int64),
        first=np.arange(n, dtype=np.int64),
        count=np.ones(n, np.int64),
        strip_row=np.zeros(n, np.int64),
        strip_x0_um=xy[:, 0] - side / 2,
        strip_x1_um=xy[:, 0] + side / 2,
        emission=np.full(n, BEAD_EMISSION),
        depth_um=np.zeros(n),
        order=np.arange(n, dtype=np.int64),
        strip_um=side,
        max_reach_um=side,
    )


def _make_beads(seed: int) -> Beads:
    """Beads on a jittered 30 µm lattice; 8 % of sites hold a close pair."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBEAD]))
    x0, y0, x1, y1 = BEAD_AREA_UM
    pitch = 30.0
    gx, gy = np.meshgrid(np.arange(x0 + pitch / 2, x1, pitch), np.arange(y0 + pitch / 2, y1, pitch))
    pts = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-8.0, 8.0, (gx.size, 2))
    pair = rng.uniform(0.0, 1.0, len(pts)) < 0.08
    ang = rng.uniform(0.0, 2 * np.pi, int(pair.sum()))
    dist = rng.uniform(0.8, 2.5, int(pair.sum()))
    mates = pts[pair] + np.column_stack([dist * np.cos(ang), dist * np.sin(ang)])
    xy = np.concatenate([pts, mates])
    d, _ = cKDTree(xy).query(xy, k=2)
    return Beads(xy, BEAD_DIAMETER_UM, BEAD_AREA_UM, d[:, 1] > 5.0)


def _make_bumps(geoms: Sequence[_Geometry], seed: int) -> tuple[FocusBump, ...]:
    """A bump on about a third of the sections: bubbles (round) and folds (elongated)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0B]))
    out = []
    for g in geoms:
        if rng.uniform() > 0.35:
            continue
        tissue = g.truth
        x0, y0, x1, y1 = tissue.bbox_um
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        poly = Polygon(tissue.outline)
        for _ in range(100):
            ang = rng.uniform(0.0, 2 * np.pi)
            f = rng.uniform(0.3, 0.55)
            px = cx + f * 0.5 * (x1 - x0) * math.cos(ang)
            py = cy + f * 0.5 * (y1 - y0) * math.sin(ang)
            if poly.contains(shapely.Point(px, py)):
                break
        fold = rng.uniform() < 0.4
        fwhm = rng.uniform(300.0, 900.0)
        sig = fwhm / 2.355
        out.append(
            FocusBump(
                section_id=g.spec.section_id,
                kind="fold" if fold else "bubble",
                x_um=float(px),
                y_um=float(py),
                amplitude_um=float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0)),
                sigma_major_um=float(sig),
                sigma_minor_um=float(sig * (0.3 if fold else 1.0)),
                angle_deg=float(rng.uniform(0.0, 180.0)),
            )
        )
    return tuple(out)


def model_b_specs(seed: int = 2027) -> tuple[SectionSpec, ...]:
    """Model B's demo sections (:data:`LAYOUT`; rotations drawn from ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EC]))
    out = []
    for sid, animal, group, level, orient, side, centre in LAYOUT:
        rot = float(rng.uniform(-1.0, 1.0) * MAX_ROTATION_DEG[orient])
        out.append(SectionSpec(sid, animal, group, level, orient, side, centre, rot))  # type: ignore[arg-type]
    return tuple(out)


def make_model_b_slide(
    specs: Sequence[SectionSpec], *, seed: int, parameters: SlideParameters | None = None
) -> ModelBSlide:
    """Generate model B's slide holding the given sections.

    Parameters
    ----------
    specs : sequence of SectionSpec
        Sections to mount; ids unique, inside :data:`TISSUE_ZONE_UM`, 1 mm
        apart, and clear of :data:`BEAD_AREA_UM`.
    seed : int
        Seed of all procedural content.
    parameters : SlideParameters, optional

    Raises
    ------
    ValueError
        Duplicate ids, tissue outside the zone, sections too close or on the beads.
    """
    params = parameters or SlideParameters()
    ids = [s.section_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate section ids: {dupes}")
    geoms = [_build_geometry(spec, seed) for spec in specs]
    zx0, zy0, zx1, zy1 = TISSUE_ZONE_UM
    for g in geoms:
        bb = g.truth.bbox_um
        if bb[0] < zx0 or bb[1] < zy0 or bb[2] > zx1 or bb[3] > zy1:
            raise ValueError(
                f"section {g.spec.section_id!r} (bbox {tuple(round(v) for v in bb)} µm) leaves the tissue "
                f"zone {TISSUE_ZONE_UM} µm; move its centre"
            )
        if _overlap(bb, BEAD_AREA_UM, 500.0):
            raise ValueError(
                f"section {g.spec.section_id!r} lies on the bead area {BEAD_AREA_UM} µm; move it"
            )
    for i, a in enumerate(geoms):
        for b in geoms[i + 1 :]:
            if _overlap(a.truth.bbox_um, b.truth.bbox_um, 1000.0):
                raise ValueError(
                    f"sections {a.spec.section_id!r} and {b.spec.section_id!r} are closer than 1 mm; "
                    "move them apart"
                )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF0C]))
    focal = FocalSurface(
        z0_um=0.0,
        centre_um=(46_000.0, 12_000.0),
        tilt_um_per_mm=(
            float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)),
            float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.5)),
        ),
        bow_um=float(rng.uniform(4.0, 8.0)),
        bumps=_make_bumps(geoms, seed),
        bumps_on=params.focus_bumps,
    )
    return ModelBSlide(geoms, focal, seed, params, _make_beads(seed))


def model_b_slide(seed: int = 2027) -> ModelBSlide:
    """Model B's demo slide (:data:`LAYOUT`), built once per seed and process.

    Sections' content is built on first use, so the slide is cheap to make.
    """
    return _model_b_slide(int(seed))


@functools.lru_cache(maxsize=4)
def _model_b_slide(seed: int) -> ModelBSlide:
    # one cache entry per seed, however the caller spells it
    return make_model_b_slide(model_b_specs(seed), seed=seed)
