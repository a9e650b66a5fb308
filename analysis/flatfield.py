"""Flat fields: the illumination and detection non-uniformity of a channel, measured.

A flat field ``F`` (mean 1 over the frame) turns a dark-corrected tile into a
uniform-response one: ``corrected = (raw − dark) / F``
(:func:`analysis.tile.correct_tile`). Two ways to measure it:

From a blank field (:func:`flat_from_blank`)
--------------------------------------------
Frames of a uniform fluorescent specimen (a dye slide, or any uniform
region), averaged, dark-corrected, smoothed and normalised.

From the scan's own tiles (:func:`flat_from_tiles`)
---------------------------------------------------
Tissue lands at a different place in every tile, so at a given pixel the
typical brightness over many tiles, relative to each tile's own level, is
the flat field times a constant; BaSiC (Peng et al. 2017, ``basicpy``)
makes the same assumption and solves it as a low-rank plus sparse
decomposition. Here, robustly and cheaply:

1. Every tile is dark-corrected and reduced to ``block_px`` block levels
   (the mean of the middle 60 % of 8 × 8 pixels spread over each block:
   noise averaged away, a block partly on glass or holding an axon still
   reads the tissue's level, and, unlike a median, continuous for an
   integer camera whose tissue lies an ADU or two above the offset; 64 ×
   64 blocks for a 2048² tile).
2. Blocks that carry no light (glass: below ``min_signal_fraction`` of the
   tile's bright level) and their neighbours (partly glass), or bright objects (a block mean more than
   ``outlier_factor`` × the tile's median) are left out: the flat is
   measured on the tissue's smooth autofluorescence, not on axons or glass.
3. Tile level × flat, by alternating medians: each tile's level is the
   median of its usable blocks divided by the current flat, and the flat at
   each block position the median over tiles of block / level (4 rounds,
   from a flat of 1), so where a tile's tissue lies does not bias its level.
4. A smooth surface is fitted (least squares, even and odd polynomial
   terms up to ``degree``, weighted by the number of tiles per block) and
   normalised to mean 1 over the frame.

The tissue's signal in a tracer channel is faint (tens of ADU above the
offset), so an additive pattern of the camera (per-column offsets, a few
ADU) is a multiplicative error of several % here: give the dark frames'
mean as ``dark_offset_adu`` for such a camera, not its mean offset (model
B's camera, 1.5 ADU column offsets, 801 tiles of 512²: largest error of the
tracer flat 5.0 % with the mean offset, 1.7 % with the dark map).

An integer camera whose noise is under an ADU (8-bit cameras) does not
dither its own steps: the mean of its pixels is not linear in the light
within an ADU, nor is the offset its dark frames give. A flat measured on
tissue lying within a couple of ADU of the offset is then wrong by several
% (model B's 8-bit mode: tissue 0.6-0.9 ADU above the offset, 4-6 %), so
the function refuses (:class:`FlatFieldError`) when the tissue's noise is
under 1 ADU and its level under 2.5 ADU, and says to record a blank field.

It needs tissue over every part of the frame in enough tiles (``min_tiles``
per block, default 8); a scan of a few tiles of a small section cannot give
one (the function says so). Its error falls as the tissue's own contrast
over √(tiles): on synthetic tissue of ±14 % contrast (with glass and
puncta), 300 tiles gave a flat within 3 % everywhere (tested), 100 tiles
within 4.5 %; a blank field within 1 %. Residual
non-uniformity of the fit against the raw flat is reported
(``fit_residual_pct``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi

from analysis.tile import block_reduce_mean

__all__ = [
    "FlatField",
    "FlatFieldError",
    "flat_from_blank",
    "flat_from_tiles",
    "read_flat",
    "write_flat",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

FLAT_FORMAT = "cordscope-flat-field"
FLAT_FORMAT_VERSION = 1
_ITERATIONS = 4
_NOISE_TILES = 32
_DITHERED_NOISE_ADU = 1.0
"""Pixel noise of at least an ADU dithers a camera's integer steps: the mean of many pixels is then
linear in the light at any level."""
_MIN_UNDITHERED_LEVEL_ADU = 2.5
"""Without that dither, the tissue must lie this far above the dark level: on a simulated 8-bit
camera (noise 0.4-0.5 ADU, per-pixel offsets 0.25 ADU, a dark map of 4 frames, 12 % fall-off, 300
tiles) the flat's largest error was 8.4 % at 1 ADU, 2.5 % at 2 ADU, 0.6 % at 3 ADU."""


