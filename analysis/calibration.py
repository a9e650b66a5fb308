"""A scan's calibration: dark frames per channel, flat fields, the PSF; per-tile flags.

Dark frames (:func:`measure_dark`)
----------------------------------
Frames taken with the shutter closed at a channel's exposure
(:func:`acquisition.calibration.acquire_dark_frames`) give the camera offset
that :func:`analysis.tile.correct_tile` subtracts and the read noise:

* offset: the mean of the pixels of the frames' average that lie within
  5 robust σ (of the average: fixed pattern, noise and quantisation) of its
  median (hot and dead pixels left out; the mean, not the median, so an
  8-bit camera's integer levels still give a sub-ADU offset);
* read noise: the robust σ (1.4826 × MAD) of the difference of two frames,
  divided by √2 (temporal noise, fixed pattern cancelled); with a single
  frame, of adjacent-pixel differences. It is the noise of the camera's
  output, quantisation included (``√(σ² + 1/12)`` ADU);
* optionally the per-pixel dark map (the frames' average), for cameras with
  a fixed-pattern offset.

A default offset is wrong on any camera but the one it was read from (the
demo camera's 100 ADU subtracted from an 8-bit camera's ~20 ADU made every
tracer intensity −71): the offset comes from these frames unless the plan
fixes it.

Per-tile flags (:func:`tile_flags`)
-----------------------------------
* ``darker_than_offset``: the tile's background (the 1st percentile of its
  16 × 16-pixel block means, i.e. glass where there is glass) lies below the
  offset by more than 5 noise σ of a block mean (and 0.5 ADU of
  quantisation): the offset is wrong, or the camera drifted;
* ``n_saturated``: pixels at the camera's full scale (``2**bits − 1``);
  their true brightness is unknown.

Counts over a scan: :func:`summarise_flags`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import ArrayLike, NDArray

from acquisition.storage import (
    CALIBRATION_FORMAT,
    CALIBRATION_FORMAT_VERSION,
    ScanFile,
    read_dark_frames,
    read_sources,
)
from analysis.flatfield import FlatField, FlatFieldError, read_flat, write_flat
from analysis.object_size import ObjectSizeModel, object_size_model
from analysis.psf import PointSpreadFunction, PSFError, gaussian_psf, read_psf, write_psf
from analysis.settings import AnalysisSettings, segmentation_settings
from analysis.tile import block_reduce_mean

__all__ = [
    "AppliedCalibration",
    "CalibrationError",
    "DarkCalibration",
    "FlagSummary",
    "ScanCalibration",
    "TileFlags",
    "applied_calibration",
    "dark_offsets_adu",
    "flags_from_blocks",
    "flags_of_reduced_tile",
    "measure_dark",
    "read_calibration_file",
    "read_scan_calibration",
    "scan_calibration",
    "summarise_flags",
    "tile_flags",
    "uncalibrated",
    "write_calibration_file",
    "write_scan_calibration",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

_FLAG_BLOCK_PX = 16


class CalibrationError(ValueError):
    """Calibration images are unusable, or a calibration file cannot be read (the message says why)."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class DarkCalibration:
    """Camera offset and read noise of one channel's exposure, from dark frames.

    Attributes
    ----------
    channel : str
    exposure_ms : float
    offset_adu : float
        Mean dark level (ADU).
    read_noise_adu : float
        Temporal read noise σ (ADU).
    n_frames : int
    bit_depth : int
        Camera bit depth the frames were taken at.
    n_hot_pixels : int
        Pixels of the average more than 5 σ from the offset.
    dark_map_adu : (H, W) float32 or None
        Per-pixel average of the frames, if kept.
    created : str
    """

    channel: str
    exposure_ms: float
    offset_adu: float
    read_noise_adu: float
    n_frames: int
    bit_depth: int
    n_hot_pixels: int
    dark_map_adu: F32 | None = None
    created: str = ""

    @property
    def saturation_adu(self) -> int:
        """Full-scale value of the camera (``2**bit_depth − 1``)."""
        return 2**self.bit_depth - 1

    def summary(self) -> dict[str, object]:
        """Scalar description, JSON-ready."""
        return {
            "channel": self.channel,
            "exposure_ms": self.exposure_ms,
            "offset_adu": round(self.offset_adu, 4),
            "read_noise_adu": round(self.read_noise_adu, 4),
            "n_frames": self.n_frames,
            "bit_depth": self.bit_depth,
            "n_hot_pixels": self.n_hot_pixels,
            "has_dark_map": self.dark_map_adu is not None,
            "created": self.created,
        }


