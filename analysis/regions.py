"""Anatomical regions of a section from its anatomy (DAPI) mosaic.

Every function here takes a downsampled section mosaic of the anatomy
channel (``(H, W)`` float, NaN where nothing was imaged, pixel ``(r, c)``
centred at ``origin_um + ((c + 0.5) · P, (r + 0.5) · P)`` with ``P`` the
mosaic pixel size, as :class:`analysis.mosaic.SectionMosaic` lays it out)
and returns boolean masks on the same grid.

Region names follow the truth of the demo slide and the region table:

``"section"``
    Tissue: nonzero DAPI signal, holes (central canal, lesion cavity)
    excluded.
``"gray_matter"`` / ``"white_matter"``
    Two classes of tissue told apart by a linear discriminant of the
    smoothed DAPI signal, nucleus density and level between nuclei (gray
    matter packs nuclei densely; whether its neuropil is brighter or
    darker than white matter depends on stain and microscope), started from
    the combination of highest signal-to-noise ratio, the noise measured on
    the section; the class lining the pia is white matter
    (:func:`gray_matter_mask`).
``"left"`` / ``"right"``, ``"dorsal"`` / ``"ventral"`` (coronal)
    Halves of the tissue on either side of the midline (through the central
    canal along the dorso-ventral axis) and of the line through the canal
    perpendicular to it. The axes come from the principal axes of the
    section (coronal cords are wider than tall), dorsal toward −y, the
    animal's left toward −x (sections are mounted so; only the small
    rotation is estimated).
``"rubrospinal_territory"`` (coronal)
    Lateral-most dorsolateral funiculus contralateral to the injection (the
    rubrospinal tract crosses in the ventral tegmental decussation), see
    :func:`rubrospinal_territory_mask` for the rule.
``"left"`` / ``"right"``, ``"rc_<a>_<b>"`` (horizontal)
    Halves on either side of the long (rostro-caudal) axis through the
    section centre, and strips of tissue whose signed distance ``s``
    from the lesion epicenter along the caudal direction lies in ``[a, b)``
    µm (negative = rostral).

Any region can be given as a user polygon (stage µm); it then replaces the
automatic mask (and the masks derived from it: white matter from gray
matter, halves/bins/territory from the section).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from scipy.linalg import eigh
from skimage.draw import polygon as draw_polygon
from skimage.filters import threshold_otsu

__all__ = [
    "RUBROSPINAL_ANGLES_DEG",
    "RUBROSPINAL_DEPTH_FRACTION",
    "SectionAxes",
    "SectionRegions",
    "gray_matter_mask",
    "rasterize_polygon_um",
    "rubrospinal_territory_mask",
    "section_axes",
    "section_regions",
    "tissue_mask",
]

BoolArray = NDArray[np.bool_]
Orientation = Literal["coronal", "horizontal"]
Side = Literal["left", "right"]

RUBROSPINAL_ANGLES_DEG: tuple[float, float] = (-8.0, 34.0)
"""Polar angle range of the rubrospinal territory about the cord centre
(centre of its bounding box in its own axes; degrees; 0 = lateral, positive = dorsal)."""

RUBROSPINAL_DEPTH_FRACTION = 0.217
"""Maximal depth of the rubrospinal territory below the pia as a fraction of
the cord's half-width (≈ 430 µm at C5, 300 µm at Th7, 330 µm at L2 in the
adult rat). With 0.217 the territory's area on the demo slide's coronal
sections is within ±4 % of the true territory's (0.23, the ratio of those
depths to the half-widths, gave +3 to +10 %: the rule's depth is measured
straight in from the outline, the tapering ends reach further)."""

RUBROSPINAL_INSET_UM = 12.0
"""Subpial rim (glia limitans, meninges) left out of the territory (µm)."""

RUBROSPINAL_GRAY_GAP_UM = 40.0
"""Minimal distance of the territory from the gray matter (µm)."""


# ================================================================== dataclasses


@dataclass(frozen=True)
class SectionAxes:
    """Anatomical axes of one section in stage coordinates.

    Attributes
    ----------
    centre_um : (float, float)
        Centre of the section's bounding box in its own (rotated) axes (µm).
    midline_point_um : (float, float)
        Point of the midline (coronal: central canal centre if found,
        else the gray-matter centroid; horizontal: the centre).
    right_direction : (float, float)
        Unit vector toward the animal's right.
    ventral_direction : (float, float) or None
        Coronal: unit vector toward ventral.
    rostral_direction : (float, float) or None
        Horizontal: unit vector toward rostral.
    rotation_deg : float
        Estimated section rotation (degrees, image coordinates, y down).
    """

    centre_um: tuple[float, float]
    midline_point_um: tuple[float, float]
    right_direction: tuple[float, float]
    ventral_direction: tuple[float, float] | None
    rostral_direction: tuple[float, float] | None
    rotation_deg: float


@dataclass(frozen=True)
class SectionRegions:
    """Region masks of one section on its mosaic grid.

    Attributes
    ----------
    masks : dict of str to (H, W) bool array
        One mask per region name (see the module docstring).
    origin_um : (float, float)
        Stage position of the top-left corner of pixel (0, 0) (µm).
    pixel_size_um : float
        Mosaic pixel size (µm).
    orientation : {"coronal", "horizontal"}
    axes : SectionAxes
        Estimated anatomical axes.
    epicenter_um : (float, float) or None
        Horizontal: lesion epicenter (µm).
    epicenter_source : {"plan", "cavity", "centre"} or None
        Where the epicenter came from; ``"centre"`` flags an intact section
        without cavity and without a planned point (bins then are relative
        to the section centre, not to an anatomical landmark).
    bin_edges_um : tuple of (float, float)
        Horizontal: ``(a, b)`` signed-distance range of each ``rc_`` bin.
    user_regions : tuple of str
        Names whose mask was given as a user polygon.
    """

    masks: dict[str, BoolArray]
    origin_um: tuple[float, float]
    pixel_size_um: float
    orientation: Orientation
    axes: SectionAxes
    epicenter_um: tuple[float, float] | None = None
    epicenter_source: str | None = None
    bin_edges_um: tuple[tuple[float, float], ...] = ()
    user_regions: tuple[str, ...] = field(default=())

    @property
    def rostral_direction(self) -> tuple[float, float] | None:
        """Horizontal: unit vector toward rostral."""
        return self.axes.rostral_direction

    @property
    def midline_point_um(self) -> tuple[float, float]:
        """A point of the midline (µm)."""
        return self.axes.midline_point_um


# ================================================================== helpers


def _finite_image(image: ArrayLike) -> tuple[NDArray[np.float64], BoolArray]:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D mosaic, got shape {a.shape}")
    valid = np.isfinite(a)
    return np.where(valid, a, 0.0), valid


def _disk(radius_px: float) -> BoolArray:
    r = max(round(radius_px), 1)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r


def _remove_small(mask: BoolArray, min_px: float) -> BoolArray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _fill_small_holes(mask: BoolArray, max_px: float) -> BoolArray:
    holes = ndi.binary_fill_holes(mask) & ~mask
    lab, n = ndi.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    small = sizes <= max_px
    small[0] = False
    return mask | small[lab]


def _pixel_centres_um(
    shape: tuple[int, int], origin_um: ArrayLike, pixel_size_um: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    o = np.asarray(origin_um, dtype=np.float64)
    h, w = shape
    x = o[0] + (np.arange(w) + 0.5) * pixel_size_um
    y = o[1] + (np.arange(h) + 0.5) * pixel_size_um
    return x[None, :], y[:, None]


def _centroid_um(mask: BoolArray, origin_um: ArrayLike, pixel_size_um: float) -> NDArray[np.float64]:
    r, c = np.nonzero(mask)
    o = np.asarray(origin_um, dtype=np.float64)
    return np.array([o[0] + (c.mean() + 0.5) * pixel_size_um, o[1] + (r.mean() + 0.5) * pixel_size_um])


def rasterize_polygon_um(
    polygon_um: ArrayLike, *, shape: tuple[int, int], origin_um: ArrayLike, pixel_size_um: float
) -> BoolArray:
    """Pixels of a grid whose centre lies inside a stage polygon.

    Parameters
    ----------
    polygon_um : (N, 2) array
        Vertices (x, y) in stage µm.
    shape : (int, int)
        Grid (H, W).
    origin_um : (2,) array
        Stage position of the top-left corner of pixel (0, 0) (µm).
    pixel_size_um : float

    Returns
    -------
    (H, W) bool array
    """
    p = np.asarray(polygon_um, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
        raise ValueError(f"polygon must be (N >= 3, 2), got shape {p.shape}")
    o = np.asarray(origin_um, dtype=np.float64)
    cols = (p[:, 0] - o[0]) / pixel_size_um - 0.5
    rows = (p[:, 1] - o[1]) / pixel_size_um - 0.5
    out = np.zeros(shape, dtype=bool)
    rr, cc = draw_polygon(rows, cols, shape=shape)
    out[rr, cc] = True
    return out


# ================================================================== tissue / gray


def tissue_mask(
    anatomy_mosaic: ArrayLike,
    *,
    pixel_size_um: float,
    smooth_um: float = 6.0,
    min_object_um2: float = 200_000.0,
    max_hole_um2: float = 1_500.0,
) -> BoolArray:
    """Tissue of a section from its anatomy (DAPI) mosaic.

    Every tissue pixel carries some DAPI signal (nuclei and the weak
    autofluorescent neuropil); the background carries none beyond the
    camera offset. The slightly smoothed image is thresholded half-way
    between the background level (2nd percentile of the imaged pixels) and
    the dim tissue level (20th percentile of pixels above Otsu's threshold
    of the log image); small specks are removed and holes smaller than
    ``max_hole_um2`` (gaps between nuclei) filled, so the central canal and
    a lesion cavity stay out of the tissue.

    Parameters
    ----------
    anatomy_mosaic : (H, W) float array
        Anatomy mosaic (any linear unit), NaN where not imaged.
    pixel_size_um : float
        Mosaic pixel size (µm).
    smooth_um : float
        Gaussian sigma of the pre-smoothing (µm).
    min_object_um2 : float
        Tissue pieces smaller than this are dropped (µm²).
    max_hole_um2 : float
        Holes up to this area are filled (µm²).

    Returns
    -------
    (H, W) bool array
    """
    img, valid = _finite_image(anatomy_mosaic)
    if not valid.any():
        return np.zeros(img.shape, dtype=bool)
    p = float(pixel_size_um)
    vals = img[valid]
    bg = float(np.percentile(vals, 2.0))
    img = np.where(valid, img, bg)
    sm = ndi.gaussian_filter(img, smooth_um / p)
    lv = np.log(np.maximum(sm[valid] - bg, 0.0) + 1e-6 * (np.ptp(vals) + 1e-12))
    t = threshold_otsu(lv)
    fg = sm[valid][lv > t]
    level = float(np.percentile(fg, 20.0)) if fg.size else float(vals.max())
    thr = bg + 0.5 * (level - bg)
    mask = (sm > thr) & valid
    mask = _remove_small(mask, min_object_um2 / p**2)
    mask = _fill_small_holes(mask, max_hole_um2 / p**2)
    return mask


def _smooth_within(values: NDArray[np.float64], inside: BoolArray, sigma_px: float) -> NDArray[np.float64]:
    """Gaussian smoothing by normalised convolution: only ``inside`` pixels contribute."""
    w = inside.astype(np.float64)
    num = ndi.gaussian_filter(np.where(inside, values, 0.0), sigma_px)
    den = ndi.gaussian_filter(w, sigma_px)
    return np.asarray(num / np.maximum(den, 1e-6), dtype=np.float64)


def _nucleus_points(
    signal: NDArray[np.float64], tissue: BoolArray, pixel_size_um: float
) -> NDArray[np.float64]:
    """1 at each nucleus (a local maximum standing out of its surroundings), else 0.

    White top-hat (the signal minus its grey opening by a 12 µm disc) keeps
    objects the size of nuclei; its local maxima above 3 robust σ of the
    top-hat within the tissue are counted.
    """
    top_hat = signal - ndi.grey_opening(signal, footprint=_disk(6.0 / pixel_size_um))
    vals = top_hat[tissue]
    med = float(np.median(vals))
    sigma = 1.4826 * float(np.median(np.abs(vals - med)))
    peaks = (top_hat == ndi.maximum_filter(top_hat, size=3)) & (top_hat > med + 3.0 * max(sigma, 1e-12))
    return (peaks & tissue).astype(np.float64)


def _two_class_split(features: NDArray[np.float64], start: BoolArray, iterations: int = 4) -> BoolArray:
    """Linear discriminant of two classes, refined from a starting split.

    Each round: class means and pooled covariance of the features of the
    current classes, Fisher's direction, projection, and the split at the
    midpoint of the two classes' median projections (a linear smoothing of
    a step crosses the midpoint at the step).
    """
    cls = start.copy()
    for _ in range(iterations):
        if cls.all() or not cls.any():
            break
        a, b = features[cls], features[~cls]
        cov = 0.5 * (np.cov(a, rowvar=False) + np.cov(b, rowvar=False))
        cov = np.atleast_2d(cov) + 1e-9 * np.eye(features.shape[1])
        direction = np.linalg.solve(cov, a.mean(axis=0) - b.mean(axis=0))
        y = features @ direction
        cut = 0.5 * (float(np.median(y[cls])) + float(np.median(y[~cls])))
        new = y > cut
        if np.array_equal(new, cls):
            break
        cls = new
    return cls


def _checkerboard(shape: tuple[int, int], block_px: int) -> BoolArray:
    """One colour of a checkerboard of ``block_px`` squares."""
    r = (np.arange(shape[0]) // block_px)[:, None]
    c = (np.arange(shape[1]) // block_px)[None, :]
    return np.asarray((r + c) % 2 == 0, dtype=bool)


def _most_reliable_direction(
    features: NDArray[np.float64], noise: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The feature combination of highest signal-to-noise ratio (maximum noise fraction).

    ``features`` (n, k) and the covariance of their noise (k, k): the first
    generalised eigenvector of (total covariance, noise covariance), i.e. the
    projection whose variance over the tissue is largest in units of its own
    noise.
    """
    total = np.atleast_2d(np.cov(features, rowvar=False))
    k = total.shape[0]
    # a feature without measurable noise (a synthetic image) must not make the problem singular
    ridge = 1e-6 * float(np.trace(total)) / k + 1e-12
    _, evecs = eigh(total, np.atleast_2d(noise) + ridge * np.eye(k))
    return np.asarray(evecs[:, -1], dtype=np.float64)


