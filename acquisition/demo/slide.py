"""The demo microscope's virtual slide: rat spinal-cord sections, procedurally.

A :class:`VirtualSlide` holds sections of adult rat spinal cord (coronal
sections at C5, Th7 and L2, horizontal sections spanning a T9-10 contusion)
mounted on a 75 × 25 mm slide, with a DAPI counterstain and
rubrospinal axons labelled by an AAV-tdTomato injection into the red nucleus.
It renders the noiseless expected photon rate that a camera would see at any
stage position, pixel size, channel and focus, and it carries its own ground
truth (region polygons, exact labelled-axon areas), computed from geometry
and never from an image.

Coordinate contract
-------------------
Stage/slide coordinates are in µm: the slide spans x ∈ [0, 75000],
y ∈ [0, 25000]; tissue lies in x ∈ [20000, 72000], y ∈ [2000, 23000] (the
left end carries the label). A frame of shape ``(H, W)`` centred on
``(xc, yc)`` with pixel size ``p`` has pixel ``(r, c)`` centred at
``x = xc + (c + 0.5 − W/2)·p``, ``y = yc + (r + 0.5 − H/2)·p``: rows go with
+y, columns with +x.

Coronal sections are mounted dorsal side toward −y and the animal's left
toward −x (seen from caudal). Horizontal sections lie with their long
(rostro-caudal) axis along x, rostral toward −x, seen from dorsal, so the
animal's right is toward −y. Each section is rotated about its centre by its
``rotation_deg`` (positive turns +x toward +y).

Beads and focus bumps
---------------------
A bead area (:data:`BEAD_AREA_UM`, right of the tissue zone) holds 0.17 µm
fluorescent beads on a jittered 25 µm lattice (tracer channel only,
positions in :meth:`VirtualSlide.beads`), imaged with the slide's own blur,
for PSF calibration. Optional local focus bumps (bubbles and folds of ±3-8
µm over 0.3-0.9 mm on eight sections, :attr:`VirtualSlide.focus_bumps`) are
off by default (``make_slide(..., focus_bumps=True)`` or
:meth:`VirtualSlide.with_focus_bumps`).

Ground truth
------------
Every labelled object (an axon punctum, i.e. a disc, or a beaded fibre, i.e.
a straight chain of equal overlapping discs) lies entirely inside one cell of
the partition tissue class (rubrospinal territory / other white matter /
gray matter) × left/right × dorsal/ventral (coronal) or 500 µm rostro-caudal
bin (horizontal), and objects never overlap each other, so the labelled area
of any truth region is an exact sum of analytic object areas.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from acquisition.demo import _slide_geometry as geo
from acquisition.demo import _slide_render as rnd

FloatArray = NDArray[np.float64]
Group = Literal["intact", "vehicle", "treated"]
Level = Literal["C5", "Th7", "L2", "lesion"]
Orientation = Literal["coronal", "horizontal"]
Side = Literal["left", "right"]

# ====================================================================== tables

SLIDE_SIZE_UM: tuple[float, float] = (75_000.0, 25_000.0)
"""Slide extent (x, y) in µm."""

TISSUE_ZONE_UM: tuple[float, float, float, float] = (20_000.0, 2_000.0, 72_000.0, 23_000.0)
"""Where tissue may lie: (xmin, ymin, xmax, ymax) in µm (left of it is the label)."""

CHANNELS: tuple[str, ...] = ("DAPI", "tdTomato")
"""Channels the slide can be imaged in."""

GROUPS: tuple[str, ...] = ("intact", "vehicle", "treated")
CORONAL_LEVELS: tuple[str, ...] = ("C5", "Th7", "L2")
INJURED_GROUPS: tuple[str, ...] = ("vehicle", "treated")

RC_BIN_UM = 500.0
"""Width of the rostro-caudal bins of horizontal sections (µm), measured from
the lesion epicenter."""

CORONAL_SIZE_UM: Mapping[str, tuple[float, float]] = {
    "C5": (3600.0, 2500.0),
    "Th7": (2600.0, 2000.0),
    "L2": (3000.0, 2300.0),
}
"""Adult rat cord outline (width, height) in µm per coronal level."""

# fmt: off
GRAY_MATTER_SHAPE: Mapping[str, tuple[tuple[float, float], ...]] = {
    # right half, dorsal commissure → dorsal horn → intermediate zone →
    # ventral horn → ventral commissure, in units of (half-width, half-height)
    "C5": (  # big ventral horns (forelimb motor pools)
        (0.0, -0.10), (0.083, -0.16), (0.156, -0.44), (0.233, -0.72), (0.311, -0.86),
        (0.40, -0.85), (0.422, -0.72), (0.389, -0.48), (0.422, -0.24), (0.544, -0.04),
        (0.694, 0.20), (0.722, 0.44), (0.583, 0.62), (0.389, 0.58), (0.194, 0.42),
        (0.067, 0.30), (0.0, 0.28),
    ),
    "Th7": (  # thin horns, small lateral horn (intermediolateral column)
        (0.0, -0.08), (0.08, -0.14), (0.14, -0.45), (0.20, -0.72), (0.27, -0.86),
        (0.35, -0.85), (0.35, -0.72), (0.28, -0.45), (0.27, -0.20), (0.38, -0.10),
        (0.40, -0.02), (0.28, 0.06), (0.33, 0.30), (0.40, 0.52), (0.34, 0.62),
        (0.22, 0.55), (0.12, 0.36), (0.04, 0.28), (0.0, 0.27),
    ),
    "L2": (
        (0.0, -0.10), (0.09, -0.16), (0.17, -0.44), (0.26, -0.70), (0.34, -0.84),
        (0.45, -0.83), (0.48, -0.66), (0.42, -0.42), (0.40, -0.20), (0.50, -0.02),
        (0.60, 0.22), (0.60, 0.44), (0.48, 0.58), (0.32, 0.52), (0.16, 0.38),
        (0.05, 0.30), (0.0, 0.29),
    ),
}
# fmt: on
"""Gray-matter butterfly control points per coronal level (see
``_slide_geometry.coronal_gray_matter_um``)."""

CENTRAL_CANAL_DIAMETER_UM: Mapping[str, float] = {"C5": 90.0, "Th7": 70.0, "L2": 80.0}
"""Central canal diameter (µm); it holds no tissue."""

RUBROSPINAL_TERRITORY: Mapping[str, tuple[float, float, float]] = {
    "C5": (-8.0, 34.0, 430.0),
    "Th7": (-8.0, 34.0, 300.0),
    "L2": (-8.0, 34.0, 330.0),
}
"""Rubrospinal territory per level: polar angle range (degrees, 0 = lateral,
positive = dorsal) and maximal depth below the pia (µm): the lateral-most part
of the dorsolateral funiculus, ventrolateral of the dorsal horn, on the side
contralateral to the injection."""

HORIZONTAL_SIZE_UM: tuple[float, float] = (9600.0, 2000.0)
"""Horizontal section length (rostro-caudal) and width (µm)."""

HORIZONTAL_GRAY_HALF_WIDTH_UM = 430.0
"""Half-width of the central gray-matter band of horizontal sections (µm)."""

LESION_CAVITY_UM: Mapping[str, tuple[float, float] | None] = {
    "intact": None,
    "vehicle": (1200.0, 900.0),
    "treated": (1000.0, 760.0),
}
"""Lesion cavity (rostro-caudal × lateral full axes, µm) of horizontal
sections by group; intact animals have none. Tissue narrows by
``LESION_ATROPHY`` around an injured epicenter."""

LESION_ATROPHY: Mapping[str, float] = {"intact": 0.0, "vehicle": 0.08, "treated": 0.05}

AXON_DENSITY: Mapping[str, Mapping[str, float]] = {
    "intact": {"C5": 0.080, "Th7": 0.060, "L2": 0.050},
    "vehicle": {"C5": 0.075, "Th7": 0.055, "L2": 0.006},
    "treated": {"C5": 0.078, "Th7": 0.058, "L2": 0.020},
}
"""Fraction of the rubrospinal territory covered by labelled axon puncta, by
group × coronal level. C5 and Th7 lie rostral of the T9-10 contusion, so the
groups differ there only by animal variation; at L2 the vehicle group keeps
~12 % of the intact labelling (spared fibres) and the treated group ~40 %
(sparing plus sprouting)."""

WHITE_MATTER_AXON_DENSITY: Mapping[str, Mapping[str, float]] = {
    "intact": {"C5": 0.0060, "Th7": 0.0050, "L2": 0.0040},
    "vehicle": {"C5": 0.0056, "Th7": 0.0046, "L2": 0.0005},
    "treated": {"C5": 0.0058, "Th7": 0.0048, "L2": 0.0016},
}
"""Fraction of the *rest* of the contralateral white matter covered by
(scattered) labelled puncta."""

GRAY_MATTER_AXON_DENSITY: Mapping[str, Mapping[str, float]] = {
    "intact": {"C5": 0.0040, "Th7": 0.0030, "L2": 0.0030},
    "vehicle": {"C5": 0.0037, "Th7": 0.0028, "L2": 0.0003},
    "treated": {"C5": 0.0039, "Th7": 0.0029, "L2": 0.0015},
}
"""Fraction of the contralateral gray matter covered by sparse beaded fibres
(collaterals: short chains of overlapping discs)."""

# fmt: off
HORIZONTAL_AXON_PROFILE: Mapping[str, Mapping[str, float]] = {
    "intact": {"rostral": 0.030, "at_epicenter": 1.00, "dieback_um": 1500.0,
               "caudal": 1.00, "caudal_decay_um": 600.0},
    "vehicle": {"rostral": 0.030, "at_epicenter": 0.35, "dieback_um": 1500.0,
                "caudal": 0.10, "caudal_decay_um": 600.0},
    "treated": {"rostral": 0.030, "at_epicenter": 0.50, "dieback_um": 1500.0,
                "caudal": 0.35, "caudal_decay_um": 900.0},
}
# fmt: on
"""Rostro-caudal profile of labelled-axon density in the contralateral white
matter of horizontal sections; see :func:`horizontal_axon_density`."""

ANIMAL_VARIATION: Mapping[str, float] = {
    "density_sd": 0.12,
    "sparing_sd": 0.30,
    "cavity_sd": 0.08,
}
"""Log-normal SDs of per-animal factors: overall labelling efficiency (all
densities), sparing below the lesion (L2 densities and the caudal profile of
injured animals) and lesion cavity size."""

FLUORESCENCE: Mapping[str, Mapping[str, float]] = {
    "DAPI": {"white_matter": 0.90, "gray_matter": 1.20, "object_peak": 22.0},
    "tdTomato": {"white_matter": 0.30, "gray_matter": 0.38, "object_peak": 14.0},
}
"""In-focus photon rates (photons / ms / pixel): tissue autofluorescence per
tissue class (times a smooth texture of mean 1) and the median peak of a
nucleus (DAPI) or axon punctum (tdTomato). Glass is 0."""

NUCLEI: Mapping[str, float] = {
    "cell_um": 11.0,
    "occupancy_gray": 0.45,
    "occupancy_white": 0.26,
    "occupancy_lesion_rim": 0.85,
    "occupancy_ependyma": 0.95,
    "lesion_rim_um": 180.0,
    "ependyma_um": 22.0,
}
"""DAPI nuclei: one candidate per ``cell_um`` lattice cell, kept with the
occupancy of the tissue at its centre (denser in gray than in white matter,
densest in the ependyma round the canal and the scar round a cavity)."""

DEMO_LAYOUT: tuple[tuple[str, str, str, str, str, str, tuple[float, float]], ...] = (
    # section_id, animal, group, level, orientation, injection side, centre (µm)
    ("rat01-C5", "rat01", "intact", "C5", "coronal", "left", (23_500.0, 4_800.0)),
    ("rat01-Th7", "rat01", "intact", "Th7", "coronal", "left", (28_900.0, 4_800.0)),
    ("rat01-L2", "rat01", "intact", "L2", "coronal", "left", (33_900.0, 4_800.0)),
    ("rat03-C5", "rat03", "vehicle", "C5", "coronal", "left", (40_300.0, 4_800.0)),
    ("rat03-Th7", "rat03", "vehicle", "Th7", "coronal", "left", (45_700.0, 4_800.0)),
    ("rat03-L2", "rat03", "vehicle", "L2", "coronal", "left", (50_700.0, 4_800.0)),
    ("rat05-C5", "rat05", "treated", "C5", "coronal", "left", (57_100.0, 4_800.0)),
    ("rat05-Th7", "rat05", "treated", "Th7", "coronal", "left", (62_500.0, 4_800.0)),
    ("rat05-L2", "rat05", "treated", "L2", "coronal", "left", (67_500.0, 4_800.0)),
    ("rat02-C5", "rat02", "intact", "C5", "coronal", "right", (23_500.0, 10_000.0)),
    ("rat02-Th7", "rat02", "intact", "Th7", "coronal", "right", (28_900.0, 10_000.0)),
    ("rat02-L2", "rat02", "intact", "L2", "coronal", "right", (33_900.0, 10_000.0)),
    ("rat04-C5", "rat04", "vehicle", "C5", "coronal", "right", (40_300.0, 10_000.0)),
    ("rat04-Th7", "rat04", "vehicle", "Th7", "coronal", "right", (45_700.0, 10_000.0)),
    ("rat04-L2", "rat04", "vehicle", "L2", "coronal", "right", (50_700.0, 10_000.0)),
    ("rat06-C5", "rat06", "treated", "C5", "coronal", "right", (57_100.0, 10_000.0)),
    ("rat06-Th7", "rat06", "treated", "Th7", "coronal", "right", (62_500.0, 10_000.0)),
    ("rat06-L2", "rat06", "treated", "L2", "coronal", "right", (67_500.0, 10_000.0)),
    ("rat01-lesion", "rat01", "intact", "lesion", "horizontal", "left", (27_500.0, 15_000.0)),
    ("rat03-lesion", "rat03", "vehicle", "lesion", "horizontal", "left", (41_500.0, 15_000.0)),
    ("rat05-lesion", "rat05", "treated", "lesion", "horizontal", "left", (55_500.0, 15_000.0)),
    ("rat02-lesion", "rat02", "intact", "lesion", "horizontal", "right", (27_500.0, 20_300.0)),
    ("rat04-lesion", "rat04", "vehicle", "lesion", "horizontal", "right", (41_500.0, 20_300.0)),
    ("rat06-lesion", "rat06", "treated", "lesion", "horizontal", "right", (55_500.0, 20_300.0)),
)
"""The demo slide: two animals per group (rat01/02 intact, rat03/04 vehicle,
rat05/06 treated; odd animals injected left, even right), coronal C5/Th7/L2
in two rows, horizontal sections through T9-10 in two rows (intact animals'
have no cavity). Rotations are drawn within ±8° from the slide seed."""

MAX_DEMO_ROTATION_DEG = 8.0

BEAD_AREA_UM: tuple[float, float, float, float] = (72_600.0, 9_000.0, 74_600.0, 16_000.0)
"""Stage rectangle (xmin, ymin, xmax, ymax), µm, of the bead area: right of the
tissue zone, on the slide, holding no tissue."""

BEAD_DIAMETER_UM = 0.17
"""Diameter (µm) of the sub-resolution fluorescent beads."""

BEAD_PITCH_UM = 25.0
"""Beads sit on a jittered lattice of this pitch (µm); 8 % of sites hold a close pair."""

BEAD_PEAK = 1600.0
"""Nominal in-focus brightness of a bead (photons / ms / pixel, as ``object_peak``):
its total signal is ``BEAD_PEAK · area / p²`` photons / ms, about 50 photons/ms/pixel
at its peak at 10x."""

FOCUS_BUMP_SECTIONS = 8
"""Sections that carry a local focus bump when bumps are switched on."""

# tracer object parameters (µm)
_GAP_UM = 0.1  # clearance between objects and from region boundaries
_PUNCTUM_RADIUS_UM = (1.2, 2.5)
_RST_CELL_UM = 8.0
_WM_CELL_UM = 16.0
_GM_CELL_UM = 60.0
_HZ_CELL_UM = (250.0, 9.0)  # along u (aligned to the epicenter), across


# ================================================================== dataclasses


@dataclass(frozen=True)
class SectionSpec:
    """What to put on the slide for one section.

    Parameters
    ----------
    section_id : str
        Unique name, e.g. ``"rat03-L2"``.
    animal : str
        Animal name; sections of one animal share its random factors.
    group : {"intact", "vehicle", "treated"}
    level : {"C5", "Th7", "L2", "lesion"}
        Coronal sections are C5, Th7 or L2; horizontal sections are "lesion"
        (the T9-10 segment; intact animals have no cavity).
    orientation : {"coronal", "horizontal"}
    injection_side : {"left", "right"}
        Side of the red-nucleus injection; labelled axons descend on the
        other (contralateral) side.
    centre_um : (float, float)
        Stage position of the section centre (µm).
    rotation_deg : float
        Rotation about the centre (degrees, +x toward +y).
    """

    section_id: str
    animal: str
    group: Group
    level: Level
    orientation: Orientation
    injection_side: Side
    centre_um: tuple[float, float]
    rotation_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"section {self.section_id!r}: group {self.group!r} not in {GROUPS}")
        if self.orientation == "coronal":
            if self.level not in CORONAL_LEVELS:
                raise ValueError(
                    f"section {self.section_id!r}: coronal level must be one of "
                    f"{CORONAL_LEVELS}, got {self.level!r}"
                )
        elif self.orientation == "horizontal":
            if self.level != "lesion":
                raise ValueError(
                    f"section {self.section_id!r}: horizontal sections span the lesion "
                    f"(level 'lesion'), got {self.level!r}"
                )
        else:
            raise ValueError(
                f"section {self.section_id!r}: orientation must be 'coronal' or "
                f"'horizontal', got {self.orientation!r}"
            )
        if self.injection_side not in ("left", "right"):
            raise ValueError(
                f"section {self.section_id!r}: injection_side must be 'left' or 'right', "
                f"got {self.injection_side!r}"
            )
        if not all(math.isfinite(float(c)) for c in (*self.centre_um, self.rotation_deg)):
            raise ValueError(f"section {self.section_id!r}: centre and rotation must be finite")

    @property
    def tracer_side(self) -> Side:
        """Side of the cord that carries the labelled rubrospinal axons."""
        return "right" if self.injection_side == "left" else "left"


@dataclass(frozen=True, eq=False)
class SectionTruth:
    """Ground-truth geometry of one section, in stage µm.

    Attributes
    ----------
    spec : SectionSpec
    outline : (N, 2) float array
        Outer tissue outline.
    gray_matter : tuple of (N, 2) float arrays
        Gray-matter polygons (the central canal / cavity is cut out of them
        when computing areas).
    central_canal : (N, 2) float array or None
        Coronal sections: canal polygon (no tissue).
    lesion_cavity : (N, 2) float array or None
        Horizontal sections of injured animals: cavity polygon (no tissue).
    rubrospinal_territory : (N, 2) float array or None
        Coronal sections: the rubrospinal territory (contralateral side).
    epicenter_um : (float, float) or None
        Horizontal sections: lesion epicenter (T9-10 reference point).
    rostral_direction : (float, float) or None
        Horizontal sections: unit vector pointing rostrally.
    right_direction : (float, float)
        Unit vector toward the animal's right.
    midline_point_um : (float, float)
        A point on the left/right split line (the canal centre for coronal
        sections); the line is perpendicular to ``right_direction``.
    ventral_direction : (float, float) or None
        Coronal sections: unit vector toward ventral; the dorsal/ventral split
        line goes through ``midline_point_um`` perpendicular to it.
    bbox_um : (xmin, ymin, xmax, ymax)
        Bounding box of the outline.
    region_names : tuple of str
        Names of the truth regions of this section.
    """

    spec: SectionSpec
    outline: FloatArray
    gray_matter: tuple[FloatArray, ...]
    central_canal: FloatArray | None
    lesion_cavity: FloatArray | None
    rubrospinal_territory: FloatArray | None
    epicenter_um: tuple[float, float] | None
    rostral_direction: tuple[float, float] | None
    right_direction: tuple[float, float]
    midline_point_um: tuple[float, float]
    ventral_direction: tuple[float, float] | None
    bbox_um: tuple[float, float, float, float]
    region_names: tuple[str, ...]

    @property
    def section_id(self) -> str:
        """The section's id."""
        return self.spec.section_id