def _robust_sigma(values: F64) -> float:
    med = float(np.median(values))
    return 1.4826 * float(np.median(np.abs(values - med)))


def _quantised_sigma(diff: F64) -> float:
    """Robust σ of integer-valued differences, interpolated within their unit bins.

    With read noise below ~1 ADU the MAD of integers sticks at 0 or 1; the
    median of ``|d|`` is interpolated inside its histogram bin (as the tile
    analysis does for its noise σ).
    """
    a = np.abs(np.rint(diff)).astype(np.int64)
    counts = np.bincount(a.ravel())
    half = 0.5 * a.size
    cum = np.cumsum(counts)
    k = int(np.searchsorted(cum, half))
    below = float(cum[k - 1]) if k > 0 else 0.0
    lower, width = (k - 0.5, 1.0) if k > 0 else (0.0, 0.5)
    return 1.4826 * (lower + (half - below) / float(counts[k]) * width)


def measure_dark(
    frames: ArrayLike,
    *,
    channel: str,
    exposure_ms: float,
    bit_depth: int,
    keep_map: bool = False,
) -> DarkCalibration:
    """Offset and read noise from dark frames (method in the module docstring).

    Parameters
    ----------
    frames : (N, H, W) or (H, W) array
        Raw frames (ADU) with the shutter closed.
    channel : str
    exposure_ms : float
    bit_depth : int
        Camera bit depth (8, 12, 16, ...).
    keep_map : bool
        Keep the per-pixel average as ``dark_map_adu``.

    Raises
    ------
    CalibrationError
        If the frames are not 2-D/3-D, or look lit (a median far above the
        offset level: the shutter was open) or saturated.
    """
    stack = np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or stack.size == 0:
        raise CalibrationError(f"dark frames must be (N, H, W) or (H, W), got shape {np.shape(frames)}")
    if not (isinstance(bit_depth, int | np.integer) and 1 <= bit_depth <= 32):
        raise CalibrationError(f"bit_depth must be an integer 1..32, got {bit_depth!r}")
    data = stack.astype(np.float64)
    top = 2**bit_depth - 1
    if np.mean(data >= top) > 0.01:
        raise CalibrationError(
            f"{channel}: {100 * np.mean(data >= top):.1f} % of the dark-frame pixels are saturated: "
            "the shutter was open or the light leaks"
        )
    mean = data.mean(axis=0)
    if len(data) >= 2:
        noise = _quantised_sigma(data[1] - data[0]) / math.sqrt(2.0)
    else:
        noise = _quantised_sigma(np.diff(data[0], axis=1)) / math.sqrt(2.0)
    centre = float(np.median(mean))
    # the average's spread: fixed pattern (per-pixel, per-column offsets), noise, quantisation
    spread = max(_robust_sigma(mean.ravel()), noise / math.sqrt(len(data)), 0.5 / math.sqrt(3.0))
    good = np.abs(mean - centre) <= 5.0 * spread + 0.5
    offset = float(mean[good].mean())
    # a lit frame: many pixels far from the offset (hot pixels are a few per thousand at most)
    if np.mean(~good) > 0.01:
        raise CalibrationError(
            f"{channel}: {100 * np.mean(~good):.1f} % of the dark-frame pixels lie far from the offset: "
            "was the shutter closed?"
        )
    return DarkCalibration(
        channel=str(channel),
        exposure_ms=float(exposure_ms),
        offset_adu=offset,
        read_noise_adu=float(noise),
        n_frames=len(data),
        bit_depth=int(bit_depth),
        n_hot_pixels=int(np.count_nonzero(~good)),
        dark_map_adu=mean.astype(np.float32) if keep_map else None,
        created=_now(),
    )


@dataclass(frozen=True)
class TileFlags:
    """What is wrong with one raw tile of one channel, if anything.

    Attributes
    ----------
    background_adu : float
        1st percentile of the tile's 16 × 16 block means (raw ADU).
    darker_than_offset : bool
        ``background_adu`` below the offset by more than noise and
        quantisation allow.
    n_saturated : int
        Pixels at full scale.
    """

    background_adu: float
    darker_than_offset: bool
    n_saturated: int

    @property
    def ok(self) -> bool:
        """Neither darker than the offset nor saturated."""
        return not self.darker_than_offset and self.n_saturated == 0