def gray_matter_mask(
    anatomy_mosaic: ArrayLike,
    *,
    tissue: BoolArray,
    pixel_size_um: float,
    smooth_um: float = 32.0,
    close_um: float = 12.0,
    min_fraction: float = 0.05,
    rim_um: float = 40.0,
) -> BoolArray:
    """Gray matter: the part of the tissue that differs from the white matter under the pia.

    What distinguishes gray from white matter in a DAPI image depends on the
    stain, the section's thickness and the microscope: gray matter holds
    nuclei more densely, but its neuropil may be brighter or darker than the
    myelinated white matter. So three features are measured over the
    tissue, each smoothed by normalised convolution within it (σ
    ``smooth_um``, so neither the pia nor a hole darkens its neighbours):

    * the mean DAPI signal,
    * the density of nuclei (local maxima of the white top-hat, :func:`_nucleus_points`),
    * the level between nuclei (the grey opening by a 12 µm disc).

    The two classes are separated by a linear discriminant of the
    standardised features (:func:`_two_class_split`), with the cut at the
    midpoint of the classes. The discriminant refines a starting split, and
    where it starts matters: the nuclei are discrete and sparse, so every
    smoothed feature carries the counting noise of the few nuclei under its
    kernel (about 18 in white matter at 1400 nuclei/mm² and σ 32 µm, ±24 %),
    which can exceed the gray/white contrast of the mean signal (1.35 on
    model B's slide) while another feature (there: the haze between nuclei)
    separates the classes at 3-4 noise σ. The first principal component,
    the former start, weighs features by their total variance, noise
    included; on thin gray matter (Th7) it followed clusters of nuclei and
    the refinement kept them (model B: Dice 0.69-0.87, area +14 to +50 %).
    So the noise of each feature is measured on the section itself: the two
    colours of a checkerboard of σ-sized squares see the same tissue at each
    place but different nuclei, and half the difference of their smoothed
    features is the noise of the full estimate. The split starts from Otsu's
    threshold of the feature combination of highest signal-to-noise ratio
    (the first maximum-noise-fraction component,
    :func:`_most_reliable_direction`). Which class is gray matter is decided
    by anatomy, not by brightness: the white matter lines the pia, so the
    class covering less of the tissue's outer rim (``rim_um``) is gray. The
    result is closed, opened, pieces smaller than ``min_fraction`` of the
    largest dropped and holes filled (the central canal lies in gray
    matter).

    Parameters
    ----------
    anatomy_mosaic : (H, W) float array
        Anatomy mosaic, NaN where not imaged.
    tissue : (H, W) bool array
        Tissue mask (:func:`tissue_mask`).
    pixel_size_um : float
        Mosaic pixel size (µm).
    smooth_um : float
        Gaussian sigma of the feature smoothing (µm).
    close_um : float
        Radius of the morphological closing/opening (µm).
    min_fraction : float
        Minimal piece area relative to the largest piece.
    rim_um : float
        Depth of the outer rim that is white matter (µm).

    Returns
    -------
    (H, W) bool array, a subset of ``tissue``
    """
    img, valid = _finite_image(anatomy_mosaic)
    tissue = np.asarray(tissue, dtype=bool) & valid
    if tissue.sum() < 16:
        return np.zeros(img.shape, dtype=bool)
    p = float(pixel_size_um)
    bg = float(np.percentile(img[valid & ~tissue], 50.0)) if (valid & ~tissue).any() else 0.0
    signal = np.where(tissue, img - bg, 0.0)
    s = smooth_um / p
    between = ndi.grey_opening(np.where(tissue, signal, np.inf), footprint=_disk(6.0 / p))
    between = np.where(np.isfinite(between), between, 0.0)
    per_pixel = (signal, _nucleus_points(signal, tissue, p), between)

    def smoothed(where: BoolArray) -> NDArray[np.float64]:
        return np.stack([_smooth_within(f, where, s) for f in per_pixel], axis=-1)[tissue]

    features = smoothed(tissue)
    spread = features.std(axis=0)
    scale = np.where(spread > 0, spread, 1.0)
    z = (features - features.mean(axis=0)) / scale
    # the features' noise, measured: the two colours of a checkerboard of σ-sized squares see
    # the same tissue classes at every place but independent nuclei, so half their difference
    # is the noise of the full estimate (a difference of two half-samples: 4 × its variance)
    half = _checkerboard(img.shape, max(2, round(s)))
    noise = (smoothed(tissue & half) - smoothed(tissue & ~half)) / (2.0 * scale)
    # start: Otsu on the most reliable combination of the features
    y = z @ _most_reliable_direction(z, np.atleast_2d(np.cov(noise, rowvar=False)))
    cls = _two_class_split(z, y > threshold_otsu(y))
    labels = np.zeros(img.shape, dtype=bool)
    labels[tissue] = cls
    filled = ndi.binary_fill_holes(tissue)
    rim = tissue & (ndi.distance_transform_edt(filled) * p <= rim_um)
    if rim.any() and (labels & rim).sum() / rim.sum() > 0.5:
        labels = tissue & ~labels  # the class lining the pia is white matter
    gray = labels
    fp = _disk(close_um / p)
    gray = ndi.binary_closing(gray, fp, border_value=0)
    gray = ndi.binary_opening(gray, fp, border_value=0)
    lab, n = ndi.label(gray)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        keep = sizes >= min_fraction * sizes.max()
        keep[0] = False
        gray = keep[lab]
    gray = ndi.binary_fill_holes(gray)
    return gray & tissue