@dataclass(frozen=True)
class RegionTruth:
    """True numbers for one region of one section.

    Attributes
    ----------
    section_id, region : str
    area_um2 : float
        Tissue area of the region (polygon geometry, holes removed).
    axon_area_um2 : float
        Exact area covered by labelled axon objects in the region.
    pct_axonal_area : float
        ``100 · axon_area_um2 / area_um2``.
    n_axon_objects : int
        Labelled objects (puncta and beaded fibres) in the region.
    mean_tracer_photons : float
        Mean expected in-focus tdTomato rate over the region (photons / ms /
        pixel): objects exactly, autofluorescence at its nominal level.
    """

    section_id: str
    region: str
    area_um2: float
    axon_area_um2: float
    pct_axonal_area: float
    n_axon_objects: int
    mean_tracer_photons: float


@dataclass(frozen=True, eq=False)
class AxonObjects:
    """Labelled axon objects of one section (ground truth, stage µm).

    An object is a punctum (one disc) or a beaded fibre (a straight chain of
    equal discs, neighbours overlapping). Objects never overlap each other
    and each lies wholly inside the regions named by its labels.

    Attributes
    ----------
    disc_xy_um : (M, 2) float array
        Disc centres.
    disc_radius_um : (M,) float array
    disc_object : (M,) int array
        Index of the object each disc belongs to (discs of an object are
        consecutive, in chain order).
    area_um2 : (N,) float array
        Exact area of each object.
    n_discs : (N,) int array
    tissue : (N,) str array
        "rubrospinal_territory", "white_matter" (outside the territory) or
        "gray_matter".
    side : (N,) str array
        "left" or "right".
    zone : (N,) str array
        "dorsal"/"ventral" (coronal) or the rostro-caudal bin name
        (horizontal).
    """

    disc_xy_um: FloatArray
    disc_radius_um: FloatArray
    disc_object: NDArray[np.int64]
    area_um2: FloatArray
    n_discs: NDArray[np.int64]
    tissue: NDArray[np.str_]
    side: NDArray[np.str_]
    zone: NDArray[np.str_]

    @property
    def xy_um(self) -> FloatArray:
        """Centroid of each object (N, 2): the mean of its discs (equal, evenly spaced)."""
        count = np.bincount(self.disc_object, minlength=len(self.area_um2))
        return np.column_stack(
            [
                np.bincount(self.disc_object, weights=self.disc_xy_um[:, k], minlength=len(count)) / count
                for k in (0, 1)
            ]
        )

    @property
    def equivalent_diameter_um(self) -> FloatArray:
        """Diameter of the disc of each object's area (µm)."""
        return np.asarray(2.0 * np.sqrt(self.area_um2 / np.pi), dtype=np.float64)