def tile_flags(raw: ArrayLike, *, offset_adu: float, read_noise_adu: float, bit_depth: int) -> TileFlags:
    """Flag a raw tile darker than the offset or with saturated pixels (module docstring).

    Parameters
    ----------
    raw : (H, W) array
        Raw tile (ADU).
    offset_adu, read_noise_adu : float
        From :func:`measure_dark` (or the plan's offset and an estimate of the noise).
    bit_depth : int
        Camera bit depth; full scale is ``2**bit_depth − 1``.
    """
    image = np.asarray(raw)
    if image.ndim != 2 or image.size == 0:
        raise CalibrationError(f"tile must be a non-empty 2-D array, got shape {image.shape}")
    top = 2**bit_depth - 1
    return flags_from_blocks(
        block_reduce_mean(image, _FLAG_BLOCK_PX),
        block_px=_FLAG_BLOCK_PX,
        n_saturated=int(np.count_nonzero(image >= top)),
        offset_adu=offset_adu,
        read_noise_adu=read_noise_adu,
    )


def flags_from_blocks(
    block_means_adu: ArrayLike,
    *,
    block_px: int,
    n_saturated: int,
    offset_adu: float,
    read_noise_adu: float,
) -> TileFlags:
    """:func:`tile_flags` from a tile already reduced to block means (as the section analysis has it).

    Parameters
    ----------
    block_means_adu : array
        Mean raw value (ADU, offset included) of each ``block_px × block_px`` block.
    block_px : int
        Block side (pixels): a block mean's noise is ``read_noise_adu / block_px``.
    n_saturated : int
        Pixels of the tile at full scale.
    offset_adu, read_noise_adu : float
    """
    blocks = np.asarray(block_means_adu, dtype=np.float64)
    finite = blocks[np.isfinite(blocks)]
    if finite.size == 0:
        raise CalibrationError("no block means to flag the tile from")
    background = float(np.percentile(finite, 1.0))
    allowance = 5.0 * read_noise_adu / block_px + 0.5
    return TileFlags(background, background < offset_adu - allowance, int(n_saturated))


def flags_of_reduced_tile(
    block_means_adu: NDArray[np.floating[Any]],
    raw: NDArray[Any],
    calibration: AppliedCalibration,
    *,
    block_px: int,
) -> list[TileFlags]:
    """Per channel, :func:`flags_from_blocks` of a tile as the section analysis reduced it.

    Parameters
    ----------
    block_means_adu : (C, h, w) array
        Dark-corrected block means (the channel's offset is added back here).
    raw : (C, H, W) array
        The raw tile (saturation counted at ``2**bits − 1``; 16 bits where unknown).
    calibration : AppliedCalibration
        Offsets, read noise (0 where unknown) and bit depths per channel.
    block_px : int
    """
    n = len(calibration.dark_offsets_adu)
    noise = calibration.read_noise_adu or (0.0,) * n
    bits = calibration.bit_depths or (None,) * n
    return [
        flags_from_blocks(
            block_means_adu[c] + np.float32(offset),
            block_px=block_px,
            n_saturated=int(np.count_nonzero(raw[c] >= 2 ** (bits[c] or 16) - 1)),
            offset_adu=offset,
            read_noise_adu=float(noise[c]),
        )
        for c, offset in enumerate(calibration.dark_offsets_adu)
    ]


@dataclass(frozen=True)
class FlagSummary:
    """Counts of flagged tiles (for the scan's summary and ``cordscope info``)."""

    n_tiles: int
    n_darker_than_offset: int
    n_with_saturation: int
    n_saturated_pixels: int

    def messages(self) -> list[str]:
        """One line per problem a user should act on (empty when all is well)."""
        out = []
        if self.n_darker_than_offset:
            out.append(
                f"{self.n_darker_than_offset} of {self.n_tiles} tiles are darker than the camera offset: "
                "the offset is wrong for this camera (measure dark frames) or the camera drifted"
            )
        if self.n_with_saturation:
            out.append(
                f"{self.n_with_saturation} of {self.n_tiles} tiles have saturated pixels "
                f"({self.n_saturated_pixels} in all): shorten the exposure"
            )
        return out