# ================================================================== axes


def _unit(v: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    return a / np.hypot(a[0], a[1])


def _major_axis(mask: BoolArray) -> NDArray[np.float64]:
    """Unit vector (x, y) of the major principal axis of a mask."""
    r, c = np.nonzero(mask)
    cov = np.cov(np.vstack([c - c.mean(), r - r.mean()]))
    evals, evecs = np.linalg.eigh(cov)
    return evecs[:, int(np.argmax(evals))]


def _xy(v: np.ndarray) -> tuple[float, float]:
    return (float(v[0]), float(v[1]))


def section_axes(
    tissue: BoolArray,
    *,
    origin_um: ArrayLike,
    pixel_size_um: float,
    orientation: Orientation,
    gray: BoolArray | None = None,
    rostral_direction_deg: float = 180.0,
) -> SectionAxes:
    """Anatomical axes of a section from its tissue (and gray-matter) mask.

    Coronal: the major principal axis of the filled tissue is left-right
    (the cord is wider than tall), oriented so the animal's right points to
    +x (mounting convention: dorsal toward −y, left toward −x); the
    midline passes through the central canal (largest hole inside the gray
    matter) or, without one, the gray-matter centroid.

    Horizontal: the major axis is rostro-caudal, oriented to agree with the
    planned ``rostral_direction_deg`` (image angle, 0 = +x, 90 = +y,
    180 = −x); seen from dorsal, the animal's right is the rostral
    direction turned by −90° in image coordinates (rostral −x → right −y).

    Parameters
    ----------
    tissue : (H, W) bool array
    origin_um : (2,) array
        Stage position of the top-left corner of pixel (0, 0) (µm).
    pixel_size_um : float
    orientation : {"coronal", "horizontal"}
    gray : (H, W) bool array, optional
        Gray-matter mask (coronal midline).
    rostral_direction_deg : float
        Planned rostral direction of horizontal sections (degrees).

    Returns
    -------
    SectionAxes
    """
    filled = ndi.binary_fill_holes(tissue)
    if not filled.any():
        raise ValueError("empty tissue mask")
    major = _major_axis(filled)
    minor = np.array([-major[1], major[0]])
    r, c = np.nonzero(filled)
    o = np.asarray(origin_um, dtype=np.float64)
    pts = np.column_stack([o[0] + (c + 0.5) * pixel_size_um, o[1] + (r + 0.5) * pixel_size_um])
    a_major, a_minor = pts @ major, pts @ minor
    # centre of the section's bounding box in its own axes (robust to the
    # dorso-ventral asymmetry of the outline, unlike the centroid)
    centre = 0.5 * (a_major.min() + a_major.max()) * major + 0.5 * (a_minor.min() + a_minor.max()) * minor
    if orientation == "coronal":
        right = major if major[0] >= 0 else -major
        ventral = np.array([-right[1], right[0]])
        midline = centre
        holes = filled & ~tissue
        if gray is not None and gray.any():
            gray_filled = ndi.binary_fill_holes(gray)
            holes &= gray_filled
            midline = _centroid_um(gray_filled, origin_um, pixel_size_um)
        lab, n = ndi.label(holes)
        if n:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            if sizes.max() * pixel_size_um**2 >= 500.0:
                midline = _centroid_um(lab == int(np.argmax(sizes)), origin_um, pixel_size_um)
        rot = float(np.degrees(np.arctan2(right[1], right[0])))
        return SectionAxes(_xy(centre), _xy(midline), _xy(right), _xy(ventral), None, rot)
    if orientation != "horizontal":
        raise ValueError(f"orientation must be 'coronal' or 'horizontal', got {orientation!r}")
    a = np.radians(rostral_direction_deg)
    planned = np.array([np.cos(a), np.sin(a)])
    rostral = major if float(major @ planned) >= 0 else -major
    right = np.array([-rostral[1], rostral[0]])
    rot = float(np.degrees(np.arctan2(rostral[1], rostral[0]) - a))
    rot = (rot + 180.0) % 360.0 - 180.0
    return SectionAxes(_xy(centre), _xy(centre), _xy(right), None, _xy(rostral), rot)


# ================================================================== territory


def rubrospinal_territory_mask(
    tissue: BoolArray,
    gray: BoolArray,
    axes: SectionAxes,
    *,
    side: Side,
    origin_um: ArrayLike,
    pixel_size_um: float,
    angles_deg: tuple[float, float] = RUBROSPINAL_ANGLES_DEG,
    depth_fraction: float = RUBROSPINAL_DEPTH_FRACTION,
    depth_um: float | None = None,
    inset_um: float = RUBROSPINAL_INSET_UM,
    gray_gap_um: float = RUBROSPINAL_GRAY_GAP_UM,
) -> BoolArray:
    """Rubrospinal territory of a coronal section.

    The rule (lateral-most dorsolateral funiculus, ventrolateral of the
    dorsal horn): white matter on ``side`` whose polar angle about the cord
    centre (:attr:`SectionAxes.centre_um`), measured from the lateral direction toward dorsal, lies in
    ``angles_deg``, from ``inset_um`` below the pia down to a depth that
    rises from ``inset_um`` at both angle ends to ``depth_um`` in the
    middle (``inset + (depth − inset)·sin(π t)^½``, ``t`` the position in
    the angle range), and at least ``gray_gap_um`` from the gray matter.
    ``depth_um`` defaults to ``depth_fraction`` × the cord half-width.

    Parameters
    ----------
    tissue, gray : (H, W) bool arrays
    axes : SectionAxes
        Coronal axes (:func:`section_axes`).
    side : {"left", "right"}
        Side carrying the tract (contralateral to the red-nucleus injection).
    origin_um : (2,) array
    pixel_size_um : float
    angles_deg : (float, float)
    depth_fraction : float
    depth_um : float, optional
    inset_um, gray_gap_um : float

    Returns
    -------
    (H, W) bool array
    """
    if axes.ventral_direction is None:
        raise ValueError("the rubrospinal territory is defined on coronal sections")
    p = float(pixel_size_um)
    filled = ndi.binary_fill_holes(tissue)
    x, y = _pixel_centres_um(tissue.shape, origin_um, p)
    dx = x - axes.centre_um[0]
    dy = y - axes.centre_um[1]
    r = np.asarray(axes.right_direction)
    v = np.asarray(axes.ventral_direction)
    u_c = dx * r[0] + dy * r[1]
    v_c = dx * v[0] + dy * v[1]
    s = 1.0 if side == "right" else -1.0
    if depth_um is None:
        lateral = (s * u_c)[filled]
        depth_um = depth_fraction * (float(lateral.max()) + 0.5 * p)
    ang = np.degrees(np.arctan2(-v_c, s * u_c))
    lo, hi = angles_deg
    t = np.clip((ang - lo) / (hi - lo), 0.0, 1.0)
    limit = inset_um + (depth_um - inset_um) * np.sqrt(np.sin(np.pi * t))
    depth = ndi.distance_transform_edt(filled) * p - 0.5 * p
    gray_dist = ndi.distance_transform_edt(~gray) * p if gray.any() else np.full(tissue.shape, np.inf)
    return (
        tissue
        & ~gray
        & (ang >= lo)
        & (ang <= hi)
        & (depth >= inset_um)
        & (depth <= limit)
        & (gray_dist >= gray_gap_um)
    )


# ================================================================== all regions


def _largest_cavity(tissue: BoolArray, min_px: float) -> BoolArray | None:
    holes = ndi.binary_fill_holes(tissue) & ~tissue
    lab, n = ndi.label(holes)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    k = int(np.argmax(sizes))
    return lab == k if sizes[k] >= min_px else None


def section_regions(
    anatomy_mosaic: ArrayLike,
    *,
    origin_um: ArrayLike,
    pixel_size_um: float,
    orientation: Orientation,
    injection_side: Side | None,
    rostral_direction_deg: float = 180.0,
    epicenter_um: tuple[float, float] | None = None,
    bin_length_um: float = 500.0,
    min_cavity_um2: float = 20_000.0,
    user_polygons_um: Mapping[str, ArrayLike] | None = None,
) -> SectionRegions:
    """All region masks of one section.

    Parameters
    ----------
    anatomy_mosaic : (H, W) float array
        Anatomy (DAPI) mosaic, NaN where not imaged.
    origin_um : (2,) array
        Stage position of the top-left corner of pixel (0, 0) (µm).
    pixel_size_um : float
        Mosaic pixel size (µm).
    orientation : {"coronal", "horizontal"}
    injection_side : {"left", "right"} or None
        Side of the red-nucleus injection; the territory is on the other side.
        None (not known): coronal sections get no ``rubrospinal_territory``
        (unless the user draws it), rather than one on a guessed side.
    rostral_direction_deg : float
        Horizontal: planned rostral direction (image angle, 180 = −x).
    epicenter_um : (float, float), optional
        Horizontal: planned lesion epicenter (µm); wins over the cavity.
    bin_length_um : float
        Rostro-caudal bin length (µm).
    min_cavity_um2 : float
        Smallest interior hole taken for a lesion cavity (µm²).
    user_polygons_um : mapping of str to (N, 2) array, optional
        Region name → stage polygon (µm) replacing the automatic mask.

    Returns
    -------
    SectionRegions
    """
    img = np.asarray(anatomy_mosaic, dtype=np.float64)  # NaN kept: not imaged
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D mosaic, got shape {img.shape}")
    p = float(pixel_size_um)
    origin = np.asarray(origin_um, dtype=np.float64)
    shape = img.shape
    user = {str(k): np.asarray(v, dtype=np.float64) for k, v in (user_polygons_um or {}).items()}

    def user_mask(name: str) -> BoolArray:
        return rasterize_polygon_um(user[name], shape=shape, origin_um=origin, pixel_size_um=p)

    masks: dict[str, BoolArray] = {}
    tissue = user_mask("section") if "section" in user else tissue_mask(img, pixel_size_um=p)
    masks["section"] = tissue
    if "gray_matter" in user:
        gray = user_mask("gray_matter") & tissue
    else:
        gray = gray_matter_mask(img, tissue=tissue, pixel_size_um=p)
    masks["gray_matter"] = gray
    masks["white_matter"] = user_mask("white_matter") & tissue if "white_matter" in user else tissue & ~gray
    axes = section_axes(
        tissue, origin_um=origin, pixel_size_um=p, orientation=orientation, gray=gray,
        rostral_direction_deg=rostral_direction_deg,
    )  # fmt: skip
    x, y = _pixel_centres_um(shape, origin, p)
    mx, my = axes.midline_point_um
    rx, ry = axes.right_direction
    side_coord = (x - mx) * rx + (y - my) * ry
    masks["left"] = tissue & (side_coord < 0)
    masks["right"] = tissue & (side_coord >= 0)
    epi: tuple[float, float] | None = None
    source: str | None = None
    edges: list[tuple[float, float]] = []
    if orientation == "coronal":
        assert axes.ventral_direction is not None
        vx, vy = axes.ventral_direction
        dv = (x - mx) * vx + (y - my) * vy
        masks["dorsal"] = tissue & (dv < 0)
        masks["ventral"] = tissue & (dv >= 0)
        if injection_side in ("left", "right"):
            tracer: Side = "right" if injection_side == "left" else "left"
            masks["rubrospinal_territory"] = rubrospinal_territory_mask(
                tissue, gray, axes, side=tracer, origin_um=origin, pixel_size_um=p
            )
    else:
        assert axes.rostral_direction is not None
        if epicenter_um is not None:
            epi, source = (float(epicenter_um[0]), float(epicenter_um[1])), "plan"
        else:
            cav = _largest_cavity(tissue, min_cavity_um2 / p**2)
            # the epicenter is a rostro-caudal level: put it on the long axis
            m = np.asarray(axes.centre_um)
            rd = np.asarray(axes.rostral_direction)
            if cav is not None:
                c = _centroid_um(cav, origin, p)
                c = m + float((c - m) @ rd) * rd
                epi, source = (float(c[0]), float(c[1])), "cavity"
            else:
                epi, source = (float(m[0]), float(m[1])), "centre"
        ox, oy = axes.rostral_direction
        s = -((x - epi[0]) * ox + (y - epi[1]) * oy)  # signed distance, caudal positive
        s = np.broadcast_to(s, shape)
        if tissue.any():
            L = float(bin_length_um)
            k0 = int(np.floor(s[tissue].min() / L))
            k1 = int(np.ceil(s[tissue].max() / L))
            for k in range(k0, k1):
                a, b = k * L, (k + 1) * L
                edges.append((a, b))
                masks[f"rc_{round(a)}_{round(b)}"] = tissue & (s >= a) & (s < b)
    for name in user:
        if name not in ("section", "gray_matter", "white_matter"):
            masks[name] = user_mask(name) & tissue
    return SectionRegions(
        masks=masks,
        origin_um=(float(origin[0]), float(origin[1])),
        pixel_size_um=p,
        orientation=orientation,
        axes=axes,
        epicenter_um=epi,
        epicenter_source=source,
        bin_edges_um=tuple(edges),
        user_regions=tuple(user),
    )
