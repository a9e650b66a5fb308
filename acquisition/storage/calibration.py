"""A scan file's ``/calibration`` group: raw dark frames, and calibrations copied in.

Acquisition stores what it measured or found, as it is; what the images
mean (offset, read noise, flat field, PSF) is worked out by the analysis
(``analysis.calibration``), which never needs a microscope::

    /calibration                  attrs format "cordscope-calibration", format_version 1,
                                  sources_json (JSON: what each part is and where it came from),
                                  applied_json (JSON, written by the analysis: what it applied)
        dark/<channel>            attrs exposure_ms, bit_depth, camera, shutter, created, n_frames
            frames                uint16 (N, H, W): raw frames, shutter closed, at the channel's exposure
        flat/<channel>            a flat field (``analysis.flatfield.write_flat``)
        psf                       the tracer's PSF (``analysis.psf.write_psf``)

The group is additive: files without it (older scans) read as before, and
readers of format version 1 ignore it. A new scan writes it with the file
(:meth:`acquisition.storage.ScanWriter.create`), so it is there, complete,
before the first tile; a resumed scan adds the dark frames of channels that
have none and keeps the ones it has.

Calibration files (``cordscope calibrate`` / ``cordscope flatfield --config``)
are HDF5 files whose root is laid out as this group (format
``"cordscope-calibration"``); a scan copies their ``psf`` and
``flat/<channel>`` groups in as they are (:func:`copy_calibration_parts`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .format import StorageError, _decode_text, _first_line, _now_iso, _to_json

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_FORMAT_VERSION",
    "CALIBRATION_GROUP",
    "DarkFrames",
    "copy_calibration_parts",
    "dark_frame_channels",
    "read_dark_frames",
    "read_sources",
    "record_source",
    "require_calibration_group",
    "write_dark_frames",
]

CALIBRATION_GROUP = "calibration"
"""Name of the scan file's calibration group (at the root)."""
CALIBRATION_FORMAT = "cordscope-calibration"
"""``format`` attribute of a calibration group and of a calibration file's root."""
CALIBRATION_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class DarkFrames:
    """Raw dark frames of one channel and how they were taken.

    Attributes
    ----------
    channel : str
        Channel preset.
    frames : (N, H, W) array
        Raw frames (ADU), shutter closed.
    exposure_ms : float
    bit_depth : int
        Camera bit depth (full scale ``2**bit_depth − 1``).
    attrs : mapping
        Anything else recorded (camera, shutter, created).
    """

    channel: str
    frames: np.ndarray
    exposure_ms: float
    bit_depth: int
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or frames.shape[0] < 1:
            raise StorageError(f"dark frames of {self.channel}: expected (N, H, W), got shape {frames.shape}")
        if not np.can_cast(frames.dtype, np.uint16, casting="safe"):
            raise StorageError(
                f"dark frames of {self.channel}: dtype {frames.dtype} cannot be stored as uint16 without loss"
            )
        if not (self.exposure_ms > 0 and 1 <= int(self.bit_depth) <= 16):
            raise StorageError(
                f"dark frames of {self.channel}: need exposure_ms > 0 and a bit depth of 1-16, "
                f"got {self.exposure_ms} ms, {self.bit_depth} bits"
            )
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "bit_depth", int(self.bit_depth))
        object.__setattr__(self, "exposure_ms", float(self.exposure_ms))


def require_calibration_group(f: h5py.File) -> h5py.Group:
    """The file's ``/calibration`` group, created (with its format attributes) if absent."""
    group = f.require_group(CALIBRATION_GROUP)
    if "format" not in group.attrs:
        group.attrs["format"] = CALIBRATION_FORMAT
        group.attrs["format_version"] = CALIBRATION_FORMAT_VERSION
    return group


def _update_sources(group: h5py.Group, entries: Mapping[str, Mapping[str, Any]]) -> None:
    sources = read_sources(group)
    sources.update({k: dict(v) for k, v in entries.items()})
    group.attrs["sources_json"] = _to_json(sources)


def record_source(group: h5py.Group, part: str, entry: Mapping[str, Any]) -> None:
    """Say where a part of a calibration group came from (``sources_json``).

    E.g. a flat field estimated from the scan's own tiles: ``{"kind": "scan_tiles", ...}``.
    """
    _update_sources(group, {part: {**entry, "recorded": _now_iso()}})


def read_sources(group: h5py.Group) -> dict[str, dict[str, Any]]:
    """What each part of a calibration group is and where it came from (``sources_json``)."""
    raw = group.attrs.get("sources_json")
    return {} if raw is None else dict(json.loads(_decode_text(raw)))


