"""Model B optics: objectives, point-spread function and pixel responses.

The PSF of an objective of numerical aperture ``NA`` at emission wavelength
``λ`` and defocus ``dz`` is the Born–Wolf in-focus Airy pattern (averaged
over the emission band: ``λ·(0.92, 1, 1.08)``) convolved with the geometric
defocus disc of radius ``|dz|·tan(asin NA)`` (dry objective, no aberrations).
It is computed through its optical transfer function (Airy: the "Chinese
hat"; disc: ``2 J1(x)/x``) and its encircled energy ``EE(r) = 2πr ∫ OTF(f)
J1(2πfr) df``. For rendering, each PSF is replaced by the two-Gaussian
mixture ``Σ w_k N(0, σ_k² I)`` whose encircled energy fits ``EE`` best (least
squares, ``r`` up to where ``EE`` reaches 99 %), tabulated over defocus and
interpolated linearly. A Gaussian is separable and has closed-form pixel
integrals, which makes rendering exact for the mixture.

Image brightness per camera pixel follows the epi-fluorescence law
``∝ NA⁴ / M²`` (relative to the 10x/0.30 objective).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares
from scipy.special import chndtr, j1

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

SENSOR_PIXEL_UM = 4.54
"""Physical pixel of model B's camera (µm); image pixel = this / magnification."""

OBJECTIVE_NA: Mapping[str, tuple[float, float]] = {
    "4x": (4.0, 0.13),
    "10x": (10.0, 0.30),
    "20x": (20.0, 0.50),
}
"""Objective label → (magnification, numerical aperture) of model B's dry objectives."""

REFERENCE_NA = 0.30
"""Numerical aperture at which photon rates are specified (the 10x objective)."""

REFERENCE_PIXEL_UM = SENSOR_PIXEL_UM / 10.0
"""Image pixel of the 10x objective (µm): truth tables quote rates per such pixel."""

EMISSION_UM: Mapping[str, float] = {"DAPI": 0.461, "tdTomato": 0.581}
"""Centre emission wavelength (µm) per channel."""

BAND_FACTORS = (0.92, 1.0, 1.08)
"""Wavelength factors averaged over (a broad emission band has no sharp rings)."""

N_COMPONENTS = 2
"""Gaussians per PSF mixture."""

DEFOCUS_GRID_UM: F64 = np.unique(
    np.concatenate([np.arange(0.0, 6.0, 0.25), np.arange(6.0, 20.0, 0.5), np.arange(20.0, 60.01, 2.0)])
)
"""Defocus values (µm) at which the PSF mixture is fitted; beyond the last, the last is used."""


def numerical_aperture_for(magnification: float) -> float:
    """Numerical aperture of model B's objective of a magnification.

    The table's objectives give their own NA; other magnifications are
    interpolated log-linearly (and extrapolated, within 0.05–0.95).
    """
    mags = np.log([m for m, _ in OBJECTIVE_NA.values()])
    nas = np.log([na for _, na in OBJECTIVE_NA.values()])
    x = math.log(max(float(magnification), 1e-3))
    slope = np.polyfit(mags, nas, 1)
    if mags[0] <= x <= mags[-1]:
        return float(np.exp(np.interp(x, mags, nas)))
    return float(np.clip(np.exp(np.polyval(slope, x)), 0.05, 0.95))


def brightness_factor(numerical_aperture: float) -> float:
    """Per-pixel brightness relative to the 10x/0.30 objective (``(NA/0.30)⁴``).

    With the image pixel ``p = SENSOR_PIXEL_UM / M``, a rate density (photons
    / ms / µm² at the reference) times ``p²`` times this factor is the
    ``NA⁴ / M²`` law of epi-fluorescence image brightness.
    """
    return (float(numerical_aperture) / REFERENCE_NA) ** 4


def defocus_disc_radius_um(defocus_um: float | F64, numerical_aperture: float) -> F64:
    """Radius (µm) of the geometric blur disc at a defocus, dry objective."""
    na = float(numerical_aperture)
    return np.abs(np.asarray(defocus_um, dtype=np.float64)) * (na / math.sqrt(1.0 - na * na))