@dataclass(frozen=True)
class FocusBump:
    """A local deviation of the focal surface (a bubble or a fold), ground truth.

    ``z += amplitude_um · exp(−½ (a²/σ_major² + b²/σ_minor²))``, ``(a, b)``
    the offset from ``(x_um, y_um)`` rotated by ``−angle_deg``. A focus map of
    a few points per section does not capture it.
    """

    section_id: str
    kind: str  # "bubble" (round) or "fold" (elongated)
    x_um: float
    y_um: float
    amplitude_um: float
    sigma_major_um: float
    sigma_minor_um: float
    angle_deg: float

    def as_tuple(self) -> tuple[float, float, float, float, float, float]:
        """(x, y, amplitude, sigma_major, sigma_minor, angle_rad)."""
        return (
            self.x_um,
            self.y_um,
            self.amplitude_um,
            self.sigma_major_um,
            self.sigma_minor_um,
            math.radians(self.angle_deg),
        )


@dataclass(frozen=True, eq=False)
class Beads:
    """Sub-resolution fluorescent beads of a slide's bead area (tracer channel only).

    Attributes
    ----------
    xy_um : (N, 2) float array
        Bead centres (stage µm).
    diameter_um : float
    area_um : (xmin, ymin, xmax, ymax)
        The bead area's stage rectangle.
    isolated : (N,) bool array
        No other bead within 5 µm.
    """

    xy_um: FloatArray
    diameter_um: float
    area_um: tuple[float, float, float, float]
    isolated: NDArray[np.bool_]


def horizontal_axon_density(
    distance_um: FloatArray | float, group: str, *, sparing: float = 1.0
) -> FloatArray:
    """Labelled-axon area fraction along a horizontal section.

    The fraction of the contralateral white matter covered by labelled
    axons, as a function of signed distance from the epicenter.

    ``f(s) = rostral · (e + (1 − e)(1 − exp(s / dieback)))`` rostrally
    (``s < 0``): fibres die back toward the lesion, down to ``e =
    at_epicenter``; caudally (``s ≥ 0``) ``f(s) = rostral · (c + (e − c)
    exp(−s / caudal_decay))``, falling to the spared fraction ``c = caudal ·
    sparing`` (capped at 1). Intact animals have ``e = c = 1``: a flat profile.

    Parameters
    ----------
    distance_um : float or array
        Signed rostro-caudal distance from the epicenter (µm, negative =
        rostral).
    group : str
        Key of :data:`HORIZONTAL_AXON_PROFILE`.
    sparing : float
        Per-animal factor on the caudal (spared) fraction.

    Returns
    -------
    float array, same shape as ``distance_um``
    """
    prof = HORIZONTAL_AXON_PROFILE[group]
    s = np.asarray(distance_um, dtype=np.float64)
    e = prof["at_epicenter"]
    c = min(1.0, prof["caudal"] * sparing) if group in INJURED_GROUPS else prof["caudal"]
    rostral = e + (1.0 - e) * (1.0 - np.exp(np.minimum(s, 0.0) / prof["dieback_um"]))
    caudal = c + (e - c) * np.exp(-np.maximum(s, 0.0) / prof["caudal_decay_um"])
    return prof["rostral"] * np.where(s < 0.0, rostral, caudal)


# ================================================================== internals


@dataclass(frozen=True)
class _AnimalFactors:
    density: float
    sparing: float
    cavity: float


def _animal_factors(seed: int, animal: str) -> _AnimalFactors:
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(animal.encode()), 7]))
    z = rng.standard_normal(3)
    return _AnimalFactors(
        density=float(np.exp(ANIMAL_VARIATION["density_sd"] * z[0])),
        sparing=float(np.exp(ANIMAL_VARIATION["sparing_sd"] * z[1])),
        cavity=float(np.exp(ANIMAL_VARIATION["cavity_sd"] * z[2])),
    )


# tissue classes of labelled objects
_WHITE, _RST, _GRAY = 0, 1, 2


@dataclass
class _Local:
    """Section geometry in local coordinates (see ``_slide_geometry``)."""

    orientation: str
    outline: FloatArray
    gray: FloatArray
    hole: FloatArray | None
    rst: FloatArray | None
    split_v_um: float  # coronal: dorsal/ventral split line v = split_v
    epicenter_u_um: float  # horizontal: epicenter at u = epicenter_u
    cavity: tuple[float, float, float] | None  # (semi u, semi v, v offset)
    right_sign: float  # coronal: right is +u; horizontal: right is −v
    bins: tuple[tuple[float, float], ...]  # horizontal: (s0, s1) of each rc bin

    def side_coord(self, pts: FloatArray) -> FloatArray:
        """Signed distance toward the animal's right from the midline."""
        if self.orientation == "coronal":
            return self.right_sign * pts[:, 0]
        return self.right_sign * pts[:, 1]


