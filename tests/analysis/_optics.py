"""A small, independent linear image model for calibration tests (test helper).

Shares nothing with the demo slide's renderer: objects are ellipses with a
uniform brightness, integrated over 4 × 4 sub-pixels, convolved with a
Gaussian or a Moffat point-spread function (FFT), seen through an
illumination fall-off, and recorded by a camera with Poisson shot noise,
Gaussian read noise, an offset and a bit depth. Every object's physical area
is known exactly (``π·a·b``), so per-object and per-region areas can be
checked against geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.signal import fftconvolve

F64 = NDArray[np.float64]
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Ellipse:
    """One object: centre (row, col) in pixels, semi-axes in µm, angle, peak brightness."""

    row: float
    col: float
    a_um: float
    b_um: float
    angle_rad: float
    brightness: float  # photons / ms / pixel of the unblurred object

    @property
    def area_um2(self) -> float:
        return math.pi * self.a_um * self.b_um


def psf_kernel(kind: str, width_um: float, step_um: float, *, beta: float = 2.5) -> F64:
    """Normalised PSF sampled every ``step_um``.

    ``kind``: "gaussian" (``width_um`` = σ) or "moffat" (``width_um`` = FWHM, exponent ``beta``).
    """
    if kind == "gaussian":
        half = math.ceil(4.0 * width_um / step_um)
    else:
        half = math.ceil(3.0 * width_um / step_um)
    y, x = np.mgrid[-half : half + 1, -half : half + 1] * step_um
    r2 = x * x + y * y
    if kind == "gaussian":
        k = np.exp(-r2 / (2.0 * width_um**2))
    elif kind == "moffat":
        alpha = width_um / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        k = (1.0 + r2 / alpha**2) ** (-beta)
    else:
        raise ValueError(kind)
    return k / k.sum()


def render(
    shape: tuple[int, int],
    objects: list[Ellipse],
    *,
    pixel_size_um: float,
    psf: tuple[str, float] = ("gaussian", 0.4),
    background: float | F64 = 0.0,
    moffat_beta: float = 2.5,
) -> F64:
    """Noise-free photon rate (photons / ms / pixel): objects blurred by the PSF, plus background."""
    h, w = shape
    ss = SUPERSAMPLE
    step = pixel_size_um / ss
    fine = np.zeros((h * ss, w * ss))
    for o in objects:
        if o.a_um < step:
            # a point (a bead): its flux split bilinearly over the four nearest sub-pixels
            fr, fc = (o.row + 0.5) * ss - 0.5, (o.col + 0.5) * ss - 0.5
            r0, c0 = math.floor(fr), math.floor(fc)
            tr, tc = fr - r0, fc - c0
            flux = o.brightness * o.area_um2 / (step * step)
            if 0 <= r0 and r0 + 1 < h * ss and 0 <= c0 and c0 + 1 < w * ss:
                fine[r0, c0] += flux * (1 - tr) * (1 - tc)
                fine[r0 + 1, c0] += flux * tr * (1 - tc)
                fine[r0, c0 + 1] += flux * (1 - tr) * tc
                fine[r0 + 1, c0 + 1] += flux * tr * tc
            continue
        reach = o.a_um / step + 2
        r0 = max(0, int((o.row + 0.5) * ss - reach))
        r1 = min(h * ss, int((o.row + 0.5) * ss + reach) + 1)
        c0 = max(0, int((o.col + 0.5) * ss - reach))
        c1 = min(w * ss, int((o.col + 0.5) * ss + reach) + 1)
        if r1 <= r0 or c1 <= c0:
            continue
        yy = ((np.arange(r0, r1) + 0.5) / ss - 0.5 - o.row)[:, None] * pixel_size_um
        xx = ((np.arange(c0, c1) + 0.5) / ss - 0.5 - o.col)[None, :] * pixel_size_um
        ca, sa = math.cos(o.angle_rad), math.sin(o.angle_rad)
        u = xx * ca + yy * sa
        v = -xx * sa + yy * ca
        fine[r0:r1, c0:c1] += o.brightness * ((u / o.a_um) ** 2 + (v / o.b_um) ** 2 < 1.0)
    kind, width = psf
    fine = fftconvolve(fine, psf_kernel(kind, width, step, beta=moffat_beta), mode="same")
    image = fine.reshape(h, ss, w, ss).mean(axis=(1, 3))
    return image + background


def truth_mask(shape: tuple[int, int], objects: list[Ellipse], *, pixel_size_um: float) -> NDArray[np.bool_]:
    """Pixels whose centre lies inside an object."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros(shape, dtype=bool)
    for o in objects:
        ca, sa = math.cos(o.angle_rad), math.sin(o.angle_rad)
        dx = (cc - o.col) * pixel_size_um
        dy = (rr - o.row) * pixel_size_um
        u = dx * ca + dy * sa
        v = -dx * sa + dy * ca
        out |= (u / o.a_um) ** 2 + (v / o.b_um) ** 2 < 1.0
    return out


def vignetting(shape: tuple[int, int], fall_off: float) -> F64:
    """Illumination of mean ~1 falling by ``fall_off`` (fraction) from the centre to the corners."""
    h, w = shape
    y = (np.arange(h) + 0.5) / h - 0.5
    x = (np.arange(w) + 0.5) / w - 0.5
    rho2 = (y[:, None] ** 2 + x[None, :] ** 2) / 0.5
    return 1.0 - fall_off * rho2


@dataclass(frozen=True)
class Camera:
    """Poisson shot noise, Gaussian read noise, an offset, a gain and a bit depth."""

    offset_adu: float = 500.0
    gain_e_per_adu: float = 0.8
    read_noise_e: float = 2.2
    bits: int = 16
    quantum_efficiency: float = 0.7

    def expose(self, photons_per_ms: F64, exposure_ms: float, rng: np.random.Generator | None) -> NDArray:
        electrons = np.asarray(photons_per_ms, dtype=np.float64) * exposure_ms * self.quantum_efficiency
        if rng is not None:
            electrons = rng.poisson(np.clip(electrons, 0.0, None)).astype(np.float64)
            electrons += rng.normal(0.0, self.read_noise_e, electrons.shape)
        adu = np.rint(electrons / self.gain_e_per_adu + self.offset_adu)
        top = 2**self.bits - 1
        dtype = np.uint8 if self.bits <= 8 else np.uint16
        return np.clip(adu, 0, top).astype(dtype)


def random_puncta(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    pixel_size_um: float,
    n: int,
    diameter_um: tuple[float, float] = (1.5, 5.0),
    max_aspect: float = 2.5,
    brightness: tuple[float, float] = (8.0, 30.0),
    gap_um: float = 1.5,
    margin_px: int = 12,
) -> list[Ellipse]:
    """Non-overlapping blob and elongated puncta at random places (rejection sampling)."""
    h, w = shape
    placed: list[Ellipse] = []
    tries = 0
    while len(placed) < n and tries < 50 * n:
        tries += 1
        d = rng.uniform(*diameter_um)
        aspect = rng.uniform(1.0, max_aspect)
        a = 0.5 * d * math.sqrt(aspect)
        b = 0.5 * d / math.sqrt(aspect)
        row = rng.uniform(margin_px, h - margin_px)
        col = rng.uniform(margin_px, w - margin_px)
        ok = True
        for o in placed:
            dist = math.hypot(o.row - row, o.col - col) * pixel_size_um
            if dist < a + o.a_um + gap_um:
                ok = False
                break
        if ok:
            placed.append(Ellipse(row, col, a, b, rng.uniform(0, math.pi), rng.uniform(*brightness)))
    return placed