class FlatFieldError(ValueError):
    """A flat field could not be measured from the images given (the message says why)."""


@dataclass(frozen=True, eq=False)
class FlatField:
    """A channel's flat field and how it was obtained.

    Attributes
    ----------
    channel : str
        Channel (preset) it belongs to.
    image : (H, W) float32
        The flat field, mean 1 over the frame, smooth.
    method : str
        ``"blank_field"`` or ``"scan_tiles"``.
    n_images : int
        Frames (blank field) or tiles (scan tiles) it was computed from.
    fit_residual_pct : float
        RMS (%) of the raw flat about the smooth fit: what the fit left out
        (noise and structure finer than the fit).
    created : str
        ISO date and time.
    tissue_level_adu : float
        From scan tiles: the median level of the tissue it was measured on,
        above the dark (ADU); NaN for a blank field.
    noise_adu : float
        From scan tiles: the tissue pixels' robust noise σ (ADU); NaN for a
        blank field.
    """

    channel: str
    image: F32
    method: str
    n_images: int
    fit_residual_pct: float
    created: str
    tissue_level_adu: float = math.nan
    noise_adu: float = math.nan

    @property
    def fall_off_pct(self) -> float:
        """Corner-to-centre drop of the flat field (%): 100 × (1 − min / max)."""
        return float(100.0 * (1.0 - self.image.min() / self.image.max()))

    def summary(self) -> dict[str, object]:
        """Scalar description, JSON-ready (for the file and ``cordscope info``)."""
        return {
            "channel": self.channel,
            "method": self.method,
            "n_images": self.n_images,
            "shape": list(self.image.shape),
            "fall_off_pct": round(self.fall_off_pct, 2),
            "fit_residual_pct": round(self.fit_residual_pct, 3),
            "created": self.created,
            "tissue_level_adu": None
            if math.isnan(self.tissue_level_adu)
            else round(self.tissue_level_adu, 3),
            "noise_adu": None if math.isnan(self.noise_adu) else round(self.noise_adu, 3),
        }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _design(rows: F64, cols: F64, degree: int) -> F64:
    """Polynomial terms x^i y^j, i + j ≤ degree, in coordinates scaled to [−1, 1]."""
    terms = [rows**i * cols**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(terms, axis=-1)


def _smooth_fit(
    raw: F64, weight: F64, shape: tuple[int, int], block_px: int, degree: int
) -> tuple[F32, float]:
    """Weighted polynomial fit of a block-level flat; evaluated at full resolution, mean 1."""
    nb_r, nb_c = raw.shape
    h, w = shape
    # block centres in full-resolution pixel coordinates, scaled to [-1, 1] over the frame
    rc = ((np.arange(nb_r) + 0.5) * block_px - 0.5 - (h - 1) / 2) / (h / 2)
    cc = ((np.arange(nb_c) + 0.5) * block_px - 0.5 - (w - 1) / 2) / (w / 2)
    rr, cg = np.meshgrid(rc, cc, indexing="ij")
    ok = (weight > 0) & np.isfinite(raw)
    a = _design(rr[ok], cg[ok], degree)
    sw = np.sqrt(weight[ok])
    coef, *_ = np.linalg.lstsq(a * sw[:, None], raw[ok] * sw, rcond=None)
    fitted_blocks = _design(rr, cg, degree) @ coef
    resid = (raw[ok] - fitted_blocks[ok]) / fitted_blocks[ok]
    rms_pct = float(100.0 * np.sqrt(np.average(resid**2, weights=weight[ok])))
    fr = (np.arange(h) - (h - 1) / 2) / (h / 2)
    fc = (np.arange(w) - (w - 1) / 2) / (w / 2)
    # evaluate row by row terms: sum_k coef_k r^i c^j = sum_i r^i (sum_j coef_ij c^j)
    image = np.zeros((h, w))
    k = 0
    for i in range(degree + 1):
        col_poly = np.zeros(w)
        for j in range(degree + 1 - i):
            col_poly += coef[k] * fc**j
            k += 1
        image += np.outer(fr**i, col_poly)
    if not np.all(image > 0):
        raise FlatFieldError("the fitted flat field is not positive everywhere: too little light or tissue")
    return (image / image.mean()).astype(np.float32), rms_pct


def _block_levels(image: F64, block_px: int) -> F64:
    """Trimmed mean of every whole ``block_px`` block: the middle 60 % of 8 × 8 pixels spread over it.

    Robust as a median (a block half on glass, or with an axon in it, still
    reads the tissue's level) but continuous in the data: the median of an
    integer camera's pixels moves in whole ADU, and the tissue of a tracer
    channel may lie a single ADU above the offset (an 8-bit camera).
    """
    nb_r, nb_c = image.shape[0] // block_px, image.shape[1] // block_px
    step = max(1, block_px // 8)
    cut = image[: nb_r * block_px : step, : nb_c * block_px : step]
    per = block_px // step
    blocks = np.sort(cut.reshape(nb_r, per, nb_c, per).transpose(0, 2, 1, 3).reshape(nb_r, nb_c, per * per))
    n = per * per
    return np.asarray(blocks[:, :, n // 5 : n - n // 5].mean(axis=2), dtype=np.float64)


def _tissue_noise(tiles: list[F64], usable: NDArray[np.bool_], block_px: int) -> float:
    """Robust noise σ (ADU) of the tissue pixels of the first tiles (usable blocks only).

    From differences of horizontally adjacent pixels (1.4826 × their median
    absolute value / √2), the median interpolated within its integer bin so
    a camera whose noise is a fraction of an ADU still gets a value.
    """
    parts: list[F64] = []
    for t, ok in zip(tiles, usable, strict=False):
        if not ok.any():
            continue
        h = ok.shape[0] * block_px
        w = ok.shape[1] * block_px
        mask = np.repeat(np.repeat(ok, block_px, axis=0), block_px // 2, axis=1)
        d = t[:h, 0:w:2] - t[:h, 1:w:2]
        parts.append(d[mask])
    if not parts:
        return math.nan
    a = np.abs(np.rint(np.concatenate(parts))).astype(np.int64)
    counts = np.bincount(a)
    half = 0.5 * a.size
    cum = np.cumsum(counts)
    k = int(np.searchsorted(cum, half))
    below = float(cum[k - 1]) if k > 0 else 0.0
    lower, width = (k - 0.5, 1.0) if k > 0 else (0.0, 0.5)
    return 1.4826 * (lower + (half - below) / float(counts[k]) * width) / math.sqrt(2.0)


def _dark_profiles(dark: F64) -> F64:
    """A dark map reduced to its mean with row and column offsets (a scalar stays a scalar).

    The camera's row and column offsets are what biases the block levels
    (every pixel of a block column shares them); per-pixel offsets average
    out over a block, and an integer camera's dark map is biased pixel by
    pixel by its rounding (read noise below an ADU: model B's 8-bit mode),
    which its row and column means, over hundreds of pixels each, are not.
    """
    if dark.ndim != 2:
        return dark
    mean = float(dark.mean())
    return np.asarray(
        mean + (dark.mean(axis=1, keepdims=True) - mean) + (dark.mean(axis=0, keepdims=True) - mean),
        dtype=np.float64,
    )


def flat_from_blank(
    frames: ArrayLike,
    *,
    dark_offset_adu: float | ArrayLike,
    channel: str,
    block_px: int = 16,
    degree: int = 6,
) -> FlatField:
    """Flat field from frames of a uniform fluorescent specimen.

    Parameters
    ----------
    frames : (N, H, W) or (H, W) array
        Raw frames (ADU).
    dark_offset_adu : float or (H, W) array
        Camera offset, or a per-pixel dark map (ADU).
    channel : str
    block_px : int
        Block size of the fit's samples (pixels).
    degree : int
        Degree of the smooth polynomial surface.

    Raises
    ------
    FlatFieldError
        If the frames are not 2-D/3-D, or carry no light above the offset.
    """
    stack = np.asarray(frames, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or min(stack.shape[1:]) < 2 * block_px:
        raise FlatFieldError(f"blank-field frames must be (N, H, W) or (H, W), got shape {np.shape(frames)}")
    mean = stack.mean(axis=0) - np.asarray(dark_offset_adu, dtype=np.float64)
    blocks = block_reduce_mean(mean, block_px).astype(np.float64)
    full = blocks[: mean.shape[0] // block_px, : mean.shape[1] // block_px]
    if not np.median(full) > 0:
        raise FlatFieldError(
            "the blank-field frames carry no light above the dark offset: image a uniformly "
            "fluorescent specimen with the channel's light on"
        )
    image, rms = _smooth_fit(full / np.median(full), np.ones_like(full), mean.shape, block_px, degree)
    return FlatField(channel, image, "blank_field", len(stack), rms, _now())


def flat_from_tiles(
    tiles: Iterable[ArrayLike],
    *,
    dark_offset_adu: float | ArrayLike,
    channel: str,
    block_px: int = 32,
    degree: int = 4,
    min_signal_fraction: float = 0.25,
    outlier_factor: float = 2.0,
    min_tiles: int = 8,
) -> FlatField:
    """Flat field from a scan's own tiles of one channel (method in the module docstring).

    Parameters
    ----------
    tiles : (N, H, W) array or sequence of (H, W) arrays
        Raw tiles (ADU) of one channel; the more (and the more tissue), the better.
    dark_offset_adu : float or (H, W) array
        Camera offset or per-pixel dark map (ADU).
    channel : str
    block_px : int
        Block size (pixels) of the reduction.
    degree : int
        Degree of the smooth polynomial surface.
    min_signal_fraction : float
        Blocks below this fraction of the tile's 90th-percentile block are glass.
    outlier_factor : float
        Blocks brighter than this × the tile's median usable block are left out.
    min_tiles : int
        Fewest tiles with usable tissue needed at a block position.

    Raises
    ------
    FlatFieldError
        If too few tiles carry tissue over the frame.
    """
    dark = _dark_profiles(np.asarray(dark_offset_adu, dtype=np.float64))
    reduced: list[F64] = []
    tiles_kept: list[F64] = []
    shape: tuple[int, int] | None = None
    for tile in tiles:
        t = np.asarray(tile, dtype=np.float64)
        if t.ndim != 2:
            raise FlatFieldError(f"tiles must be 2-D, got shape {t.shape}")
        if shape is None:
            shape = (int(t.shape[0]), int(t.shape[1]))
        elif t.shape != shape:
            raise FlatFieldError(f"tiles differ in shape: {t.shape} and {shape}")
        reduced.append(_block_levels(t - dark, block_px))
        if len(tiles_kept) < _NOISE_TILES:
            tiles_kept.append(t)
    if shape is None:
        raise FlatFieldError("no tiles given")
    stack = np.stack(reduced)
    usable = np.zeros(stack.shape, dtype=bool)
    for i, b in enumerate(stack):
        bright = float(np.percentile(b, 90))
        if not bright > 0:
            continue
        # glass, and the blocks next to it (partly glass), carry no usable light
        glass = b <= min_signal_fraction * bright
        ok = ~ndi.binary_dilation(glass, structure=np.ones((3, 3), dtype=bool))
        if ok.sum() >= 4:
            ok &= b < outlier_factor * float(np.median(b[ok]))
        usable[i] = ok if ok.sum() >= 4 else False
    count = usable.sum(axis=0)
    seen = count > 0
    if np.mean(count >= min_tiles) < 0.9:
        raise FlatFieldError(
            f"only {int(np.sum(count >= min_tiles))} of {count.size} frame positions have tissue in "
            f"≥ {min_tiles} of the {len(stack)} tiles: scan more tissue or record a blank field"
        )
    # tile level × flat: each tile's level is taken from its blocks divided by the current flat,
    # so where in the frame a tile's tissue lies does not bias its level (alternating medians)
    # tiles without a usable block (glass, or empty) carry no level: left out (an all-NaN median)
    with_tissue = usable.any(axis=(1, 2))
    values = np.where(usable, stack, np.nan)[with_tissue]
    flat_blocks = np.ones(stack.shape[1:])
    raw = np.full(stack.shape[1:], np.nan)
    for _ in range(_ITERATIONS):
        level = np.nanmedian(values / flat_blocks, axis=(1, 2))
        raw[seen] = np.nanmedian(values[:, seen] / level[:, None], axis=0)
        flat_blocks = np.where(seen, raw, 1.0) / np.mean(raw[seen])
    level_adu = float(np.median(stack[usable]))
    noise_adu = _tissue_noise(tiles_kept, usable, block_px)
    if noise_adu < _DITHERED_NOISE_ADU and level_adu < _MIN_UNDITHERED_LEVEL_ADU:
        raise FlatFieldError(
            f"{channel}: the tissue lies {level_adu:.2g} ADU above the dark level with {noise_adu:.2g} ADU "
            "of noise: the camera's integer steps and its offset's uncertainty bias a flat field measured "
            f"on it by several %; record a blank field (a bright uniform specimen) for {channel}, or "
            "scan with more exposure or gain"
        )
    weight = np.where(count >= min_tiles, count, 0).astype(np.float64)
    image, rms = _smooth_fit(raw, weight, shape, block_px, degree)
    return FlatField(channel, image, "scan_tiles", len(stack), rms, _now(), level_adu, noise_adu)


def write_flat(group: h5py.Group, flat: FlatField) -> None:
    """Write a flat field into an HDF5 group: ``image`` dataset + its description in attributes."""
    if "image" in group:
        del group["image"]
    group.create_dataset("image", data=flat.image, compression="gzip", shuffle=True)
    group.attrs["format"] = FLAT_FORMAT
    group.attrs["format_version"] = FLAT_FORMAT_VERSION
    group.attrs["description"] = (
        "flat field of one channel, mean 1 over the frame: corrected = (raw - dark) / image"
    )
    group.attrs["summary_json"] = json.dumps(flat.summary(), sort_keys=True)


def read_flat(group: h5py.Group) -> FlatField:
    """Read a flat field written by :func:`write_flat`.

    Raises
    ------
    FlatFieldError
        If the group holds no flat field of a known format version.
    """
    if group.attrs.get("format") != FLAT_FORMAT:
        raise FlatFieldError(f"{group.name}: not a CordScope flat-field group")
    version = int(group.attrs.get("format_version", 0))
    if version > FLAT_FORMAT_VERSION:
        raise FlatFieldError(
            f"{group.name}: flat-field format version {version} is newer than this CordScope"
        )
    s = json.loads(str(group.attrs["summary_json"]))
    image = np.asarray(group["image"][()], dtype=np.float32)
    if not math.isclose(float(image.mean()), 1.0, rel_tol=1e-3):
        raise FlatFieldError(f"{group.name}: flat field mean is {image.mean():.4f}, not 1")
    return FlatField(
        str(s["channel"]),
        image,
        str(s["method"]),
        int(s["n_images"]),
        float(s["fit_residual_pct"]),
        str(s["created"]),
        math.nan if s.get("tissue_level_adu") is None else float(s["tissue_level_adu"]),
        math.nan if s.get("noise_adu") is None else float(s["noise_adu"]),
    )
