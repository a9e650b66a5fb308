"""The point-spread function (PSF) of a rig, measured from beads.

What is measured
----------------
A camera pixel integrates the optical PSF over its own area, so what bead
images show, and what object sizes depend on, is the *effective* PSF: the
optical PSF convolved with the pixel box, sampled at pixel centres.
:class:`PointSpreadFunction` holds it as a radial profile (value against
distance from the point's true position, 1 at the centre) for one
objective and pixel size, plus its Gaussian-equivalent width and how it was
obtained. Nothing assumes a Gaussian: an Airy pattern's ring or a Moffat
profile's long tail is kept as measured, and the object-size model
(:mod:`analysis.object_size`) convolves with the profile itself.

From beads (:func:`measure_psf_from_beads`)
-------------------------------------------
Sub-resolution fluorescent beads (0.1-0.2 µm) on glass, imaged in a small
z-stack at the objective of the scan:

1. Background per plane: the median (beads cover a tiny fraction of the
   frame); noise σ from adjacent-pixel differences (as the tile analysis,
   the median interpolated within integer bins for 8-bit cameras).
2. Beads: local maxima of the maximum projection (found after a 1-pixel
   Gaussian smoothing, so noise on a bead's shoulders makes no maximum) more
   than ``min_snr`` noise σ above the background, with no other maximum
   within ``isolation_um`` and not closer than that to the frame's edge.
3. Per bead, the plane where its brightest pixel of 3 × 3 is brightest
   (best focus: a bead near the resolution keeps nearly all its light
   within 3 × 3 pixels over a micrometre of defocus, so their mean hardly
   tells the planes apart, while its peak falls as it blurs), and
   there a least-squares fit of a 2-D Gaussian plus constant to a
   ``(2R+1)²`` patch: sub-pixel centre, amplitude and width. Spots whose fit
   fails, narrower than a pixel's own box (hot pixels), fainter than
   ``min_snr``, or whose width is an outlier (beyond 3 robust σ of the
   median: doublets, dirt) are dropped.
4. The profile: every patch pixel gives one sample, distance from its bead's
   fitted centre against value over that bead's amplitude; the samples of
   all beads (at random sub-pixel positions, so the profile is sampled far
   finer than a pixel) are binned every quarter pixel, the median of each
   bin taken, and the profile scaled to 1 at the centre. The Gaussian width
   is the median of the beads' fitted widths.

Limits: beads are taken as points (a 0.2 µm bead widens a 0.4 µm σ by
≈ 0.5 %); the profile is circularly averaged (astigmatism is averaged out);
it holds for the focus the beads were imaged at (tiles are imaged in focus
through the focus map). The PSF of one objective does not apply to another
or to another binning (:meth:`PointSpreadFunction.check_pixel_size`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from scipy.optimize import least_squares
from scipy.special import erf

__all__ = [
    "BeadFit",
    "PSFError",
    "PointSpreadFunction",
    "gaussian_psf",
    "measure_psf_from_beads",
    "pixel_psf",
    "read_psf",
    "write_psf",
]

F64 = NDArray[np.float64]

PSF_FORMAT = "cordscope-psf"
PSF_FORMAT_VERSION = 1


class PSFError(ValueError):
    """The PSF could not be measured or does not fit the images (the message says why)."""


@dataclass(frozen=True, eq=False)
class PointSpreadFunction:
    """Effective PSF (optics × pixel) of one objective, as a radial profile.

    Attributes
    ----------
    radius_um : (k,) float64
        Distances from the point's position (µm), ascending, from 0.
    profile : (k,) float64
        Effective PSF at those distances, 1 at the centre, ≥ 0.
    pixel_size_um : float
        Pixel size the PSF was measured at (its pixel box is in the profile).
    sigma_um : float
        Gaussian-equivalent σ of the effective PSF (µm).
    source : str
        ``"beads"`` (measured), ``"gaussian"`` (given width), ``"pixel"``
        (a perfect lens: the pixel alone).
    n_beads : int
        Beads the profile was averaged over (0 unless measured).
    objective : str
        Objective (preset name) it belongs to, if known.
    created : str
        ISO date and time it was made.
    size_offset_um2 : float
        Area (µm²) the object-size model subtracts from every object: 0 for
        an ideal linear imaging system; measured with beads of known size
        where the image formation is not a plain convolution.
    """

    radius_um: F64
    profile: F64
    pixel_size_um: float
    sigma_um: float
    source: str
    n_beads: int = 0
    objective: str = ""
    created: str = ""
    size_offset_um2: float = 0.0

    def __post_init__(self) -> None:
        r = np.asarray(self.radius_um, dtype=np.float64)
        v = np.asarray(self.profile, dtype=np.float64)
        if r.ndim != 1 or r.shape != v.shape or len(r) < 2:
            raise PSFError(
                f"PSF radius and profile must be 1-D of the same length ≥ 2, got {r.shape}, {v.shape}"
            )
        if r[0] != 0.0 or np.any(np.diff(r) <= 0):
            raise PSFError("PSF radii must start at 0 and increase")
        if not np.all(np.isfinite(v)) or v[0] <= 0:
            raise PSFError("PSF profile must be finite and positive at the centre")
        if not (math.isfinite(self.pixel_size_um) and self.pixel_size_um > 0):
            raise PSFError(f"pixel_size_um must be positive, got {self.pixel_size_um}")

    @property
    def fwhm_um(self) -> float:
        """Full width at half maximum of the effective PSF (µm), from the profile."""
        v = self.profile / self.profile[0]
        below = np.flatnonzero(v <= 0.5)
        if len(below) == 0:
            return 2.0 * float(self.radius_um[-1])
        i = int(below[0])
        r0, r1, v0, v1 = self.radius_um[i - 1], self.radius_um[i], v[i - 1], v[i]
        return 2.0 * float(r0 + (v0 - 0.5) / (v0 - v1) * (r1 - r0))

    def kernel(self, step_um: float) -> F64:
        """The effective PSF sampled on a square grid of ``step_um``, normalised to sum 1.

        Parameters
        ----------
        step_um : float
            Grid step (µm), e.g. a third of a pixel.

        Returns
        -------
        (2m+1, 2m+1) float64
            Centred on the middle sample; it reaches the profile's last radius.
        """
        m = max(1, math.ceil(float(self.radius_um[-1]) / step_um))
        y, x = np.mgrid[-m : m + 1, -m : m + 1] * step_um
        k = np.interp(np.hypot(x, y), self.radius_um, np.clip(self.profile, 0.0, None), right=0.0)
        return k / k.sum()

    def check_pixel_size(self, pixel_size_um: float, *, rtol: float = 0.02) -> None:
        """Raise :class:`PSFError` if the PSF was measured at another pixel size (objective, binning)."""
        if not math.isclose(pixel_size_um, self.pixel_size_um, rel_tol=rtol):
            raise PSFError(
                f"the PSF was measured at {self.pixel_size_um:g} µm pixels "
                f"({self.objective or 'another objective'}), the images have {pixel_size_um:g} µm: "
                "image beads with the scan's objective and binning"
            )

    def with_size_offset(self, size_offset_um2: float) -> PointSpreadFunction:
        """A copy with another size offset (see :func:`analysis.object_size.measure_size_offset`)."""
        return PointSpreadFunction(
            self.radius_um,
            self.profile,
            self.pixel_size_um,
            self.sigma_um,
            self.source,
            self.n_beads,
            self.objective,
            self.created,
            float(size_offset_um2),
        )

    def summary(self) -> dict[str, object]:
        """The scalar attributes, JSON-ready (for logs, ``cordscope info`` and file attributes)."""
        return {
            "source": self.source,
            "objective": self.objective,
            "pixel_size_um": self.pixel_size_um,
            "sigma_um": round(self.sigma_um, 4),
            "fwhm_um": round(self.fwhm_um, 4),
            "n_beads": self.n_beads,
            "size_offset_um2": round(self.size_offset_um2, 4),
            "created": self.created,
        }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _box_gaussian_profile(sigma_um: float, pixel_size_um: float) -> tuple[F64, F64]:
    """Radial profile of a Gaussian of ``sigma_um`` integrated over a square pixel (circular mean)."""
    p = pixel_size_um
    s = max(sigma_um, 1e-3 * p)
    reach = 4.0 * math.sqrt(s * s + p * p / 12.0) + p
    step = max(min(p, s), p / 4.0) / 12.0  # a σ far below the pixel: the box sets the scale
    n = math.ceil(reach / step)
    t = np.arange(-n, n + 1) * step
    g = 0.5 * (erf((t + p / 2) / (s * math.sqrt(2))) - erf((t - p / 2) / (s * math.sqrt(2))))
    image = np.outer(g, g)
    r = np.hypot(*np.meshgrid(t, t))
    edges = np.arange(0.0, reach + step, step * 2)
    which = np.digitize(r.ravel(), edges) - 1
    ok = which < len(edges) - 1
    sums = np.bincount(which[ok], weights=image.ravel()[ok], minlength=len(edges) - 1)
    counts = np.bincount(which[ok], minlength=len(edges) - 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    prof = sums / np.maximum(counts, 1)
    radius = np.concatenate([[0.0], centres])
    profile = np.concatenate([[image[n, n]], prof])
    return radius, profile / profile[0]


def gaussian_psf(
    sigma_um: float, *, pixel_size_um: float, objective: str = "", source: str = "gaussian"
) -> PointSpreadFunction:
    """The effective PSF of a Gaussian optical PSF of width ``sigma_um`` seen by square pixels.

    Parameters
    ----------
    sigma_um : float
        σ of the optical PSF (µm), ≥ 0 (0: the pixel alone).
    pixel_size_um : float
        Pixel size on the specimen (µm).
    objective : str, optional
    source : str
        Recorded as the PSF's source.
    """
    if not (math.isfinite(sigma_um) and sigma_um >= 0):
        raise PSFError(f"sigma_um must be a number ≥ 0, got {sigma_um}")
    if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise PSFError(f"pixel_size_um must be positive, got {pixel_size_um}")
    radius, profile = _box_gaussian_profile(sigma_um, pixel_size_um)
    eff = math.sqrt(sigma_um**2 + pixel_size_um**2 / 12.0)
    return PointSpreadFunction(
        radius, profile, float(pixel_size_um), eff, source, objective=objective, created=_now()
    )


def pixel_psf(pixel_size_um: float, *, objective: str = "") -> PointSpreadFunction:
    """A perfect lens: the pixel box alone (what is assumed when no PSF was measured)."""
    return gaussian_psf(0.0, pixel_size_um=pixel_size_um, objective=objective, source="pixel")


# ------------------------------------------------------------------- beads


@dataclass(frozen=True, eq=False)
class BeadFit:
    """Per-bead results of :func:`measure_psf_from_beads`.

    Attributes
    ----------
    centre_rc : (n, 2) float64
        Fitted centres (row, col) in pixels of the frame.
    z_index : (n,) int64
        Plane of best focus.
    amplitude : (n,) float64
        Fitted peak above background (ADU).
    sigma_um : (n,) float64
        Fitted Gaussian σ of the effective PSF (µm).
    used : (n,) bool
        Whether the bead entered the profile (not an outlier).
    """

    centre_rc: F64
    z_index: NDArray[np.int64]
    amplitude: F64
    sigma_um: F64
    used: NDArray[np.bool_]


def _robust_sigma(values: F64) -> float:
    """1.4826 × the median absolute deviation, the median interpolated within unit bins.

    Integer camera data (an 8-bit camera's noise is a fraction of an ADU)
    would otherwise give a MAD of exactly 0 or 1.
    """
    d = np.abs(values - np.median(values)).ravel()
    if np.allclose(d, np.rint(d)):
        counts = np.bincount(np.rint(d).astype(np.int64))
        half = 0.5 * d.size
        cum = np.cumsum(counts)
        k = int(np.searchsorted(cum, half))
        below = float(cum[k - 1]) if k > 0 else 0.0
        lower, width = (k - 0.5, 1.0) if k > 0 else (0.0, 0.5)
        return 1.4826 * (lower + (half - below) / float(counts[k]) * width)
    return 1.4826 * float(np.median(d))


def _noise_sigma(plane: F64) -> float:
    d = np.diff(plane[:, : plane.shape[1] - plane.shape[1] % 2], axis=1)[:, ::2]
    return max(_robust_sigma(d) / math.sqrt(2.0), 1e-6)


def _fit_gaussian(patch: F64, p0: tuple[float, float, float, float, float]) -> F64 | None:
    n = patch.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)

    def residual(q: F64) -> F64:
        amp, r0, c0, s, bg = q
        return (bg + amp * np.exp(-((yy - r0) ** 2 + (xx - c0) ** 2) / (2.0 * s * s)) - patch).ravel()

    lo = [0.0, 0.0, 0.0, 0.2, -np.inf]
    hi = [np.inf, n - 1.0, n - 1.0, n / 2.0, np.inf]
    try:
        res = least_squares(residual, np.asarray(p0, dtype=np.float64), bounds=(lo, hi), x_scale="jac")
    except ValueError:
        return None
    if not res.success:
        return None
    return np.asarray(res.x, dtype=np.float64)


def measure_psf_from_beads(
    images: ArrayLike,
    *,
    pixel_size_um: float,
    dark_offset_adu: float,
    objective: str = "",
    isolation_um: float = 5.0,
    min_snr: float = 10.0,
    min_beads: int = 5,
) -> tuple[PointSpreadFunction, BeadFit]:
    """Measure the effective PSF from images of sub-resolution beads (method in the module docstring).

    Parameters
    ----------
    images : (Z, H, W) or (H, W) array
        Raw bead images (ADU), a z-stack through focus or one in-focus plane.
    pixel_size_um : float
        Pixel size (µm) of the images.
    dark_offset_adu : float
        Camera offset (ADU), subtracted first.
    objective : str, optional
        Recorded with the PSF.
    isolation_um : float
        No other bead within this distance (µm); also the patch half-width.
    min_snr : float
        A bead's peak must exceed the background by this many noise σ.
    min_beads : int
        Fewer usable beads raise :class:`PSFError`.

    Returns
    -------
    (PointSpreadFunction, BeadFit)

    Raises
    ------
    PSFError
        If the images are not 2-D/3-D or fewer than ``min_beads`` isolated
        beads could be fitted.
    """
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or min(stack.shape[1:]) < 8:
        raise PSFError(f"bead images must be (Z, H, W) or (H, W), got shape {np.shape(images)}")
    p = float(pixel_size_um)
    stack = stack - float(dark_offset_adu)
    stack = stack - np.median(stack, axis=(1, 2), keepdims=True)
    sigma_noise = min(_noise_sigma(plane) for plane in stack)
    # the maximum over planes of noise sits above each plane's median (about +1.2 σ for 5
    # planes): measured from its own median, or every noise maximum of a stack looks like a bead
    top = stack.max(axis=0)
    top = top - np.median(top)
    half = max(3, math.ceil(isolation_um / p))
    # maxima of the lightly smoothed projection: noise on a bead's shoulders makes no maximum
    smooth_top = ndi.gaussian_filter(top, 1.0)
    # measured, not derived from the pixel noise: fixed-pattern offsets do not average away
    sigma_smooth = max(_robust_sigma(smooth_top), 1e-6)
    local_max = smooth_top == ndi.maximum_filter(smooth_top, size=3)
    peaks = local_max & (top > min_snr * sigma_noise)
    r, c = np.nonzero(peaks)
    h, w = top.shape
    inside = (r >= half) & (r < h - half) & (c >= half) & (c < w - half)
    # isolation: every maximum 5 σ above the smoothed image's own noise counts (a faint neighbour too)
    br, bc = np.nonzero(local_max & (smooth_top > 5.0 * sigma_smooth))
    isolated = np.ones(len(r), dtype=bool)
    for i, (ri, ci) in enumerate(zip(r, c, strict=True)):
        d2 = (br - ri) ** 2 + (bc - ci) ** 2
        isolated[i] = np.count_nonzero(d2 * p * p < isolation_um**2) == 1
    r, c = r[inside & isolated], c[inside & isolated]
    if len(r) < min_beads:
        raise PSFError(
            f"found {len(r)} isolated beads ({min_beads} needed) at ≥ {min_snr:g} noise σ: image "
            "a bead slide in focus, with beads sparse enough to be ≥ "
            f"{isolation_um:g} µm apart"
        )
    peak3 = ndi.maximum_filter(stack, size=(1, 3, 3))
    fits: list[F64] = []
    zs: list[int] = []
    patches: list[F64] = []
    corners: list[tuple[int, int]] = []  # patch origin of each fitted bead
    for ri, ci in zip(r, c, strict=True):
        z = int(np.argmax(peak3[:, ri, ci]))
        patch = stack[z, ri - half : ri + half + 1, ci - half : ci + half + 1]
        q = _fit_gaussian(patch, (float(patch[half, half]), half, half, 1.0, 0.0))
        if q is None:
            continue
        fits.append(q + np.array([0.0, ri - half, ci - half, 0.0, 0.0]))
        zs.append(z)
        patches.append(patch - q[4])
        corners.append((ri - half, ci - half))
    if len(fits) < min_beads:
        raise PSFError(f"only {len(fits)} bead fits converged ({min_beads} needed)")
    q_all = np.array(fits)
    s_px = q_all[:, 3]
    # a hot pixel or a cosmic fits narrower than a pixel's own box (σ 1/√12 px) can look
    plausible = (s_px > 0.35) & (q_all[:, 0] > min_snr * sigma_noise)
    if plausible.sum() < min_beads:
        raise PSFError(
            f"only {int(plausible.sum())} bead-like spots ({min_beads} needed): the others are "
            "narrower than a pixel (hot pixels) or faint; image the beads with more light"
        )
    med = float(np.median(s_px[plausible]))
    spread = 1.4826 * float(np.median(np.abs(s_px[plausible] - med)))
    used = plausible & (np.abs(s_px - med) <= 3.0 * max(spread, 0.02 * med))
    if used.sum() < min_beads:
        raise PSFError(f"only {int(used.sum())} beads agree on the PSF width ({min_beads} needed)")
    n = 2 * half + 1
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    dist: list[F64] = []
    vals: list[F64] = []
    for k in np.flatnonzero(used):
        amp, r0, c0 = q_all[k, 0], q_all[k, 1] - corners[k][0], q_all[k, 2] - corners[k][1]
        dist.append(np.hypot(yy - r0, xx - c0).ravel() * p)
        vals.append(patches[k].ravel() / amp)
    d = np.concatenate(dist)
    v = np.concatenate(vals)
    step = p / 4.0
    edges = np.arange(0.0, half * p + step, step)
    which = np.digitize(d, edges) - 1
    centres: list[float] = []
    values: list[float] = []
    for b in range(len(edges) - 1):
        sel = v[which == b]
        if len(sel) >= 3:
            centres.append(0.5 * (edges[b] + edges[b + 1]))
            values.append(float(np.median(sel)))
    if len(values) < 2 or values[0] <= 0:
        raise PSFError("the bead profile could not be sampled: too few pixels near the bead centres")
    # the innermost bin (a quarter pixel) stands for the centre
    radius = np.concatenate([[0.0], centres])
    prof = np.clip(np.concatenate([[values[0]], values]), 0.0, None)
    prof = prof / prof[0]
    psf = PointSpreadFunction(
        radius,
        prof,
        p,
        float(np.median(s_px[used])) * p,
        "beads",
        n_beads=int(used.sum()),
        objective=objective,
        created=_now(),
    )
    beads = BeadFit(
        centre_rc=q_all[:, 1:3].copy(),
        z_index=np.asarray(zs, dtype=np.int64),
        amplitude=q_all[:, 0].copy(),
        sigma_um=s_px * p,
        used=used,
    )
    return psf, beads


# -------------------------------------------------------------------- HDF5


def write_psf(group: h5py.Group, psf: PointSpreadFunction) -> None:
    """Write a PSF into an (empty or replaceable) HDF5 group: profile datasets + scalar attributes."""
    for name in ("radius_um", "profile"):
        if name in group:
            del group[name]
    group.create_dataset("radius_um", data=np.asarray(psf.radius_um, dtype=np.float64))
    group.create_dataset("profile", data=np.asarray(psf.profile, dtype=np.float64))
    group.attrs["format"] = PSF_FORMAT
    group.attrs["format_version"] = PSF_FORMAT_VERSION
    group.attrs["description"] = (
        "effective point-spread function (optics x pixel) as a radial profile: profile (1 at the "
        "centre) at radius_um from the point; see the summary attribute for its width and source"
    )
    group.attrs["summary_json"] = json.dumps(psf.summary(), sort_keys=True)


def read_psf(group: h5py.Group) -> PointSpreadFunction:
    """Read a PSF written by :func:`write_psf`.

    Raises
    ------
    PSFError
        If the group holds no PSF of a known format version.
    """
    if group.attrs.get("format") != PSF_FORMAT:
        raise PSFError(f"{group.name}: not a CordScope PSF group")
    version = int(group.attrs.get("format_version", 0))
    if version > PSF_FORMAT_VERSION:
        raise PSFError(f"{group.name}: PSF format version {version} is newer than this CordScope reads")
    s = json.loads(str(group.attrs["summary_json"]))
    return PointSpreadFunction(
        np.asarray(group["radius_um"][()], dtype=np.float64),
        np.asarray(group["profile"][()], dtype=np.float64),
        float(s["pixel_size_um"]),
        float(s["sigma_um"]),
        str(s["source"]),
        int(s["n_beads"]),
        str(s["objective"]),
        str(s["created"]),
        float(s["size_offset_um2"]),
    )