# ----------------------------------------------------------------- PSF fits


def encircled_energy(r_um: F64, numerical_aperture: float, wavelength_um: float, defocus_um: float) -> F64:
    """Fraction of the PSF's energy within radius ``r_um`` (the physical model).

    Parameters
    ----------
    r_um : (N,) float array
        Radii (µm).
    numerical_aperture, wavelength_um : float
        Objective NA and centre emission wavelength (µm).
    defocus_um : float
        Defocus (µm).

    Returns
    -------
    (N,) float array
    """
    na = float(numerical_aperture)
    lam = np.asarray(BAND_FACTORS) * float(wavelength_um)
    fc_max = 2.0 * na / float(lam.min())
    rho = float(defocus_disc_radius_um(defocus_um, na))
    r = np.asarray(r_um, dtype=np.float64)
    # the disc's OTF oscillates with period 1/rho: sample it finely enough
    n_f = int(max(600, 12 * fc_max * (rho + r.max())))
    f = np.linspace(0.0, fc_max, n_f)
    otf = np.zeros(n_f)
    for lam_k in lam:
        x = np.clip(f / (2.0 * na / lam_k), 0.0, 1.0)
        otf += (2.0 / np.pi) * (np.arccos(x) - x * np.sqrt(1.0 - x * x))
    otf /= len(lam)
    if rho > 0.0:
        arg = 2.0 * np.pi * rho * f
        with np.errstate(invalid="ignore", divide="ignore"):
            disc = np.where(arg > 1e-8, 2.0 * j1(arg) / arg, 1.0)
        otf *= disc
    w = np.full(n_f, f[1] - f[0])
    w[0] *= 0.5
    w[-1] *= 0.5
    kernel = j1(2.0 * np.pi * np.outer(r, f))
    return np.asarray(2.0 * np.pi * r * (kernel @ (otf * w)), dtype=np.float64)


def _mixture_ee(params: F64, r: F64) -> F64:
    w2, s1, s2 = params
    return np.asarray(
        (1.0 - w2) * (1.0 - np.exp(-0.5 * (r / s1) ** 2)) + w2 * (1.0 - np.exp(-0.5 * (r / s2) ** 2)),
        dtype=np.float64,
    )


@dataclass(frozen=True)
class PsfTable:
    """Two-Gaussian fits of one objective's PSF over defocus.

    Attributes
    ----------
    numerical_aperture, wavelength_um : float
    defocus_um : (D,) float array
        Defocus grid (µm, ascending from 0).
    weight : (D, K) float array
        Mixture weights (rows sum to 1).
    sigma_um : (D, K) float array
        Standard deviation of each Gaussian (µm), ascending within a row.
    rms_error : (D,) float array
        RMS error of the fitted encircled energy (fraction of the energy).
    """

    numerical_aperture: float
    wavelength_um: float
    defocus_um: F64
    weight: F64
    sigma_um: F64
    rms_error: F64

    def at(self, defocus_um: F64) -> tuple[F64, F64]:
        """Mixture weights and sigmas (µm) at defocus values, each (N, K)."""
        d = np.abs(np.asarray(defocus_um, dtype=np.float64))
        grid = self.defocus_um
        k = np.clip(np.searchsorted(grid, d, side="right") - 1, 0, len(grid) - 2)
        t = np.clip((d - grid[k]) / (grid[k + 1] - grid[k]), 0.0, 1.0)[:, None]
        w = self.weight[k] + t * (self.weight[k + 1] - self.weight[k])
        s = self.sigma_um[k] + t * (self.sigma_um[k + 1] - self.sigma_um[k])
        return w, s

    def fwhm_um(self, defocus_um: float = 0.0) -> float:
        """Full width at half maximum (µm) of the fitted PSF's radial profile."""
        w, s = self.at(np.array([defocus_um]))
        r = np.linspace(0.0, 6.0 * float(s.max()), 6001)
        prof = (w[0][None, :] / s[0][None, :] ** 2 * np.exp(-0.5 * (r[:, None] / s[0][None, :]) ** 2)).sum(1)
        half = prof[0] / 2.0
        i = int(np.argmax(prof < half))
        return float(2.0 * (r[i - 1] + (r[i] - r[i - 1]) * (prof[i - 1] - half) / (prof[i - 1] - prof[i])))