class _Classifier:
    """Assigns discs to one cell of the truth partition, or rejects them."""

    def __init__(self, local: _Local):
        cap = 8.0
        self.local = local
        self.outline = geo.PolygonIndex(local.outline, cap_um=cap)
        self.gray = geo.PolygonIndex(local.gray, cap_um=cap)
        self.hole = None if local.hole is None else geo.PolygonIndex(local.hole, cap_um=cap)
        self.rst = None if local.rst is None else geo.PolygonIndex(local.rst, cap_um=cap)

    def classify(
        self, pts: FloatArray, radius: FloatArray
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """(ok, tissue class, side (0 left / 1 right), zone) per disc.

        ``ok`` means the disc (plus clearance) lies inside the tissue and
        inside a single cell of the partition.
        """
        need = radius + _GAP_UM
        loc = self.local
        ok = self.outline.contains(pts) & (self.outline.distance_um(pts) >= need)
        if self.hole is not None:
            ok &= ~self.hole.contains(pts) & (self.hole.distance_um(pts) >= need)
        in_gray = self.gray.contains(pts)
        ok &= self.gray.distance_um(pts) >= need
        tclass = np.where(in_gray, _GRAY, _WHITE)
        if self.rst is not None:
            in_rst = self.rst.contains(pts)
            ok &= self.rst.distance_um(pts) >= need
            tclass = np.where(in_rst & ~in_gray, _RST, tclass)
        side_c = loc.side_coord(pts)
        ok &= np.abs(side_c) >= need
        side = (side_c > 0).astype(np.int64)
        if loc.orientation == "coronal":
            dv = pts[:, 1] - loc.split_v_um
            ok &= np.abs(dv) >= need
            zone = (dv > 0).astype(np.int64)
        else:
            s = pts[:, 0] - loc.epicenter_u_um
            k = np.floor(s / RC_BIN_UM)
            edge = np.minimum(s - k * RC_BIN_UM, (k + 1) * RC_BIN_UM - s)
            ok &= edge >= need
            zone = k.astype(np.int64)
        return ok, tclass.astype(np.int64), side, zone


@dataclass
class _Labelled:
    """Labelled objects of one section with their truth labels.

    Chains of equal discs (a punctum is a chain of one); disc centres in
    stage µm.
    """

    n: NDArray[np.int64]
    radius_um: FloatArray
    spacing_um: FloatArray
    area_um2: FloatArray
    tclass: NDArray[np.int64]
    side: NDArray[np.int64]
    zone: NDArray[np.int64]
    disc_xy_um: FloatArray
    disc_radius_um: FloatArray
    disc_amp: FloatArray
    disc_owner: NDArray[np.int64]

    @classmethod
    def empty(cls) -> _Labelled:
        zi = np.zeros(0, dtype=np.int64)
        zf = np.zeros(0)
        return cls(zi, zf, zf, zf, zi, zi, zi, np.zeros((0, 2)), zf, zf, zi)


@dataclass
class _Section:
    truth: SectionTruth
    local: _Local
    labelled: _Labelled
    tracer: rnd.ObjectSet
    nuclei: rnd.ObjectSet
    coverage: rnd.CoverageMap
    region_areas: dict[str, tuple[float, float, float]]  # total, white, gray (µm²)

    def stage_to_local(self, pts: FloatArray) -> FloatArray:
        return geo.stage_to_local(pts, self.truth.spec.centre_um, self.truth.spec.rotation_deg)


def _section_rng(seed: int, section_id: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(section_id.encode())]))


# ------------------------------------------------------------- geometry


def _coronal_local(spec: SectionSpec, rng: np.random.Generator) -> _Local:
    width, height = CORONAL_SIZE_UM[spec.level]
    outline = geo.coronal_outline_um(width, height, rng)
    control = np.array(GRAY_MATTER_SHAPE[spec.level])
    gray = geo.coronal_gray_matter_um(control, width, height, rng)
    split_v = 0.5 * (control[0, 1] + control[-1, 1]) * height / 2.0
    canal_r = CENTRAL_CANAL_DIAMETER_UM[spec.level] / 2.0
    canal = geo.ellipse_polygon((0.0, split_v), (canal_r, canal_r), 48)
    right_sign = 1.0
    side_sign = 1.0 if spec.tracer_side == "right" else -1.0
    lo, hi, depth = RUBROSPINAL_TERRITORY[spec.level]
    gray_index = geo.PolygonIndex(gray, cap_um=80.0)
    rst = geo.rubrospinal_territory_um(outline, gray_index, side_sign, (lo, hi), depth)
    _check_inside(spec, "gray matter", gray, outline, 40.0)
    _check_inside(spec, "central canal", canal, gray, 40.0)
    _check_inside(spec, "rubrospinal territory", rst, outline, 5.0)
    return _Local("coronal", outline, gray, canal, rst, split_v, 0.0, None, right_sign, ())


def _horizontal_local(spec: SectionSpec, rng: np.random.Generator, animal: _AnimalFactors) -> _Local:
    length, width = HORIZONTAL_SIZE_UM
    epicenter_u = float(rng.uniform(-700.0, 100.0))
    axes = LESION_CAVITY_UM[spec.group]
    cavity = None
    if axes is not None:
        f = animal.cavity
        cavity = (axes[0] / 2.0 * f, axes[1] / 2.0 * f, float(rng.uniform(-60.0, 60.0)))
    outline = geo.horizontal_outline_um(length, width, epicenter_u, LESION_ATROPHY[spec.group], rng)
    gray = geo.horizontal_gray_band_um(length, HORIZONTAL_GRAY_HALF_WIDTH_UM, epicenter_u, cavity, rng)
    hole = None
    if cavity is not None:
        hole = geo.ellipse_polygon((epicenter_u, cavity[2]), (cavity[0], cavity[1]), 96)
        _check_inside(spec, "lesion cavity", hole, gray, 40.0)
    _check_inside(spec, "gray matter", gray, outline, 100.0)
    u_min = outline[:, 0].min() - epicenter_u
    u_max = outline[:, 0].max() - epicenter_u
    k0 = math.floor(u_min / RC_BIN_UM)
    k1 = math.ceil(u_max / RC_BIN_UM)
    bins = tuple((k * RC_BIN_UM, (k + 1) * RC_BIN_UM) for k in range(k0, k1))
    return _Local("horizontal", outline, gray, hole, None, 0.0, epicenter_u, cavity, -1.0, bins)


def _check_inside(spec: SectionSpec, what: str, inner: FloatArray, outer: FloatArray, gap_um: float) -> None:
    index = geo.PolygonIndex(outer, cap_um=gap_um)
    if not (index.contains(inner).all() and (index.distance_um(inner) >= gap_um * 0.999).all()):
        raise RuntimeError(
            f"section {spec.section_id!r}: generated {what} is not {gap_um} µm inside its "
            "container; try another seed"
        )


def _bin_name(s0: float, s1: float) -> str:
    return f"rc_{round(s0)}_{round(s1)}"


def _region_names(local: _Local) -> tuple[str, ...]:
    if local.orientation == "coronal":
        return (
            "section",
            "white_matter",
            "gray_matter",
            "rubrospinal_territory",
            "left",
            "right",
            "dorsal",
            "ventral",
        )
    return (
        "section",
        "white_matter",
        "gray_matter",
        "left",
        "right",
        *(_bin_name(s0, s1) for s0, s1 in local.bins),
    )


def _clip_for(local: _Local, region: str) -> Callable[[FloatArray], FloatArray] | None:
    """Convex clip function (half-plane or strip) of a half/bin region."""

    def half(normal: tuple[float, float], offset: float) -> Callable[[FloatArray], FloatArray]:
        return lambda p: geo.clip_halfplane(p, normal, offset)

    coronal = local.orientation == "coronal"
    if region in ("left", "right"):
        # right: side_coord > 0
        sign = 1.0 if region == "right" else -1.0
        s = sign * local.right_sign
        return half((s, 0.0), 0.0) if coronal else half((0.0, s), 0.0)
    if region == "dorsal":
        return half((0.0, -1.0), -local.split_v_um)
    if region == "ventral":
        return half((0.0, 1.0), local.split_v_um)
    if region.startswith("rc_"):
        s0, s1 = (float(t) for t in region[3:].rsplit("_", 1))
        u0 = local.epicenter_u_um + s0
        u1 = local.epicenter_u_um + s1
        return lambda p: geo.clip_halfplane(geo.clip_halfplane(p, (1.0, 0.0), u0), (-1.0, 0.0), -u1)
    return None