def summarise_flags(flags: Iterable[TileFlags]) -> FlagSummary:
    """Count flagged tiles."""
    items = list(flags)
    return FlagSummary(
        n_tiles=len(items),
        n_darker_than_offset=sum(f.darker_than_offset for f in items),
        n_with_saturation=sum(f.n_saturated > 0 for f in items),
        n_saturated_pixels=sum(f.n_saturated for f in items),
    )


# ------------------------------------------------------------------ the bundle


@dataclass(frozen=True, eq=False)
class ScanCalibration:
    """Everything a scan was calibrated with.

    Attributes
    ----------
    darks : dict of str to DarkCalibration
        Per channel.
    flats : dict of str to FlatField
        Per channel (channels without one are not flat-fielded).
    psf : PointSpreadFunction or None
        The tracer channel's PSF at the scan's objective.
    notes : dict of str to str
        Free-form provenance (e.g. ``{"psf": "beads 2026-12-07, 10x"}``); for a
        scan file, where each part came from (a calibration file's path, or
        the dark frames taken at the scan's start).
    problems : tuple of str
        One line per stored part that could not be used (e.g. dark frames
        that were not dark), for the analysis' warnings.
    """

    darks: Mapping[str, DarkCalibration] = field(default_factory=dict)
    flats: Mapping[str, FlatField] = field(default_factory=dict)
    psf: PointSpreadFunction | None = None
    notes: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def summary(self) -> dict[str, object]:
        """JSON-ready description (``cordscope info``)."""
        out: dict[str, object] = {
            "darks": {k: v.summary() for k, v in self.darks.items()},
            "flats": {k: v.summary() for k, v in self.flats.items()},
            "psf": None if self.psf is None else self.psf.summary(),
            "notes": dict(self.notes),
        }
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def write_scan_calibration(group: h5py.Group, calibration: ScanCalibration) -> None:
    """Write a calibration into an empty HDF5 group (e.g. a scan file's ``/calibration``).

    Layout: ``dark/<channel>`` (attributes; ``dark_map_adu`` dataset if kept),
    ``flat/<channel>`` (:func:`analysis.flatfield.write_flat`), ``psf``
    (:func:`analysis.psf.write_psf`); the group's ``summary_json`` attribute
    describes it all.
    """
    group.attrs["format"] = CALIBRATION_FORMAT
    group.attrs["format_version"] = CALIBRATION_FORMAT_VERSION
    group.attrs["summary_json"] = json.dumps(calibration.summary(), sort_keys=True)
    darks = group.require_group("dark")
    for channel, dark in calibration.darks.items():
        g = darks.require_group(channel)
        g.attrs["summary_json"] = json.dumps(dark.summary(), sort_keys=True)
        if dark.dark_map_adu is not None:
            if "dark_map_adu" in g:
                del g["dark_map_adu"]
            g.create_dataset("dark_map_adu", data=dark.dark_map_adu, compression="gzip", shuffle=True)
    flats = group.require_group("flat")
    for channel, flat in calibration.flats.items():
        write_flat(flats.require_group(channel), flat)
    if calibration.psf is not None:
        write_psf(group.require_group("psf"), calibration.psf)


def _source_note(source: Mapping[str, Any]) -> str:
    """One line of where a stored calibration part came from (``sources_json`` of the group)."""
    if source.get("kind") == "dark_frames":
        return (
            f"{source.get('n_frames')} dark frames at {source.get('exposure_ms')} ms taken at the scan's "
            f"start (shutter {source.get('shutter')}, {source.get('created')})"
        )
    if source.get("kind") == "scan_tiles":
        return f"estimated from {source.get('n_images')} of the scan's tiles ({source.get('created')})"
    if source.get("kind") == "file":
        return f"{source.get('file')} (made {source.get('file_created')}, copied {source.get('copied')})"
    return json.dumps(dict(source), sort_keys=True)