@functools.lru_cache(maxsize=16)
def psf_table(numerical_aperture: float, wavelength_um: float) -> PsfTable:
    """Fit the PSF mixture over :data:`DEFOCUS_GRID_UM` (cached per NA and wavelength)."""
    na = float(numerical_aperture)
    lam = float(wavelength_um)
    scale_um = lam / na  # the diffraction length
    grid = DEFOCUS_GRID_UM
    weight = np.zeros((len(grid), N_COMPONENTS))
    sigma = np.zeros((len(grid), N_COMPONENTS))
    err = np.zeros(len(grid))
    params = np.array([0.1, 0.21 * scale_um, 0.6 * scale_um])
    for i, dz in enumerate(grid):
        rho = float(defocus_disc_radius_um(dz, na))
        # fit the core and the first rings (where the PSF's energy is);
        # the Airy pattern's far 1/r³ tail is left out
        r = np.linspace(0.0, 1.3 * rho + 2.0 * scale_um, 100)[1:]
        target = encircled_energy(r, na, lam, float(dz))
        s_hi = rho + 1.2 * scale_um
        lo = np.array([0.0, 0.1 * scale_um, 0.1 * scale_um])
        hi = np.array([0.7, s_hi, s_hi])
        start = np.clip(params, lo + 1e-9, hi - 1e-9)
        fit = least_squares(
            lambda q, rr=r, tt=target: _mixture_ee(q, rr) - tt, start, bounds=(lo, hi), method="trf"
        )
        params = fit.x
        order = np.argsort(params[1:])
        weight[i] = np.array([1.0 - params[0], params[0]])[order]
        sigma[i] = params[1:][order]
        err[i] = float(np.sqrt(np.mean(fit.fun**2)))
    return PsfTable(na, lam, grid.copy(), weight, sigma, err)


# ------------------------------------------------- pixel-integrated responses

_TAB_T = 256.0  # Ψ is tabulated on [−T, T]: beyond every span a stamp covers
_TAB_STEP = 1.0 / 128.0
_TAB_SCALE = np.float32(1.0 / _TAB_STEP)
_TAB_OFFSET = np.float32(_TAB_T / _TAB_STEP)


def _tables() -> tuple[F32, F32, F32, F32]:
    from scipy.special import ndtr

    t = np.arange(-_TAB_T, _TAB_T + 2 * _TAB_STEP, _TAB_STEP)
    cdf = ndtr(t)
    psi_t = t * cdf + np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    d_psi = np.append(np.diff(psi_t), 0.0)
    d_cdf = np.append(np.diff(cdf), 0.0)
    return (
        psi_t.astype(np.float32),
        d_psi.astype(np.float32),
        cdf.astype(np.float32),
        d_cdf.astype(np.float32),
    )


_PSI, _PSI_SLOPE, _CDF, _CDF_SLOPE = _tables()


def _lookup(u: F32, table: F32, slope: F32) -> F32:
    """Linear interpolation in a table, ``u`` in table steps from its start (overwritten)."""
    np.clip(u, np.float32(0.0), np.float32(len(table) - 2), out=u)
    whole = np.floor(u)
    idx = whole.astype(np.intp)
    u -= whole
    out = np.take(slope, idx)
    out *= u
    out += np.take(table, idx)
    return out


def psi(t: F32) -> F32:
    """``Ψ(t) = t·Φ(t) + φ(t)``, the antiderivative of the normal CDF (float32).

    Tabulated on ``[−256, 256]`` with linear interpolation (error < 1e-6);
    ``t`` is overwritten.
    """
    t *= _TAB_SCALE
    t += _TAB_OFFSET
    return _lookup(t, _PSI, _PSI_SLOPE)