def _region_areas(local: _Local, names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """(tissue, white, gray) area of each region from polygon geometry."""
    gray_hole = geo.clip_convex(local.gray, local.hole) if local.hole is not None else None

    def classes(clip: Callable[[FloatArray], FloatArray] | None) -> tuple[float, float]:
        def area(poly: FloatArray | None) -> float:
            if poly is None or len(poly) == 0:
                return 0.0
            return geo.polygon_area_um2(poly if clip is None else clip(poly))

        tissue = area(local.outline) - area(local.hole)
        gray = area(local.gray) - area(gray_hole)
        return tissue - gray, gray

    out: dict[str, tuple[float, float, float]] = {}
    white_all, gray_all = classes(None)
    for name in names:
        if name == "section":
            w, g = white_all, gray_all
        elif name == "white_matter":
            w, g = white_all, 0.0
        elif name == "gray_matter":
            w, g = 0.0, gray_all
        elif name == "rubrospinal_territory":
            assert local.rst is not None
            w, g = geo.polygon_area_um2(local.rst), 0.0
        else:
            w, g = classes(_clip_for(local, name))
        out[name] = (w + g, w, g)
    return out


def _region_object_mask(local: _Local, lab: _Labelled, region: str) -> NDArray[np.bool_]:
    if region == "section":
        return np.ones(len(lab.n), dtype=bool)
    if region == "white_matter":
        return lab.tclass != _GRAY
    if region == "gray_matter":
        return lab.tclass == _GRAY
    if region == "rubrospinal_territory":
        return lab.tclass == _RST
    if region in ("left", "right"):
        return lab.side == (1 if region == "right" else 0)
    if region in ("dorsal", "ventral"):
        return lab.zone == (1 if region == "ventral" else 0)
    if region.startswith("rc_"):
        s0 = float(region[3:].rsplit("_", 1)[0])
        return lab.zone == round(s0 / RC_BIN_UM)
    raise KeyError(region)


# ------------------------------------------------------------ labelled objects


def _sample_puncta_radius(rng: np.random.Generator) -> Callable[[int], FloatArray]:
    lo, hi = _PUNCTUM_RADIUS_UM

    def sample(n: int) -> FloatArray:
        return lo + (hi - lo) * rng.beta(2.0, 3.0, n)

    return sample


def _clumping(rng: np.random.Generator, pts: FloatArray) -> FloatArray:
    """Smooth modulation of mean ~1 that makes labelling patchy."""
    p = rng.uniform(0.0, 2.0 * np.pi, 2)
    return 1.0 + 0.45 * np.sin(pts[:, 0] / 23.0 + p[0]) * np.sin(pts[:, 1] / 31.0 + p[1])


def _place_puncta(
    rng: np.random.Generator,
    clf: _Classifier,
    lo: tuple[float, float],
    hi: tuple[float, float],
    cell_um: float,
    fraction: float,
    want_class: int,
    want_side: int,
) -> geo.ObjectArrays:
    centre, radius = geo.jittered_discs(rng, lo, hi, cell_um, _sample_puncta_radius(rng), _GAP_UM)
    mean_area = float(np.mean(np.pi * radius**2)) if len(radius) else 1.0
    q = fraction * cell_um**2 / mean_area * _clumping(rng, centre)
    take = rng.uniform(0.0, 1.0, len(q)) < q
    centre, radius = centre[take], radius[take]
    ok, tclass, side, zone = clf.classify(centre, radius)
    keep = ok & (tclass == want_class) & (side == want_side)
    n = keep.sum()
    return {
        "centre": centre[keep],
        "angle": np.zeros(n),
        "radius": radius[keep],
        "spacing": 1.5 * radius[keep],
        "n": np.ones(n, dtype=np.int64),
        "tclass": tclass[keep],
        "side": side[keep],
        "zone": zone[keep],
    }


def _filter_chains(
    clf: _Classifier, chains: geo.ObjectArrays, want_class: int, want_side: int
) -> geo.ObjectArrays:
    if len(chains["n"]) == 0:
        return {
            **chains,
            "tclass": np.zeros(0, np.int64),
            "side": np.zeros(0, np.int64),
            "zone": np.zeros(0, np.int64),
        }
    pts, owner = geo.chain_discs(chains)
    ok, tclass, side, zone = clf.classify(pts, chains["radius"][owner])
    starts = np.concatenate([[0], np.cumsum(chains["n"])[:-1]])
    all_ok = np.minimum.reduceat(ok.astype(np.int64), starts) == 1
    for lab in (tclass, side, zone):
        all_ok &= np.minimum.reduceat(lab, starts) == np.maximum.reduceat(lab, starts)
    keep = all_ok & (tclass[starts] == want_class) & (side[starts] == want_side)
    out = {k: v[keep] for k, v in chains.items()}
    out.update(tclass=tclass[starts][keep], side=side[starts][keep], zone=zone[starts][keep])
    return out


def _random_chains(
    rng: np.random.Generator,
    lo: tuple[float, float],
    hi: tuple[float, float],
    cell_um: tuple[float, float],
    *,
    angle: Callable[[int], FloatArray],
    length_um: tuple[float, float],
    radius_um: tuple[float, float],
) -> geo.ObjectArrays:
    nx = max(1, int(np.ceil((hi[0] - lo[0]) / cell_um[0])))
    ny = max(1, int(np.ceil((hi[1] - lo[1]) / cell_um[1])))
    n = nx * ny
    return geo.jittered_chains(
        rng,
        lo,
        hi,
        cell_um,
        angle_rad=angle(n),
        length_um=rng.uniform(*length_um, n),
        radius_um=rng.uniform(*radius_um, n),
        spacing_ratio=rng.uniform(1.25, 1.5, n),
        gap_um=_GAP_UM,
    )


def _subsample(rng: np.random.Generator, chains: geo.ObjectArrays, q: FloatArray) -> geo.ObjectArrays:
    take = rng.uniform(0.0, 1.0, len(q)) < q
    return {k: v[take] for k, v in chains.items()}


def _coronal_labelled(
    spec: SectionSpec, local: _Local, clf: _Classifier, rng: np.random.Generator, animal: _AnimalFactors
) -> list[geo.ObjectArrays]:
    factor = animal.density
    if spec.group in INJURED_GROUPS and spec.level == "L2":
        factor *= animal.sparing
    want_side = 1 if spec.tracer_side == "right" else 0
    sign = 1.0 if want_side == 1 else -1.0
    parts = []
    assert local.rst is not None
    lo = tuple(local.rst.min(axis=0))
    hi = tuple(local.rst.max(axis=0))
    parts.append(
        _place_puncta(
            rng, clf, lo, hi, _RST_CELL_UM, AXON_DENSITY[spec.group][spec.level] * factor, _RST, want_side
        )
    )
    half = local.outline[sign * local.outline[:, 0] >= 0.0]
    parts.append(
        _place_puncta(
            rng,
            clf,
            tuple(half.min(axis=0)),
            tuple(half.max(axis=0)),
            _WM_CELL_UM,
            WHITE_MATTER_AXON_DENSITY[spec.group][spec.level] * factor,
            _WHITE,
            want_side,
        )
    )
    ghalf = local.gray[sign * local.gray[:, 0] >= 0.0]
    chains = _random_chains(
        rng,
        tuple(ghalf.min(axis=0)),
        tuple(ghalf.max(axis=0)),
        (_GM_CELL_UM, _GM_CELL_UM),
        angle=lambda n: rng.uniform(0.0, np.pi, n),
        length_um=(15.0, 50.0),
        radius_um=(0.8, 1.2),
    )
    area = geo.chain_area_um2(chains["n"], chains["radius"], chains["spacing"])
    frac = GRAY_MATTER_AXON_DENSITY[spec.group][spec.level] * factor
    chains = _subsample(
        rng, chains, frac * _GM_CELL_UM**2 / max(float(area.mean()), 1e-9) * np.ones(len(area))
    )
    parts.append(_filter_chains(clf, chains, _GRAY, want_side))
    return parts


def _horizontal_labelled(
    spec: SectionSpec, local: _Local, clf: _Classifier, rng: np.random.Generator, animal: _AnimalFactors
) -> list[geo.ObjectArrays]:
    want_side = 1 if spec.tracer_side == "right" else 0
    # right side is v < 0 in horizontal local coordinates
    v_sign = -1.0 if want_side == 1 else 1.0
    cu, cv = _HZ_CELL_UM
    u_lo = local.epicenter_u_um + math.floor((local.outline[:, 0].min() - local.epicenter_u_um) / cu) * cu
    u_hi = local.outline[:, 0].max()
    v_out = float(np.abs(local.outline[:, 1]).max())
    v_in = 0.85 * HORIZONTAL_GRAY_HALF_WIDTH_UM  # lanes inside the gray band are rejected
    if v_sign < 0:
        lo, hi = (u_lo, -v_out - cv), (u_hi, -v_in)
    else:
        lo, hi = (u_lo, v_in), (u_hi, v_out + cv)
    chains = _random_chains(
        rng,
        lo,
        hi,
        (cu, cv),
        angle=lambda n: np.deg2rad(rng.uniform(-1.0, 1.0, n)),
        length_um=(80.0, 235.0),
        radius_um=(0.9, 1.3),
    )
    area = geo.chain_area_um2(chains["n"], chains["radius"], chains["spacing"])
    s = chains["centre"][:, 0] - local.epicenter_u_um
    frac = horizontal_axon_density(s, spec.group, sparing=animal.sparing) * animal.density
    q = frac * cu * cv / max(float(area.mean()), 1e-9)
    chains = _subsample(rng, chains, q)
    return [_filter_chains(clf, chains, _WHITE, want_side)]


def _assemble_labelled(
    spec: SectionSpec, parts: list[geo.ObjectArrays], rng: np.random.Generator
) -> _Labelled:
    if not parts or sum(len(p["n"]) for p in parts) == 0:
        return _Labelled.empty()
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = cat["n"].astype(np.int64)
    pts_local, owner = geo.chain_discs(cat)
    xy = geo.local_to_stage(pts_local, spec.centre_um, spec.rotation_deg)
    peak = FLUORESCENCE["tdTomato"]["object_peak"]
    chain_amp = peak * rng.lognormal(0.0, 0.35, len(n))
    # beads: brightness varies along a fibre; overlaps of neighbours add up
    bead = np.where(n[owner] > 1, 0.75 * rng.uniform(0.55, 1.25, len(owner)), 1.0)
    return _Labelled(
        n=n,
        radius_um=cat["radius"],
        spacing_um=cat["spacing"],
        area_um2=geo.chain_area_um2(n, cat["radius"], cat["spacing"]),
        tclass=cat["tclass"].astype(np.int64),
        side=cat["side"].astype(np.int64),
        zone=cat["zone"].astype(np.int64),
        disc_xy_um=xy,
        disc_radius_um=cat["radius"][owner],
        disc_amp=chain_amp[owner] * bead,
        disc_owner=owner,
    )


# --------------------------------------------------------------- rasters


_RASTER_UM = 2.0


@dataclass
class _Raster:
    """2 µm class raster of a section and its 4 µm coverage.

    Classes: 0 glass, 1 white, 2 gray, 3 hole, in stage coordinates; plus
    the white/gray coverage of each 4 µm map cell.
    """

    cls: NDArray[np.int8]
    origin_um: tuple[float, float]  # centre of raster cell (0, 0)
    map_i0: int
    map_j0: int
    white: NDArray[np.float32]
    gray: NDArray[np.float32]


def _rasters(truth_outline: FloatArray, gray: FloatArray, hole: FloatArray | None) -> _Raster:
    g = rnd.MAP_SPACING_UM
    xmin, ymin = truth_outline.min(axis=0)
    xmax, ymax = truth_outline.max(axis=0)
    i0 = math.floor((xmin - 2 * g) / g)
    j0 = math.floor((ymin - 2 * g) / g)
    i1 = math.ceil((xmax + 2 * g) / g)
    j1 = math.ceil((ymax + 2 * g) / g)
    shape = (2 * (j1 - j0 + 1), 2 * (i1 - i0 + 1))
    origin = (g * i0 - 1.0, g * j0 - 1.0)  # centre of raster cell (0, 0)

    def raster(poly: FloatArray) -> NDArray[np.bool_]:
        return geo.rasterize_polygon((poly - origin) / _RASTER_UM, shape)

    cls = raster(truth_outline).view(np.int8)
    cls[raster(gray)] = 2
    if hole is not None:
        cls[raster(hole)] = 3

    def block_mean(a: NDArray[np.bool_]) -> NDArray[np.float32]:
        u = a.view(np.uint8)
        total = u[0::2, 0::2] + u[1::2, 0::2]
        total += u[0::2, 1::2]
        total += u[1::2, 1::2]
        return total.astype(np.float32) * np.float32(0.25)

    return _Raster(cls, origin, i0, j0, block_mean(cls == 1), block_mean(cls == 2))


def _texture(
    rng: np.random.Generator, x_um: NDArray[np.floating], y_um: NDArray[np.floating]
) -> NDArray[np.float32]:
    """Smooth multiplicative texture of mean ~1 on the grid ``y × x``."""
    tex = np.ones((len(y_um), len(x_um)), dtype=np.float32)
    for wl, amp in ((35.0, 0.06), (60.0, 0.07), (110.0, 0.08), (240.0, 0.08), (500.0, 0.06)):
        kx, ky = rng.normal(0.0, 1.0, 2)
        norm = math.hypot(kx, ky) or 1.0
        px, py = rng.uniform(0.0, 2.0 * np.pi, 2)
        k = 2.0 * np.pi / wl
        sx = np.sin(k * (kx / norm) * x_um + px).astype(np.float32)
        sy = np.sin(k * (ky / norm) * y_um + py).astype(np.float32)
        tex += np.float32(amp) * sy[:, None] * sx[None, :]
    return tex


def _textured_map(raster: _Raster, rng: np.random.Generator) -> rnd.CoverageMap:
    g = rnd.MAP_SPACING_UM
    hm, wm = raster.white.shape
    x = g * (raster.map_i0 + np.arange(wm))
    y = g * (raster.map_j0 + np.arange(hm))
    tex = _texture(rng, x, y) * np.float32(rnd.MAP_SCALE)

    def enc(a: NDArray[np.float32]) -> NDArray[np.uint8]:
        return np.clip(np.rint(a * tex), 0, 255).astype(np.uint8)

    return rnd.CoverageMap(raster.map_i0, raster.map_j0, enc(raster.white), enc(raster.gray))


def _nuclei(spec: SectionSpec, local: _Local, raster: _Raster, rng: np.random.Generator) -> rnd.ObjectSet:
    """Place DAPI nuclei on a jittered lattice, kept by tissue occupancy.

    Each lies wholly in tissue (checked on the 2 µm class raster with a
    margin).
    """
    cell = NUCLEI["cell_um"]
    cls = raster.cls
    h, w = cls.shape
    x0, y0 = raster.origin_um
    nx = int(w * _RASTER_UM / cell)
    ny = int(h * _RASTER_UM / cell)
    iy, ix = np.divmod(np.arange(nx * ny), nx)
    pts = np.column_stack(
        [x0 + (ix + rng.uniform(0, 1, len(ix))) * cell, y0 + (iy + rng.uniform(0, 1, len(iy))) * cell]
    )

    def lookup(p: FloatArray) -> NDArray[np.int8]:
        c = np.clip(np.rint((p[:, 0] - x0) / _RASTER_UM).astype(np.int64), 0, w - 1)
        r = np.clip(np.rint((p[:, 1] - y0) / _RASTER_UM).astype(np.int64), 0, h - 1)
        return cls[r, c]

    centre_cls = lookup(pts)
    tissue = (centre_cls == 1) | (centre_cls == 2)
    pts = pts[tissue]
    centre_cls = centre_cls[tissue]
    n = len(pts)
    gray = centre_cls == 2
    occupancy = np.where(gray, NUCLEI["occupancy_gray"], NUCLEI["occupancy_white"])
    loc = geo.stage_to_local(pts, spec.centre_um, spec.rotation_deg)
    horizontal = spec.orientation == "horizontal"
    if local.hole is not None:
        if horizontal:
            assert local.cavity is not None
            ca, cb, cv = local.cavity
            rho = np.hypot((loc[:, 0] - local.epicenter_u_um) / ca, (loc[:, 1] - cv) / cb)
            rim = (rho - 1.0) * min(ca, cb) < NUCLEI["lesion_rim_um"]
            occupancy = np.where(rim, NUCLEI["occupancy_lesion_rim"], occupancy)
        else:
            canal_r = CENTRAL_CANAL_DIAMETER_UM[spec.level] / 2.0
            dist = np.hypot(loc[:, 0], loc[:, 1] - local.split_v_um) - canal_r
            occupancy = np.where(dist < NUCLEI["ependyma_um"], NUCLEI["occupancy_ependyma"], occupancy)
    # size and shape: neurons/glia in gray, smaller oligodendrocytes in white
    r_gray = rng.uniform(3.0, 5.0, n)
    r_white = rng.uniform(2.8, 4.0, n)
    r_eq = np.where(gray, r_gray, r_white)
    elong = rng.uniform(1.0, 1.35, n)
    theta = rng.uniform(0.0, np.pi, n)
    if horizontal:
        along = ~gray
        elong = np.where(along, rng.uniform(1.3, 1.8, n), elong)
        theta = np.where(along, np.deg2rad(spec.rotation_deg + rng.uniform(-12.0, 12.0, n)), theta)
    semi_a = r_eq * np.sqrt(elong)
    semi_b = r_eq / np.sqrt(elong)
    keep = rng.uniform(0.0, 1.0, n) < occupancy
    pts, semi_a, semi_b, theta = pts[keep], semi_a[keep], semi_b[keep], theta[keep]
    # whole nucleus in tissue: sample a ring just outside it
    ring = np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False)
    reach = semi_a + 2.0
    inside = np.ones(len(pts), dtype=bool)
    for ang in ring:
        probe = pts + reach[:, None] * np.array([np.cos(ang), np.sin(ang)])
        c = lookup(probe)
        inside &= (c == 1) | (c == 2)
    pts, semi_a, semi_b, theta = pts[inside], semi_a[inside], semi_b[inside], theta[inside]
    c, s = np.cos(theta), np.sin(theta)
    a2, b2 = semi_a**2, semi_b**2
    amp = FLUORESCENCE["DAPI"]["object_peak"] * rng.lognormal(0.0, 0.25, len(pts))
    return rnd.ObjectSet.build(
        pts[:, 0],
        pts[:, 1],
        a2 * c * c + b2 * s * s,
        (a2 - b2) * s * c,
        a2 * s * s + b2 * c * c,
        amp,
        isotropic=False,
    )