def read_scan_calibration(group: h5py.Group) -> ScanCalibration:
    """Read a calibration group: a scan file's ``/calibration``, a calibration file, or one written here.

    Dark frames stored raw by the scan (``dark/<channel>/frames``) are
    measured here (:func:`measure_dark`); summaries written by
    :func:`write_scan_calibration` are read as they are. A part that cannot
    be used (dark frames that are not dark, a damaged flat field or PSF) is
    left out and named in :attr:`ScanCalibration.problems`.

    Raises
    ------
    CalibrationError
        If the group is not a calibration of a known format version.
    """
    if group.attrs.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{group.name}: not a CordScope calibration group")
    version = int(group.attrs.get("format_version", 0))
    if version > CALIBRATION_FORMAT_VERSION:
        raise CalibrationError(
            f"{group.name}: calibration format version {version} is newer than this CordScope"
        )
    problems: list[str] = []
    darks: dict[str, DarkCalibration] = {}
    raw = read_dark_frames(group)
    for channel, g in group.get("dark", {}).items():
        if channel in raw:
            d = raw[channel]
            try:
                darks[channel] = measure_dark(
                    d.frames, channel=channel, exposure_ms=d.exposure_ms, bit_depth=d.bit_depth
                )
            except CalibrationError as e:
                problems.append(f"dark frames of {e}")
            continue
        s = json.loads(str(g.attrs["summary_json"]))
        darks[channel] = DarkCalibration(
            channel=str(s["channel"]),
            exposure_ms=float(s["exposure_ms"]),
            offset_adu=float(s["offset_adu"]),
            read_noise_adu=float(s["read_noise_adu"]),
            n_frames=int(s["n_frames"]),
            bit_depth=int(s["bit_depth"]),
            n_hot_pixels=int(s["n_hot_pixels"]),
            dark_map_adu=np.asarray(g["dark_map_adu"][()], dtype=np.float32) if "dark_map_adu" in g else None,
            created=str(s["created"]),
        )
    flats: dict[str, FlatField] = {}
    for channel, g in group.get("flat", {}).items():
        try:
            flats[channel] = read_flat(g)
        except (FlatFieldError, KeyError, OSError) as e:
            problems.append(f"{channel}: flat field not used: {e}")
    psf = None
    if "psf" in group:
        try:
            psf = read_psf(group["psf"])
        except (PSFError, KeyError, OSError) as e:
            problems.append(f"PSF not used: {e}")
    notes: dict[str, str] = {}
    if "summary_json" in group.attrs:
        notes.update(json.loads(str(group.attrs["summary_json"])).get("notes", {}))
    notes.update({part: _source_note(src) for part, src in read_sources(group).items()})
    return ScanCalibration(darks=darks, flats=flats, psf=psf, notes=notes, problems=tuple(problems))


def scan_calibration(scan: ScanFile) -> ScanCalibration | None:
    """The calibration stored in a scan file; None for a file without one (older scans)."""
    group = scan.calibration_group
    return None if group is None else read_scan_calibration(group)


def write_calibration_file(
    path: str | Path,
    *,
    psf: PointSpreadFunction | None = None,
    flat: FlatField | None = None,
    channel: str,
    objective: str,
    config_file: str | Path,
    pixel_size_um: float,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write a calibration file (``cordscope calibrate`` / ``cordscope flatfield --config``), replacing it.

    Its root is laid out as a scan's ``/calibration`` group (format
    ``"cordscope-calibration"``), so scans copy its ``psf`` or
    ``flat/<channel>`` group as it is
    (:func:`acquisition.storage.copy_calibration_parts`).

    Parameters
    ----------
    path : path
        The file (its folder is created).
    psf, flat : optional
        What it holds (one of them, or both).
    channel : str
        Channel preset it was measured in.
    objective : str
        Objective preset it belongs to.
    config_file : path
        The hardware configuration it was measured with.
    pixel_size_um : float
        Pixel size at that objective (µm).
    extra : mapping, optional
        Anything else worth keeping (JSON-ready), e.g. where the stage was.
    """
    if psf is None and flat is None:
        raise CalibrationError("a calibration file needs a PSF or a flat field")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.writing")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = CALIBRATION_FORMAT
        f.attrs["format_version"] = CALIBRATION_FORMAT_VERSION
        f.attrs["created"] = _now()
        f.attrs["channel"] = str(channel)
        f.attrs["objective"] = str(objective)
        f.attrs["config_file"] = str(Path(config_file).resolve())
        f.attrs["pixel_size_um"] = float(pixel_size_um)
        summary: dict[str, object] = {"channel": channel, "objective": objective, **dict(extra or {})}
        if psf is not None:
            write_psf(f.require_group("psf"), psf)
            summary["psf"] = psf.summary()
        if flat is not None:
            write_flat(f.require_group("flat").require_group(flat.channel), flat)
            summary["flat"] = flat.summary()
        f.attrs["summary_json"] = json.dumps(summary, sort_keys=True)
    tmp.replace(out)
    return out


def read_calibration_file(path: str | Path) -> ScanCalibration:
    """Read a calibration file written by :func:`write_calibration_file` (its PSF and flat fields).

    Raises
    ------
    CalibrationError
        If the file cannot be read or holds no calibration.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CalibrationError(f"cannot read the calibration file {path}: {e}") from e
    with f:
        return read_scan_calibration(f["/"])