def interval_response(edges_px: F64, sigma_px: F64, first_px: NDArray[np.int64], n_points: int) -> F32:
    """Pixel-integrated Gaussian responses of half-lines on the pixel lattice.

    For edges ``e`` (pixel-lattice units: pixel ``m`` spans ``[m − ½, m +
    ½]``) returns ``A[..., i] = Ψ((m_i + ½ − e)/s) − Ψ((m_i − ½ − e)/s)``,
    ``m_i = first + i``: the half-line ``x > e`` blurred by a Gaussian of
    sigma ``s`` and integrated over pixel ``m_i``, in units of ``1/s``. The
    response of an interval ``[a, b)`` is ``s·(A(a) − A(b))``.

    Parameters
    ----------
    edges_px : (N, E) float array
        Edge positions (pixel-lattice units).
    sigma_px : (N,) float array
        Gaussian sigma (pixels), one per row.
    first_px : (N,) int array
        Pixel index of the first point, one per row.
    n_points : int
        Points per row.

    Returns
    -------
    (N, E, n_points) float32 array
    """
    inv = (1.0 / np.asarray(sigma_px, dtype=np.float64)).astype(np.float32)[:, None, None]
    start = (np.asarray(first_px, dtype=np.float64)[:, None] - 0.5 - edges_px).astype(np.float32)[:, :, None]
    m = np.arange(n_points + 1, dtype=np.float32)[None, None, :]
    t = start + m
    t *= inv
    b = psi(t)
    return np.asarray(b[..., 1:] - b[..., :-1], dtype=np.float32)


# ------------------------------------------------------------ nuclei discs


@dataclass(frozen=True)
class DiscTable:
    """Blurred, pixel-integrated disc profiles for nuclei, per PSF component.

    ``profile[k, i, j, n]`` is component ``k``'s share (its mixture weight
    included) of the fraction of a pixel covered by a disc of radius
    ``radius_um[i]`` seen through the PSF at defocus ``defocus_um[j]``, at
    ``r = n · r_max_um[k, i, j] / (N − 1)`` from its centre.
    """

    radius_um: F64
    defocus_um: F64
    r_max_um: F64
    profile: F32


NUCLEUS_RADII_UM: F64 = np.round(np.arange(2.5, 5.51, 0.25), 2)
"""Equivalent radii (µm) nuclei are drawn from (the disc table's rows)."""

_DISC_SAMPLES = 96
STAMP_SIGMAS_NUCLEI = 3.0
"""Nucleus stamps reach this many sigmas of each component beyond the disc."""


@functools.lru_cache(maxsize=16)
def disc_table(numerical_aperture: float, wavelength_um: float, pixel_size_um: float) -> DiscTable:
    """Tabulate blurred disc profiles for one objective, channel and pixel size.

    A disc convolved with a Gaussian is a Rice distribution's CDF, ``P(|X|
    ≤ R)`` with ``X ~ N(r, σ²)``: a noncentral χ² CDF with 2 degrees of
    freedom. The pixel's own width adds ``p²/12`` to every ``σ²``.
    """
    table = psf_table(numerical_aperture, wavelength_um)
    p2 = float(pixel_size_um) ** 2 / 12.0
    radii = NUCLEUS_RADII_UM
    w = table.weight  # (D, K)
    s2 = table.sigma_um**2 + p2
    frac = np.linspace(0.0, 1.0, _DISC_SAMPLES)
    r_max = radii[None, :, None] + STAMP_SIGMAS_NUCLEI * np.sqrt(s2.T)[:, None, :]  # (K, R, D)
    r = r_max[..., None] * frac  # (K, R, D, n)
    s2k = s2.T[:, None, :, None]
    prof = w.T[:, None, :, None] * chndtr(radii[None, :, None, None] ** 2 / s2k, 2.0, r**2 / s2k)
    return DiscTable(radii.copy(), table.defocus_um.copy(), r_max, prof.astype(np.float32))