# --------------------------------------------------------------- assembly


def _unit(angle_deg: float, local_vec: tuple[float, float]) -> tuple[float, float]:
    v = geo.rotation_matrix(angle_deg) @ np.asarray(local_vec, dtype=np.float64)
    return (float(v[0]), float(v[1]))


def _build_section(spec: SectionSpec, seed: int) -> _Section:
    rng = _section_rng(seed, spec.section_id)
    animal = _animal_factors(seed, spec.animal)
    if spec.orientation == "coronal":
        local = _coronal_local(spec, rng)
    else:
        local = _horizontal_local(spec, rng, animal)
    clf = _Classifier(local)
    if spec.orientation == "coronal":
        parts = _coronal_labelled(spec, local, clf, rng, animal)
    else:
        parts = _horizontal_labelled(spec, local, clf, rng, animal)
    labelled = _assemble_labelled(spec, parts, rng)

    def stage(p: FloatArray | None) -> FloatArray | None:
        return None if p is None else geo.local_to_stage(p, spec.centre_um, spec.rotation_deg)

    outline = stage(local.outline)
    gray = stage(local.gray)
    hole = stage(local.hole)
    assert outline is not None and gray is not None
    names = _region_names(local)
    coronal = spec.orientation == "coronal"
    rot = spec.rotation_deg
    midline = stage(np.array([[0.0, local.split_v_um]]) if coronal else np.array([[0.0, 0.0]]))
    assert midline is not None
    epicenter = None
    if not coronal:
        epi = stage(np.array([[local.epicenter_u_um, 0.0]]))
        assert epi is not None
        epicenter = (float(epi[0, 0]), float(epi[0, 1]))
    truth = SectionTruth(
        spec=spec,
        outline=outline,
        gray_matter=(gray,),
        central_canal=hole if coronal else None,
        lesion_cavity=None if coronal else hole,
        rubrospinal_territory=stage(local.rst),
        epicenter_um=epicenter,
        rostral_direction=None if coronal else _unit(rot, (-1.0, 0.0)),
        right_direction=_unit(rot, (1.0, 0.0)) if coronal else _unit(rot, (0.0, -1.0)),
        midline_point_um=(float(midline[0, 0]), float(midline[0, 1])),
        ventral_direction=_unit(rot, (0.0, 1.0)) if coronal else None,
        bbox_um=(
            float(outline[:, 0].min()),
            float(outline[:, 1].min()),
            float(outline[:, 0].max()),
            float(outline[:, 1].max()),
        ),
        region_names=names,
    )
    raster = _rasters(outline, gray, hole)
    coverage = _textured_map(raster, rng)
    nuclei = _nuclei(spec, local, raster, rng)
    lab = labelled
    r2 = lab.disc_radius_um**2
    tracer = rnd.ObjectSet.build(
        lab.disc_xy_um[:, 0],
        lab.disc_xy_um[:, 1],
        r2,
        np.zeros_like(r2),
        r2,
        lab.disc_amp,
        isotropic=True,
    )
    return _Section(truth, local, labelled, tracer, nuclei, coverage, _region_areas(local, names))


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _grow_box(b: tuple[float, float, float, float], m: float) -> tuple[float, float, float, float]:
    return (b[0] - m, b[1] - m, b[2] + m, b[3] + m)