def write_dark_frames(group: h5py.Group, dark: DarkFrames) -> None:
    """Store one channel's raw dark frames under ``dark/<channel>`` (replacing earlier ones)."""
    darks = group.require_group("dark")
    if dark.channel in darks:
        del darks[dark.channel]
    g = darks.create_group(dark.channel)
    n, h, w = dark.frames.shape
    g.create_dataset(
        "frames",
        data=np.ascontiguousarray(dark.frames, dtype=np.uint16),
        chunks=(1, h, w),
        compression="gzip",
        shuffle=True,
    )
    g.attrs["exposure_ms"] = dark.exposure_ms
    g.attrs["bit_depth"] = dark.bit_depth
    g.attrs["n_frames"] = n
    g.attrs["created"] = str(dark.attrs.get("created") or _now_iso())
    for key, value in dark.attrs.items():
        if key not in ("created",) and value is not None:
            g.attrs[key] = value if isinstance(value, (str, int, float)) else _to_json(value)
    g.attrs["description"] = (
        "raw camera frames with the excitation shutter closed, at the channel's exposure: the dark "
        "offset and read noise are measured from them (analysis.calibration.measure_dark)"
    )
    _update_sources(
        group,
        {
            f"dark/{dark.channel}": {
                "kind": "dark_frames",
                "n_frames": n,
                "exposure_ms": dark.exposure_ms,
                "shutter": dark.attrs.get("shutter"),
                "created": g.attrs["created"],
            }
        },
    )


def read_dark_frames(group: h5py.Group) -> dict[str, DarkFrames]:
    """The raw dark frames of every channel in a calibration group (empty if none)."""
    out: dict[str, DarkFrames] = {}
    darks = group.get("dark")
    if not isinstance(darks, h5py.Group):
        return out
    for channel, g in darks.items():
        if "frames" not in g:
            continue  # a measured summary only (analysis.calibration.write_scan_calibration)
        try:
            frames = np.asarray(g["frames"][()])
        except (OSError, RuntimeError) as e:
            where = group.file.filename
            raise StorageError(f"{where}: dark frames of {channel} are unreadable: {_first_line(e)}") from e
        attrs = {k: _decode_text(v) for k, v in g.attrs.items() if k not in ("exposure_ms", "bit_depth")}
        out[channel] = DarkFrames(
            channel=channel,
            frames=frames,
            exposure_ms=float(g.attrs["exposure_ms"]),
            bit_depth=int(g.attrs["bit_depth"]),
            attrs=attrs,
        )
    return out


def dark_frame_channels(group: h5py.Group | None) -> tuple[str, ...]:
    """Channels with raw dark frames in a calibration group (none for ``None``)."""
    if group is None or not isinstance(group.get("dark"), h5py.Group):
        return ()
    return tuple(ch for ch, g in group["dark"].items() if "frames" in g)


def copy_calibration_parts(
    group: h5py.Group, source: str | os.PathLike[str], parts: Sequence[str], *, replace: bool = True
) -> list[str]:
    """Copy parts (``"psf"``, ``"flat/<channel>"``) of a calibration file into a calibration group.

    Each copied part is recorded in ``sources_json`` with the file it came
    from and the part's own description (its ``summary_json`` attribute).

    Parameters
    ----------
    group : h5py.Group
        The scan's ``/calibration`` group, open for writing.
    source : path
        A calibration file (root format ``"cordscope-calibration"``).
    parts : sequence of str
        Parts to copy; parts the file does not hold are skipped.
    replace : bool
        Replace a part the group already holds (else keep it).

    Returns
    -------
    list of str
        The parts copied.

    Raises
    ------
    StorageError
        If the file cannot be read or is not a calibration file of a known version.
    """
    path = Path(source)
    try:
        src = h5py.File(path, "r")
    except OSError as e:
        raise StorageError(f"cannot read the calibration file {path}: {_first_line(e)}") from e
    copied: list[str] = []
    with src:
        fmt = _decode_text(src.attrs.get("format", ""))
        if fmt != CALIBRATION_FORMAT:
            raise StorageError(f"{path} is not a CordScope calibration file (format {fmt!r})")
        version = int(src.attrs.get("format_version", 0))
        if version > CALIBRATION_FORMAT_VERSION:
            raise StorageError(f"{path}: calibration format version {version} is newer than this CordScope")
        entries: dict[str, dict[str, Any]] = {}
        for part in parts:
            if part not in src:
                continue
            if part in group:
                if not replace:
                    continue
                del group[part]
            parent = part.rpartition("/")[0]
            dest = group.require_group(parent) if parent else group
            src.copy(src[part], dest, name=part.rpartition("/")[2])
            summary = src[part].attrs.get("summary_json")
            entries[part] = {
                "kind": "file",
                "file": str(path.resolve()),
                "file_created": _decode_text(src.attrs.get("created", "")),
                "copied": _now_iso(),
                "summary": None if summary is None else json.loads(_decode_text(summary)),
            }
            copied.append(part)
        _update_sources(group, entries)
    return copied