# ------------------------------------------------------- what a scan applies


@dataclass(frozen=True, eq=False)
class AppliedCalibration:
    """What the analysis of one scan applies, decided once from its settings and calibration.

    Attributes
    ----------
    dark_offsets_adu : tuple of float
        Offset per channel, in tile order.
    flat_fields : tuple of (H, W) float32 or None
        Flat field per channel (None: not flat-fielded).
    size_model : ObjectSizeModel or None
        Object-size model of the tracer channel (None: apparent areas, or
        the fixed-fraction rule).
    warnings : tuple of str
        One line per thing that could not be calibrated and what was done
        instead (for the log, the scan summary and ``cordscope info``).
    description : dict
        JSON-ready record of where each number came from (for the analysis
        parameters written with the results).
    read_noise_adu : tuple of float
        Read noise per channel from its dark frames (0 without: tile flags
        then allow quantisation only).
    bit_depths : tuple of int or None
        Camera bit depth per channel as its dark frames were taken (None: unknown).
    """

    dark_offsets_adu: tuple[float, ...]
    flat_fields: tuple[F32 | None, ...]
    size_model: ObjectSizeModel | None
    warnings: tuple[str, ...]
    description: dict[str, object]
    read_noise_adu: tuple[float, ...] = ()
    bit_depths: tuple[int | None, ...] = ()


def uncalibrated(n_channels: int, dark_offset_adu: float) -> AppliedCalibration:
    """The plan's offset in every channel, no flat field, no size model (no scan calibration given)."""
    n = int(n_channels)
    return AppliedCalibration(
        (float(dark_offset_adu),) * n, (None,) * n, None, (), {}, (0.0,) * n, (None,) * n
    )


def _dark_offsets(
    settings: AnalysisSettings, cal: ScanCalibration, channel_names: tuple[str, ...]
) -> tuple[list[float], dict[str, str], dict[str, dict[str, object]], list[str]]:
    offsets: list[float] = []
    offset_source: dict[str, str] = {}
    dark_record: dict[str, dict[str, object]] = {}
    warnings: list[str] = []
    for name in channel_names:
        dark = cal.darks.get(name)
        if settings.dark_offset_from == "plan":
            offsets.append(settings.dark_offset_adu)
            offset_source[name] = "plan"
        elif dark is not None:
            offsets.append(dark.offset_adu)
            offset_source[name] = "dark_frames"
        else:
            offsets.append(settings.dark_offset_adu)
            offset_source[name] = "plan_fallback"
            warnings.append(
                f"{name}: no dark frames in the file; subtracting the plan's dark_offset_adu "
                f"{settings.dark_offset_adu:g} ADU, which is right only for the camera it was read from"
            )
        dark_record[name] = {"offset_adu": round(offsets[-1], 4), "source": offset_source[name]}
        if dark is not None:
            dark_record[name].update(
                measured_offset_adu=round(dark.offset_adu, 4),
                read_noise_adu=round(dark.read_noise_adu, 4),
                n_frames=dark.n_frames,
                bit_depth=dark.bit_depth,
                exposure_ms=dark.exposure_ms,
            )
    return offsets, offset_source, dark_record, warnings


def dark_offsets_adu(
    settings: AnalysisSettings, calibration: ScanCalibration | None, channel_names: tuple[str, ...]
) -> tuple[float, ...]:
    """The dark offset per channel the analysis subtracts (the rule of :func:`applied_calibration`)."""
    return tuple(_dark_offsets(settings, calibration or ScanCalibration(), channel_names)[0])