def _make_beads(seed: int) -> tuple[Beads, rnd.ObjectSet]:
    """Beads on a jittered lattice over :data:`BEAD_AREA_UM` and their render set."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBEAD5]))
    x0, y0, x1, y1 = BEAD_AREA_UM
    pitch = BEAD_PITCH_UM
    gx, gy = np.meshgrid(np.arange(x0 + pitch / 2, x1, pitch), np.arange(y0 + pitch / 2, y1, pitch))
    sites = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.25 * pitch, 0.25 * pitch, (gx.size, 2))
    pair = rng.uniform(0.0, 1.0, len(sites)) < 0.08
    angle = rng.uniform(0.0, 2.0 * np.pi, int(pair.sum()))
    dist = rng.uniform(0.8, 2.5, int(pair.sum()))
    xy = np.concatenate([sites, sites[pair] + np.column_stack([dist * np.cos(angle), dist * np.sin(angle)])])
    nearest, _ = cKDTree(xy).query(xy, k=2)
    r2 = np.full(len(xy), (BEAD_DIAMETER_UM / 2.0) ** 2)
    objects = rnd.ObjectSet.build(
        xy[:, 0], xy[:, 1], r2, np.zeros_like(r2), r2, np.full(len(xy), BEAD_PEAK), isotropic=True
    )
    return Beads(xy, BEAD_DIAMETER_UM, BEAD_AREA_UM, nearest[:, 1] > 5.0), objects


def _make_focus_bumps(sections: Sequence[_Section], seed: int) -> tuple[FocusBump, ...]:
    """One bump on each of :data:`FOCUS_BUMP_SECTIONS` sections: bubbles and folds.

    A bump of ±3-8 µm with a full width at half maximum of 0.3-0.9 mm lies
    inside its section, halfway between the centre and the outline.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0B5]))
    chosen = rng.choice(len(sections), size=min(FOCUS_BUMP_SECTIONS, len(sections)), replace=False)
    bumps = []
    for i in sorted(chosen):
        truth = sections[i].truth
        centre = np.asarray(truth.spec.centre_um)
        outline = geo.PolygonIndex(truth.outline)
        for _ in range(200):
            point = centre + rng.uniform(0.35, 0.6) * (
                truth.outline[rng.integers(len(truth.outline))] - centre
            )
            if outline.contains(point[None, :])[0]:
                break
        fold = bool(rng.uniform() < 0.4)
        sigma = rng.uniform(300.0, 900.0) / 2.355
        bumps.append(
            FocusBump(
                section_id=truth.section_id,
                kind="fold" if fold else "bubble",
                x_um=float(point[0]),
                y_um=float(point[1]),
                amplitude_um=float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0)),
                sigma_major_um=float(sigma),
                sigma_minor_um=float(sigma * (0.3 if fold else 1.0)),
                angle_deg=float(rng.uniform(0.0, 180.0)),
            )
        )
    return tuple(bumps)


# ================================================================== the slide


