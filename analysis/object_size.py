"""Physical object size from blurred images: the object-size model of a PSF.

Why
---
The optics spread every labelled punctum over a footprint larger than the
punctum. Where, inside that blurred edge, the punctum's real boundary lies
depends on the PSF and on the punctum's size: for an object much larger than
the PSF it is at half of the object's plateau (any symmetric PSF), but an
object about as wide as the PSF never reaches its full brightness and its
boundary sits higher up its peak, at a level that a fixed fraction cannot
follow. :func:`analysis.tile.segment_axons` therefore measures each object's
*half-maximum region* (pixels at or above half of their local plateau: its
area and its aspect ratio) and asks an :class:`ObjectSizeModel` for the
physical area that gives; it then keeps the object's brightest pixels (by
their ratio to the local plateau) up to that area.

How the model is made (:func:`object_size_model`)
-------------------------------------------------
By simulation through the measured effective PSF (:mod:`analysis.psf`):
ellipses of known area (equivalent radius 0.25-6 µm, aspect ratio 1-8, two
sub-pixel phases and orientations each) are rendered on a grid of a third of
a pixel, convolved with the PSF profile, sampled at the pixel centres and
passed, noise-free, through the very same segmentation steps. Each gives
its measurements (apparent area and aspect; Gaussian-weighted moment size
and aspect) and its true area; the model interpolates them linearly over a
regular grid (the nearest simulated value beyond their range): compact
objects by ``log true area`` over ``(log moment size, log moment aspect)``,
extended ones by ``log(true / apparent area)`` over ``(log apparent width,
log aspect)``. Because the simulated
objects go through the same estimator, its own biases (plateau read by a
cross erosion, pixel sampling) are calibrated out with the optics.

Limits
------
* Objects near the resolution limit: below ≈ 1.5 PSF FWHM across, the
  half-maximum area changes little with the true size (the image is mostly
  the PSF), so the estimate loses precision (±30 % at 1 FWHM on noise-free
  data) and, with noise, bias; at the issue's size floor (1.5 µm across at
  10x, 1.5-2 FWHM) it is within ±15 %.
* Touching objects merge into one object (a saddle between them above half
  their plateau); their total area stays right when they are large, but two
  merged near-resolution puncta are sized as one elongated object.
* Dim objects (plateau below twice the detection threshold) have their
  half-maximum region cut by the threshold: their area reads low.
* Uniformly bright, convex objects are assumed; an object with a dark core
  or strongly varying brightness is sized by its bright part.
* The model is for in-focus objects; defocus widens the PSF (areas grow by
  a few % per µm at 10x).
* It assumes image formation is a convolution. A renderer or rig where it is
  not (e.g. the demo slide's, which conserves each object's flux by
  lowering its plateau while its edge spreads) is corrected, to first
  order, by a constant area offset measured on beads of known size
  (:func:`measure_size_offset`), kept with the PSF.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
from scipy.signal import fftconvolve

from analysis.psf import PointSpreadFunction, PSFError
from analysis.tile import AxonSegmentationSettings, measure_objects, segment_axons

__all__ = ["ObjectSizeModel", "SizeStandardResult", "measure_size_offset", "object_size_model"]

F64 = NDArray[np.float64]

_RADII_UM = np.geomspace(0.25, 6.0, 20)
_ASPECTS = (1.0, 1.5, 2.25, 3.4, 5.0, 8.0)
_FIBRE_WIDTHS_UM = np.geomspace(0.3, 3.0, 10)
_FIBRE_ELONGATIONS = (2.0, 4.0, 8.0, 16.0, 32.0)  # straight length / width
_FIBRE_MAX_LENGTH_UM = 40.0
_PHASES = ((0.0, 0.0, 0.0), (0.37, 0.71, 0.6))  # row/col offset (px), angle (rad)
_SUPERSAMPLE = 3  # odd: pixel centres fall on grid points
_GRID_LOG_AREA = np.linspace(math.log(0.5), math.log(5000.0), 64)
_GRID_LOG_MOMENT = np.linspace(math.log(0.05), math.log(100.0), 64)
_GRID_LOG_ASPECT = np.linspace(0.0, math.log(10.0), 24)
_GRID_LOG_ELONGATION = np.linspace(math.log(0.8), math.log(120.0), 32)
_COMPACT_RADIUS = 2.5
_SIM_THRESHOLD = 20.0
"""Detection threshold of the simulation: 2 % of the objects' brightness (1000). Real objects
are detected well above their threshold (the candidate is cut at 0.375 of the plateau), and a
measured PSF's noisy tail, a pedestal of a fraction of a percent over microns, must not join
neighbouring simulated objects."""  # compact: apparent area up to a disc of this many weight σ


def _bilinear(table: F64, x: F64, y: F64, x_grid: F64, y_grid: F64) -> F64:
    """Bilinear interpolation on a regular grid, clamped to its edges."""
    x = np.clip(x, x_grid[0], x_grid[-1])
    y = np.clip(y, y_grid[0], y_grid[-1])
    fx = (x - x_grid[0]) / (x_grid[1] - x_grid[0])
    fy = (y - y_grid[0]) / (y_grid[1] - y_grid[0])
    i = np.minimum(fx.astype(np.int64), len(x_grid) - 2)
    j = np.minimum(fy.astype(np.int64), len(y_grid) - 2)
    tx, ty = fx - i, fy - j
    return np.asarray(
        table[i, j] * (1 - tx) * (1 - ty)
        + table[i + 1, j] * tx * (1 - ty)
        + table[i, j + 1] * (1 - tx) * ty
        + table[i + 1, j + 1] * tx * ty,
        dtype=np.float64,
    )


@dataclass(frozen=True, eq=False)
class ObjectSizeModel:
    """Physical area of an object from what the optics show of it (see the module docstring).

    Attributes
    ----------
    source : str
        Where the PSF came from (``"beads"``, ``"gaussian"``, ``"pixel"``).
    pixel_size_um : float
    psf_fwhm_um : float
        FWHM of the PSF the model was made for (µm).
    moment_sigma_px : float
        σ of the Gaussian weight of compact objects' moments (pixels).
    compact_limit_px : float
        Objects of at most this apparent area (pixels) are sized by their
        moments, larger ones by their apparent area.
    extended : (64, 24) float64
        ``log(true / apparent area)`` on ``(log apparent area px, log aspect)``;
        0 (no correction) beyond the simulated objects (larger, or longer than
        an 8:1 ellipse, e.g. fibres: the apparent area of an object that
        reaches its plateau is its area).
    compact : (64, 24) float64
        ``log(true area px)`` on ``(log moment size px², log moment aspect)``.
    size_offset_px : float
        Area subtracted from every object (pixels; the PSF's size offset).
    """

    source: str
    pixel_size_um: float
    psf_fwhm_um: float
    moment_sigma_px: float
    compact_limit_px: float
    extended: F64
    compact: F64
    size_offset_px: float

    def true_area_px(
        self,
        apparent_area_px: ArrayLike,
        elongation: ArrayLike,
        moment_size_px2: ArrayLike,
        moment_aspect: ArrayLike,
    ) -> F64:
        """Physical area (pixels) from an object's measurements.

        Parameters
        ----------
        apparent_area_px, elongation : (n,) arrays
            Apparent area (pixels) and elongation (``12 λ_major / area``,
            :class:`analysis.tile.AxonObjects`) of each object.
        moment_size_px2, moment_aspect : (n,) arrays
            Moment size and aspect of compact objects (NaN for the others).

        Returns
        -------
        (n,) float64, ≥ 0
        """
        a = np.maximum(np.asarray(apparent_area_px, dtype=np.float64), 1e-3)
        e = np.asarray(elongation, dtype=np.float64)
        e = np.where(np.isfinite(e) & (e > 0), e, 1.0)
        ratio = _bilinear(self.extended, np.log(a), np.log(e), _GRID_LOG_AREA, _GRID_LOG_ELONGATION)
        out = a * np.exp(ratio)
        m = np.asarray(moment_size_px2, dtype=np.float64)
        compact = np.isfinite(m) & (m > 0)
        if compact.any():
            m_asp = np.asarray(moment_aspect, dtype=np.float64)[compact]
            m_asp = np.where(np.isfinite(m_asp), np.maximum(m_asp, 1.0), 1.0)
            out[compact] = np.exp(
                _bilinear(self.compact, np.log(m[compact]), np.log(m_asp), _GRID_LOG_MOMENT, _GRID_LOG_ASPECT)
            )
        return np.asarray(np.maximum(out - self.size_offset_px, 0.0), dtype=np.float64)

    def summary(self) -> dict[str, object]:
        """Scalar description, JSON-ready (written with the analysis parameters)."""
        return {
            "source": self.source,
            "pixel_size_um": self.pixel_size_um,
            "psf_fwhm_um": round(self.psf_fwhm_um, 4),
            "moment_sigma_px": round(self.moment_sigma_px, 4),
            "compact_limit_px": round(self.compact_limit_px, 3),
            "size_offset_um2": round(self.size_offset_px * self.pixel_size_um**2, 4),
        }


@dataclass(frozen=True)
class _Measuring:
    """A stand-in model for the simulation: moments for every object, no resizing."""

    moment_sigma_px: float
    source: str = "simulation"
    compact_limit_px: float = math.inf

    def true_area_px(
        self, apparent_area_px: F64, elongation: F64, moment_size_px2: F64, moment_aspect: F64
    ) -> F64:
        return np.asarray(apparent_area_px, dtype=np.float64)


def _subsampled_patch(
    inside: Callable[[F64, F64], NDArray[np.bool_]],
    angle: float,
    dr: float,
    dc: float,
    step: float,
    half: int,
) -> F64:
    """Fraction of each point of a ``step`` grid that is ``inside(u, v)``, 3 × 3 sub-samples per point.

    ``(u, v)`` are the object's own axes: the grid offset by ``(dc, dr)`` and turned by ``angle``.
    """
    n = 2 * half + 1
    sub = (np.arange(3) - 1) / 3.0
    t = np.arange(n) - half
    out = np.zeros((n, n))
    ca, sa = math.cos(angle), math.sin(angle)
    for oy in sub:
        y = ((t + oy) * step - dr)[:, None]
        for ox in sub:
            x = ((t + ox) * step - dc)[None, :]
            out += inside(x * ca + y * sa, -x * sa + y * ca)
    return out / 9.0


def _ellipse_patch(
    a_um: float, b_um: float, angle: float, dr: float, dc: float, step: float, half: int
) -> F64:
    """Indicator of an ellipse on a ``step`` grid, 3 × 3 sub-samples per grid point."""
    return _subsampled_patch(lambda u, v: (u / a_um) ** 2 + (v / b_um) ** 2 < 1.0, angle, dr, dc, step, half)


def _capsule_patch(
    width_um: float, length_um: float, angle: float, dr: float, dc: float, step: float, half: int
) -> F64:
    """Indicator of a capsule (a ``length_um`` bar with round caps) on a ``step`` grid, 3 × 3 sub-samples."""

    def inside(u: F64, v: F64) -> NDArray[np.bool_]:
        along = np.maximum(np.abs(u) - length_um / 2.0, 0.0)
        return along * along + v * v < (width_um / 2.0) ** 2

    return _subsampled_patch(inside, angle, dr, dc, step, half)


def _shapes() -> list[tuple[str, float, float, float]]:
    """The simulated objects: (kind, a, b, extent) in µm.

    Ellipses of semi-axes ``a × b`` (equivalent radius 0.25-6 µm, aspect
    1-8), and straight capsules (fibre pieces) of width ``b`` and straight
    length ``a`` (width 0.3-3 µm, length 2-32 widths, at most 40 µm).
    """
    out = []
    for aspect in _ASPECTS:
        for r_eq in _RADII_UM:
            a, b = r_eq * math.sqrt(aspect), r_eq / math.sqrt(aspect)
            out.append(("ellipse", a, b, a))
    for w in _FIBRE_WIDTHS_UM:
        for e in _FIBRE_ELONGATIONS:
            length = e * w
            if length <= _FIBRE_MAX_LENGTH_UM:
                out.append(("capsule", length, w, length / 2.0 + w / 2.0))
    return out


def _simulate(psf: PointSpreadFunction, pixel_size_um: float, settings: AxonSegmentationSettings) -> F64:
    """Measurements of the simulated objects.

    Rows (apparent area, elongation, moment size, moment aspect, true area, 1 for a capsule).
    """
    p = pixel_size_um
    step = p / _SUPERSAMPLE
    kernel = psf.kernel(step)
    k_half = kernel.shape[0] // 2
    measuring = _Measuring(moment_sigma_px=_moment_sigma_px(psf, p))
    out: list[tuple[float, float, float, float, float, float]] = []
    shapes = _shapes()
    for first in range(0, len(shapes), 20):
        patches: list[F64] = []
        truths: list[float] = []
        kinds: list[float] = []
        for kind, a, b, extent in shapes[first : first + 20]:
            for dr, dc, angle in _PHASES:
                # grid half-size: the object, the PSF, and a whole number of pixels
                px_half = math.ceil((extent + step * k_half) / p) + 3
                g_half = px_half * _SUPERSAMPLE + _SUPERSAMPLE // 2
                if kind == "ellipse":
                    fine = _ellipse_patch(a, b, angle, dr * p, dc * p, step, g_half)
                    truths.append(math.pi * a * b / (p * p))
                else:
                    fine = _capsule_patch(b, a, angle, dr * p, dc * p, step, g_half)
                    truths.append((a * b + math.pi * b * b / 4.0) / (p * p))
                kinds.append(float(kind == "capsule"))
                blurred = fftconvolve(fine, kernel, mode="same")
                patches.append(blurred[_SUPERSAMPLE // 2 :: _SUPERSAMPLE, _SUPERSAMPLE // 2 :: _SUPERSAMPLE])
        # a row of patches, each in its own cell, measured at once
        cell = max(q.shape[0] for q in patches) + 8
        canvas = np.zeros((cell, cell * len(patches)))
        centres = []
        for i, q in enumerate(patches):
            n = q.shape[0]
            r0, c0 = (cell - n) // 2, i * cell + (cell - n) // 2
            canvas[r0 : r0 + n, c0 : c0 + n] = q
            centres.append((r0 + n // 2, c0 + n // 2))
        seg = measure_objects(
            canvas * 1000.0,
            pixel_size_um=p,
            threshold_adu=_SIM_THRESHOLD,
            settings=_no_specks(settings),
            size_model=measuring,
        )
        got = seg.objects
        if len(got) == 0:
            continue
        for rc, truth, capsule in zip(np.asarray(centres, dtype=np.float64), truths, kinds, strict=True):
            in_cell = np.flatnonzero(np.abs(got.centroid_rc[:, 1] - rc[1]) < cell / 2)
            if len(in_cell) != 1:
                continue  # split or lost (far below the resolution): not a usable sample
            k = int(in_cell[0])
            out.append(
                (
                    float(got.apparent_area_px[k]),
                    float(got.elongation[k]),
                    float(got.moment_size_px2[k]),
                    float(got.moment_aspect[k]),
                    truth,
                    capsule,
                )
            )
    return np.asarray(out, dtype=np.float64).reshape(-1, 6)


def _moment_sigma_px(psf: PointSpreadFunction, pixel_size_um: float) -> float:
    # 1.5 Gaussian-equivalent σ of the PSF (from its FWHM), at least a pixel
    return max(1.0, 1.5 * psf.fwhm_um / (2.0 * math.sqrt(2.0 * math.log(2.0))) / pixel_size_um)


def _table(x: F64, y: F64, value: F64, x_grid: F64, y_grid: F64, *, outside: float | None = None) -> F64:
    """Scattered samples → regular grid.

    Linear inside their hull; outside it ``outside``, or (None) the nearest sample.
    """
    pts = np.column_stack([x, y])
    gx, gy = np.meshgrid(x_grid, y_grid, indexing="ij")
    grid = LinearNDInterpolator(pts, value)(gx, gy)
    beyond = ~np.isfinite(grid)
    if beyond.any():
        nearest = NearestNDInterpolator(pts, value)(gx[beyond], gy[beyond])
        if outside is not None:
            # below the simulated aspects (rounder than any sample) the nearest sample; beyond
            # the largest or longest samples, ``outside``
            rows = np.isfinite(grid)
            first = np.where(rows.any(axis=1), rows.argmax(axis=1), grid.shape[1])
            # only where round samples exist at that size (first valid aspect ≤ 1.3)
            first = np.where(y_grid[np.minimum(first, len(y_grid) - 1)] <= math.log(1.3), first, 0)
            rounder = np.arange(grid.shape[1])[None, :] < first[:, None]
            nearest = np.where(rounder[beyond], nearest, outside)
        grid[beyond] = nearest
    return np.asarray(grid, dtype=np.float64)


def _no_specks(settings: AxonSegmentationSettings) -> AxonSegmentationSettings:
    return AxonSegmentationSettings(
        background_scale_um=settings.background_scale_um,
        threshold_method="fixed",
        threshold_adu=_SIM_THRESHOLD,
        edge_fraction=None,
        plateau_radius_um=settings.plateau_radius_um,
        min_area_um2=0.0,
    )


def object_size_model(
    psf: PointSpreadFunction,
    *,
    pixel_size_um: float,
    settings: AxonSegmentationSettings | None = None,
) -> ObjectSizeModel:
    """Simulate objects of known size through ``psf`` and the segmentation (module docstring).

    Takes ≈ 0.3-1 s; build it once per PSF and pixel size (per scan and
    objective) and pass it to every :func:`~analysis.tile.segment_axons` call.

    Parameters
    ----------
    psf : PointSpreadFunction
        Effective PSF of the objective, measured at ``pixel_size_um``.
    pixel_size_um : float
        Pixel size of the tiles (µm).
    settings : AxonSegmentationSettings, optional
        The segmentation settings the tiles will be analysed with (the
        plateau radius and background scale enter the estimator).

    Raises
    ------
    PSFError
        If the PSF was measured at another pixel size, or the simulation
        gives too few usable objects.
    """
    settings = settings or AxonSegmentationSettings()
    psf.check_pixel_size(pixel_size_um)
    p = float(pixel_size_um)
    samples = _simulate(psf, p, settings)
    apparent, elongation, m_size, m_aspect, true, capsule = samples.T
    sigma_w = _moment_sigma_px(psf, p)
    limit = math.pi * (_COMPACT_RADIUS * sigma_w) ** 2
    ext = apparent >= 0.6 * limit
    cmp = (apparent <= 1.5 * limit) & np.isfinite(m_size) & (capsule == 0)
    if ext.sum() < 20 or cmp.sum() < 20:
        raise PSFError(
            f"the object-size simulation gave {len(samples)} usable objects "
            f"({int(ext.sum())} extended, {int(cmp.sum())} compact); is the PSF sane?"
        )
    return ObjectSizeModel(
        source=psf.source,
        pixel_size_um=p,
        psf_fwhm_um=psf.fwhm_um,
        moment_sigma_px=sigma_w,
        compact_limit_px=limit,
        extended=_table(
            np.log(apparent[ext]),
            np.log(elongation[ext]),
            np.log(true[ext] / apparent[ext]),
            _GRID_LOG_AREA,
            _GRID_LOG_ELONGATION,
            outside=0.0,
        ),
        compact=_table(
            np.log(m_size[cmp]),
            np.log(np.maximum(m_aspect[cmp], 1.0)),
            np.log(true[cmp]),
            _GRID_LOG_MOMENT,
            _GRID_LOG_ASPECT,
        ),
        size_offset_px=float(psf.size_offset_um2) / p**2,
    )


@dataclass(frozen=True)
class SizeStandardResult:
    """What :func:`measure_size_offset` found.

    Attributes
    ----------
    size_offset_um2 : float
        Median (measured − true) area over all beads of all diameters, the
        PSF's own offset left out (µm²): the offset to store with the PSF.
    n_beads : int
    excess_by_diameter_um2 : dict of float to float
        Median excess per bead diameter (µm → µm²): roughly constant for an
        offset-like deviation; 0 for a linear imaging system.
    """

    size_offset_um2: float
    n_beads: int
    excess_by_diameter_um2: dict[float, float]


def measure_size_offset(
    standards: Mapping[float, ArrayLike],
    *,
    psf: PointSpreadFunction,
    pixel_size_um: float,
    settings: AxonSegmentationSettings | None = None,
) -> SizeStandardResult:
    """Measure the area offset of the object-size model on beads of known diameter.

    Beads one to a few PSF widths across (size standards, e.g. 2, 3 and
    4 µm), imaged in focus, are segmented with the PSF's model (offset 0);
    the median excess of the measured over the true bead area is the offset
    a non-convolution image formation adds to every object (≈ 0 for a
    linear system).

    Parameters
    ----------
    standards : mapping of float to array
        Bead diameter (µm) → dark-corrected (and flat-fielded) images of
        such beads, (N, H, W) or (H, W).
    psf, pixel_size_um, settings
        As for :func:`object_size_model`.

    Raises
    ------
    PSFError
        If fewer than 5 beads of plausible size are found for a diameter.
    """
    settings = settings or AxonSegmentationSettings()
    model = object_size_model(psf.with_size_offset(0.0), pixel_size_um=pixel_size_um, settings=settings)
    excess: list[float] = []
    by_diameter: dict[float, float] = {}
    for diameter, images in standards.items():
        stack = np.asarray(images, dtype=np.float32)
        if stack.ndim == 2:
            stack = stack[None]
        true_um2 = math.pi * (float(diameter) / 2.0) ** 2
        measured: list[float] = []
        for image in stack:
            seg = segment_axons(image, pixel_size_um=pixel_size_um, settings=settings, size_model=model)
            area = seg.objects.target_area_px * pixel_size_um**2
            plausible = (area > 0.4 * true_um2) & (area < 2.5 * true_um2) & (seg.objects.aspect < 1.5)
            measured.extend(area[plausible].tolist())
        if len(measured) < 5:
            raise PSFError(
                f"found {len(measured)} beads of about {diameter:g} µm: image a size-standard "
                "bead slide in focus"
            )
        e = np.asarray(measured) - true_um2
        by_diameter[float(diameter)] = float(np.median(e))
        excess.extend(e.tolist())
    if not excess:
        raise PSFError("no size standards given")
    return SizeStandardResult(
        size_offset_um2=float(np.median(excess)), n_beads=len(excess), excess_by_diameter_um2=by_diameter
    )