def applied_calibration(
    settings: AnalysisSettings,
    calibration: ScanCalibration | None,
    *,
    channel_names: tuple[str, ...],
    tile_shape: tuple[int, int],
    pixel_size_um: float,
    plan_flat_fields: tuple[F32 | None, ...] | None = None,
) -> AppliedCalibration:
    """Decide the dark offsets, flat fields and object-size model a scan's analysis uses.

    * Offsets: the dark frames' per channel (``dark_offset_from:
      dark_frames``), the plan's ``dark_offset_adu`` where a channel has
      none (with a warning), or the plan's for all (``plan``).
    * Flat fields: the plan's ``flat_fields`` images where given (the user
      chose them), else the calibration's per channel, if its shape matches
      the tiles.
    * Object size: the calibration's PSF (beads) at this pixel size, else
      the plan's ``psf_sigma_um`` (a Gaussian, with ``size_offset_um2``),
      else none (objects keep their apparent area; a warning says so).
      ``edge_rule: fixed_fraction`` uses no model.

    Parameters
    ----------
    settings : AnalysisSettings
    calibration : ScanCalibration or None
        The scan file's calibration (None for files without one).
    channel_names : tuple of str
        Channels in tile order.
    tile_shape : (H, W)
    pixel_size_um : float
        Tile pixel size (µm).
    plan_flat_fields : tuple of (H, W) float32 or None, optional
        The plan's flat fields per channel (:func:`analysis.settings.load_flat_fields`).
    """
    cal = calibration or ScanCalibration()
    warnings: list[str] = list(cal.problems)
    offsets, offset_source, dark_record, dark_warnings = _dark_offsets(settings, cal, channel_names)
    warnings += dark_warnings
    plan_flats = plan_flat_fields or (None,) * len(channel_names)
    flats: list[F32 | None] = []
    flat_record: dict[str, object] = {}
    for name, planned in zip(channel_names, plan_flats, strict=True):
        if planned is not None:
            flats.append(planned)
            flat_record[name] = {"source": "plan", "method": "blank_field"}
            continue
        flat = cal.flats.get(name)
        if flat is not None and flat.image.shape != tuple(tile_shape):
            warnings.append(
                f"{name}: the flat field is {flat.image.shape}, the tiles {tuple(tile_shape)}: not used"
            )
            flat = None
        flats.append(None if flat is None else flat.image)
        flat_record[name] = (
            None
            if flat is None
            else {
                "source": cal.notes.get(f"flat/{name}", "calibration"),
                "method": flat.method,
                "n_images": flat.n_images,
                "fall_off_pct": round(flat.fall_off_pct, 2),
            }
        )
    model: ObjectSizeModel | None = None
    size_source = "fixed_fraction" if settings.edge_rule == "fixed_fraction" else "none"
    psf_record: dict[str, object] | None = None
    if settings.edge_rule == "object_size":
        psf = cal.psf
        if psf is not None:
            try:
                model = object_size_model(
                    psf, pixel_size_um=pixel_size_um, settings=segmentation_settings(settings)
                )
                size_source = f"psf:{psf.source}"
                psf_record = {**psf.summary(), "from": cal.notes.get("psf", "calibration")}
            except PSFError as e:
                warnings.append(f"tracer PSF not used: {e}")
        if model is None and settings.psf_sigma_um is not None:
            plan_psf = gaussian_psf(settings.psf_sigma_um, pixel_size_um=pixel_size_um, source="plan")
            plan_psf = plan_psf.with_size_offset(settings.size_offset_um2)
            model = object_size_model(
                plan_psf, pixel_size_um=pixel_size_um, settings=segmentation_settings(settings)
            )
            size_source = "psf:plan"
            psf_record = {**plan_psf.summary(), "from": "plan psf_sigma_um"}
        if model is None:
            warnings.append(
                "no PSF calibration: axon objects keep their apparent (blurred) area, too large for "
                "puncta near the resolution; image beads (cordscope calibrate) or set psf_sigma_um"
            )
    return AppliedCalibration(
        dark_offsets_adu=tuple(offsets),
        flat_fields=tuple(flats),
        size_model=model,
        warnings=tuple(warnings),
        description={
            "dark_offset_adu": dict(zip(channel_names, offsets, strict=True)),
            "dark_offset_source": offset_source,
            "flat_fielded": [n for n, f in zip(channel_names, flats, strict=True) if f is not None],
            "object_size": size_source,
            "size_model": None if model is None else model.summary(),
            "dark": dark_record,
            "flat": flat_record,
            "psf": psf_record,
            "warnings": list(warnings),
        },
        read_noise_adu=tuple(cal.darks[n].read_noise_adu if n in cal.darks else 0.0 for n in channel_names),
        bit_depths=tuple(cal.darks[n].bit_depth if n in cal.darks else None for n in channel_names),
    )