class VirtualSlide:
    """A procedurally generated slide of rat spinal-cord sections.

    Build one with :func:`make_slide` or :func:`demo_slide`. It renders
    expected photon rates (:meth:`render`) and knows its ground truth
    (:attr:`sections`, :meth:`truth_table`, :meth:`render_truth_labels`).
    Immutable after construction, so safe to share between threads.
    """

    channels: tuple[str, ...] = CHANNELS

    def __init__(
        self,
        sections: Sequence[_Section],
        focal: rnd.FocalPlane,
        seed: int,
        *,
        bumps: Sequence[FocusBump] = (),
        bumps_on: bool = False,
    ):
        self._sections = tuple(sections)
        self._by_id = {s.truth.section_id: s for s in self._sections}
        self._bumps = tuple(bumps)
        self._bumps_on = bool(bumps_on)
        self._focal = replace(focal, bumps=tuple(b.as_tuple() for b in self._bumps) if bumps_on else ())
        self.seed = seed
        self._beads, self._bead_set = _make_beads(seed)

    @property
    def focus_bumps(self) -> tuple[FocusBump, ...]:
        """The slide's local focus bumps (their truth, whether or not they are switched on)."""
        return self._bumps

    @property
    def focus_bumps_on(self) -> bool:
        """Whether the focus bumps deform the focal surface."""
        return self._bumps_on

    def with_focus_bumps(self, on: bool) -> VirtualSlide:
        """Return this slide with its focus bumps switched on or off (sections shared)."""
        if bool(on) == self._bumps_on:
            return self
        return VirtualSlide(self._sections, self._focal, self.seed, bumps=self._bumps, bumps_on=bool(on))

    def beads(self) -> Beads:
        """The beads of the bead area (:data:`BEAD_AREA_UM`), positions known exactly."""
        return self._beads

    # ------------------------------------------------------------ geometry

    @property
    def sections(self) -> tuple[SectionTruth, ...]:
        """Ground-truth geometry of every section, in slide order."""
        return tuple(s.truth for s in self._sections)

    def section(self, section_id: str) -> SectionTruth:
        """Ground truth of one section (``KeyError`` naming it if unknown)."""
        return self._get(section_id).truth

    def _get(self, section_id: str) -> _Section:
        try:
            return self._by_id[section_id]
        except KeyError:
            raise KeyError(f"no section {section_id!r} on this slide; known: {sorted(self._by_id)}") from None

    def section_bbox_um(self, section_id: str) -> tuple[float, float, float, float]:
        """Bounding box (xmin, ymin, xmax, ymax) of a section's tissue, µm."""
        return self._get(section_id).truth.bbox_um

    def tissue_bbox_um(self) -> tuple[float, float, float, float]:
        """Bounding box (xmin, ymin, xmax, ymax) of all tissue on the slide, µm."""
        boxes = np.array([s.truth.bbox_um for s in self._sections])
        return (
            float(boxes[:, 0].min()),
            float(boxes[:, 1].min()),
            float(boxes[:, 2].max()),
            float(boxes[:, 3].max()),
        )

    def focal_plane_z_um(
        self, x_um: float | NDArray[np.floating], y_um: float | NDArray[np.floating]
    ) -> NDArray[np.float64]:
        """Z (µm) at which the tissue at stage ``(x, y)`` is in focus.

        A plane tilted by a fraction of a µm per mm (about 20-40 µm over the
        tissue zone) plus a gentle waviness (≈2 µm, 10-25 mm wavelength).
        Broadcasts like numpy; returns a float64 array (0-d for scalars).
        """
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        return np.asarray(self._focal.z_um(x, y), dtype=np.float64)

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
    ) -> NDArray[np.float32]:
        """Noiseless expected photon rate of one camera frame.

        Parameters
        ----------
        center_um : (float, float)
            True stage position of the image centre (µm).
        pixel_size_um : float
            Pixel size on the slide (µm); also sets the optics (NA ≈
            0.45·0.65/p): in-focus PSF sigma 0.45·p, defocus blur growing by
            about NA/2 µm per µm.
        shape : (int, int)
            Frame (H, W) in pixels.
        channel : {"DAPI", "tdTomato"}
        z_um : float
            Focus position (µm); defocus is ``z_um − focal_plane_z_um`` at
            each point.
        out : (H, W) float32 C-contiguous array, optional
            Written in place and returned.

        Returns
        -------
        (H, W) float32 array
            Expected photons per ms of exposure per pixel; 0 on bare glass.
            A pure function of stage position: frames whose centres differ by
            whole pixels agree exactly where they overlap.
        """
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; the slide has {CHANNELS}")
        p = float(pixel_size_um)
        if not (math.isfinite(p) and p > 0.0):
            raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
        h, w = (int(shape[0]), int(shape[1]))
        if h <= 0 or w <= 0:
            raise ValueError(f"shape must be two positive ints, got {shape!r}")
        if not all(math.isfinite(float(v)) for v in (*center_um, z_um)):
            raise ValueError(f"center_um and z_um must be finite, got {center_um!r}, {z_um!r}")
        if out is None:
            out = np.empty((h, w), dtype=np.float32)
        elif out.shape != (h, w) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous float32 array of shape {(h, w)}, got {out.dtype} {out.shape}"
            )
        grid = rnd.FrameGrid.from_center(center_um, p, (h, w))
        hits = self._sections_near(grid, float(z_um))
        fl = FLUORESCENCE[channel]
        objects = [s.nuclei if channel == "DAPI" else s.tracer for s in hits]
        if channel == "tdTomato" and _boxes_overlap(BEAD_AREA_UM, _grow_box(grid.bbox_um(), 200.0)):
            objects.append(self._bead_set)
        rnd.render_frame(
            out,
            grid,
            float(z_um),
            self._focal,
            [s.coverage for s in hits],
            (fl["white_matter"], fl["gray_matter"]),
            objects,
        )
        return out

    def _sections_near(self, grid: rnd.FrameGrid, z_um: float) -> list[_Section]:
        fb = grid.bbox_um()
        zlo, zhi = self._focal.range_over(fb)
        optics = rnd.Optics.for_pixel_size(grid.pixel_size_um)
        sigma = float(optics.sigma_um(np.array(max(abs(z_um - zlo), abs(z_um - zhi)))))
        p = grid.pixel_size_um
        # objects' blur and coarse lattices reach beyond a section's outline
        margin = 8.0 + 4.0 * sigma + 2.0 ** (rnd.MAX_LEVEL + 3) * p + 4.0 * rnd.MAP_SPACING_UM * 8
        box = (fb[0] - margin, fb[1] - margin, fb[2] + margin, fb[3] + margin)
        return [s for s in self._sections if _boxes_overlap(s.truth.bbox_um, box)]

    # ------------------------------------------------------------ truth

    def axon_objects(self, section_id: str) -> AxonObjects:
        """Return the labelled axon objects of one section (see :class:`AxonObjects`)."""
        sec = self._get(section_id)
        lab = sec.labelled
        tissue_names = np.array(["white_matter", "rubrospinal_territory", "gray_matter"])
        if sec.local.orientation == "coronal":
            zone = np.array(["dorsal", "ventral"])[lab.zone]
        else:
            zone = np.array([_bin_name(k * RC_BIN_UM, (k + 1) * RC_BIN_UM) for k in lab.zone], dtype=np.str_)
        return AxonObjects(
            disc_xy_um=lab.disc_xy_um.copy(),
            disc_radius_um=lab.disc_radius_um.copy(),
            disc_object=lab.disc_owner.copy(),
            area_um2=lab.area_um2.copy(),
            n_discs=lab.n.copy(),
            tissue=tissue_names[lab.tclass],
            side=np.array(["left", "right"])[lab.side],
            zone=zone.astype(np.str_),
        )

    def truth_table(self, section_id: str) -> list[RegionTruth]:
        """Return true area, labelled-axon area and tracer intensity per region.

        Areas come from polygon geometry (shoelace, holes removed, halves and
        rostro-caudal bins by exact convex clipping); axon areas are exact
        sums over the labelled objects (disc ``πr²``; chain of ``n`` discs
        spaced ``d``: ``πr² + (n − 1)(πr² − lens(d))``).

        Returns
        -------
        list of RegionTruth, in the order of ``section(section_id).region_names``
        """
        sec = self._get(section_id)
        lab = sec.labelled
        fl = FLUORESCENCE["tdTomato"]
        disc_signal = lab.disc_amp * np.pi * lab.disc_radius_um**2
        chain_signal = np.bincount(lab.disc_owner, weights=disc_signal, minlength=len(lab.n))
        rows = []
        for name in sec.truth.region_names:
            total, white, gray = sec.region_areas[name]
            sel = _region_object_mask(sec.local, lab, name)
            axon = float(lab.area_um2[sel].sum())
            signal = float(chain_signal[sel].sum())
            background = fl["white_matter"] * white + fl["gray_matter"] * gray
            rows.append(
                RegionTruth(
                    section_id=section_id,
                    region=name,
                    area_um2=total,
                    axon_area_um2=axon,
                    pct_axonal_area=100.0 * axon / total if total > 0 else 0.0,
                    n_axon_objects=int(sel.sum()),
                    mean_tracer_photons=(background + signal) / total if total > 0 else 0.0,
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

        A pixel belongs to a region when its centre does (same pixel geometry
        as :meth:`render`).

        Returns
        -------
        dict of (H, W) bool arrays
            One per name in ``section(section_id).region_names``, plus
            ``"central_canal"`` or ``"lesion_cavity"`` when the section has
            one, and ``"axons"`` (pixel centre inside a labelled object).
        """
        sec = self._get(section_id)
        p = float(pixel_size_um)
        h, w = int(shape[0]), int(shape[1])
        grid = rnd.FrameGrid.from_center(center_um, p, (h, w))
        truth = sec.truth

        def to_px(poly: FloatArray) -> FloatArray:
            return np.column_stack(
                [
                    poly[:, 0] / p - grid.phi_x - grid.n_x,
                    poly[:, 1] / p - grid.phi_y - grid.n_y,
                ]
            )

        def raster(poly: FloatArray) -> NDArray[np.bool_]:
            return geo.rasterize_polygon(to_px(poly), (h, w))

        outline = raster(truth.outline)
        gray_poly = np.zeros((h, w), dtype=bool)
        for g in truth.gray_matter:
            gray_poly |= raster(g)
        hole_poly = truth.central_canal if truth.central_canal is not None else truth.lesion_cavity
        hole = raster(hole_poly) if hole_poly is not None else np.zeros((h, w), dtype=bool)
        tissue = outline & ~hole
        masks: dict[str, NDArray[np.bool_]] = {}
        spec = truth.spec
        for name in truth.region_names:
            if name == "section":
                masks[name] = tissue
            elif name == "white_matter":
                masks[name] = tissue & ~gray_poly
            elif name == "gray_matter":
                masks[name] = tissue & gray_poly
            elif name == "rubrospinal_territory":
                assert truth.rubrospinal_territory is not None
                masks[name] = tissue & raster(truth.rubrospinal_territory)
            else:
                # halves and bins: the outline clipped to the half-plane/strip
                clip = _clip_for(sec.local, name)
                assert clip is not None
                part = geo.local_to_stage(clip(sec.local.outline), spec.centre_um, spec.rotation_deg)
                masks[name] = raster(part) & ~hole if len(part) else np.zeros((h, w), dtype=bool)
        if truth.central_canal is not None:
            masks["central_canal"] = hole
        if truth.lesion_cavity is not None:
            masks["lesion_cavity"] = hole
        axons = np.zeros((h, w), dtype=bool)
        lab = sec.labelled
        if len(lab.disc_radius_um):
            fb = grid.bbox_um()
            r = lab.disc_radius_um
            xy = lab.disc_xy_um
            near = (
                (xy[:, 0] + r >= fb[0])
                & (xy[:, 0] - r <= fb[2])
                & (xy[:, 1] + r >= fb[1])
                & (xy[:, 1] - r <= fb[3])
            )
            rnd.rasterize_discs(
                axons,
                xy[near, 0] / p - grid.phi_x - grid.n_x,
                xy[near, 1] / p - grid.phi_y - grid.n_y,
                r[near] / p,
            )
        masks["axons"] = axons
        return masks


# ================================================================== builders


def make_slide(specs: Sequence[SectionSpec], *, seed: int, focus_bumps: bool = False) -> VirtualSlide:
    """Generate a virtual slide holding the given sections.

    Parameters
    ----------
    specs : sequence of SectionSpec
        Sections to mount; ids must be unique, tissue must stay inside
        :data:`TISSUE_ZONE_UM` and sections must not overlap.
    seed : int
        Seed of all procedural content (shapes, objects, nuclei, focus).
    focus_bumps : bool
        Switch the slide's local focus bumps on (see
        :attr:`VirtualSlide.focus_bumps`); off by default.

    Returns
    -------
    VirtualSlide

    Raises
    ------
    ValueError
        Duplicate ids, tissue outside the tissue zone, or overlapping sections.
    """
    ids = [s.section_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate section ids: {dupes}")
    sections = [_build_section(spec, seed) for spec in specs]
    zx0, zy0, zx1, zy1 = TISSUE_ZONE_UM
    for s in sections:
        b = s.truth.bbox_um
        if b[0] < zx0 or b[1] < zy0 or b[2] > zx1 or b[3] > zy1:
            raise ValueError(
                f"section {s.truth.section_id!r} (bbox {tuple(round(v) for v in b)} µm) leaves "
                f"the tissue zone {TISSUE_ZONE_UM} µm; move its centre"
            )
    for i, first in enumerate(sections):
        for second in sections[i + 1 :]:
            if _boxes_overlap(first.truth.bbox_um, second.truth.bbox_um):
                raise ValueError(
                    f"sections {first.truth.section_id!r} and {second.truth.section_id!r} overlap; "
                    "move them apart"
                )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF0C05]))
    tilt_sign = rng.choice([-1.0, 1.0], 2)
    focal = rnd.FocalPlane(
        z_ref_um=0.0,
        ref_xy_um=(46_000.0, 12_500.0),
        tilt_um_per_mm=(
            float(tilt_sign[0] * rng.uniform(0.35, 0.5)),
            float(tilt_sign[1] * rng.uniform(0.3, 0.5)),
        ),
        wave_amplitude_um=(float(rng.uniform(1.0, 2.0)), float(rng.uniform(0.8, 1.5))),
        wave_length_um=(float(rng.uniform(15_000.0, 25_000.0)), float(rng.uniform(10_000.0, 18_000.0))),
        wave_phase=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))),
    )
    bumps = _make_focus_bumps(sections, seed)
    return VirtualSlide(sections, focal, seed, bumps=bumps, bumps_on=focus_bumps)


def demo_specs(seed: int = 2026) -> tuple[SectionSpec, ...]:
    """Return the demo slide's sections (:data:`DEMO_LAYOUT`, rotations from ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDE40]))
    rot = rng.uniform(-MAX_DEMO_ROTATION_DEG, MAX_DEMO_ROTATION_DEG, len(DEMO_LAYOUT))
    return tuple(
        SectionSpec(sid, animal, group, level, orient, side, centre, float(r))  # type: ignore[arg-type]
        for (sid, animal, group, level, orient, side, centre), r in zip(DEMO_LAYOUT, rot, strict=True)
    )


@functools.lru_cache(maxsize=4)
def demo_slide(seed: int = 2026) -> VirtualSlide:
    """Build the demo slide (see :data:`DEMO_LAYOUT`).

    Built once per seed and process (it takes ~1.6 s and ~75 MB); the slide
    is immutable, so every demo core shares it.

    18 coronal sections (C5, Th7, L2 of two animals per group: intact,
    vehicle, treated) and 6 horizontal sections spanning the T9-10 contusion
    (no cavity in intact animals).

    Parameters
    ----------
    seed : int
        Seed of all procedural content.

    Returns
    -------
    VirtualSlide
    """
    return make_slide(demo_specs(seed), seed=seed)
