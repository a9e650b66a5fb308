"""A scan's calibration as a whole: what its file holds, what its analysis applied, the tile flags.

For ``cordscope info``, the line ``cordscope scan`` prints, and the file-level
record the analysis writes (``/calibration`` attribute ``applied_json``):

- *stored*: the dark frames taken at the scan's start (offset and read noise
  measured here, :func:`analysis.calibration.measure_dark`), flat fields and
  the PSF copied from calibration files or estimated from the scan's tiles,
  and where each came from;
- *applied*: what the analysis decided from them and the plan
  (:func:`analysis.calibration.applied_calibration`), as recorded in every
  section's analysis parameters, with its warnings;
- *flags*: per channel, the tiles darker than the offset and the tiles with
  saturated pixels (:func:`analysis.calibration.tile_flags`), from every
  section's ``analysis/tile_flags``.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from numpy.typing import NDArray

from acquisition.storage import ScanFile, StorageError, record_source, require_calibration_group
from analysis.calibration import (
    CalibrationError,
    FlagSummary,
    ScanCalibration,
    dark_offsets_adu,
    scan_calibration,
)
from analysis.flatfield import FlatField, flat_from_tiles, write_flat
from analysis.results_format import ResultsFormatError, read_analysis, read_tile_flags
from analysis.settings import AnalysisSettings, settings_of_scan

__all__ = [
    "CalibrationReport",
    "calibration_report",
    "scan_flat_fields",
    "store_flat_fields",
    "write_calibration_record",
]


@dataclass(frozen=True)
class CalibrationReport:
    """How one scan is calibrated (see the module docstring).

    Attributes
    ----------
    stored : ScanCalibration or None
        The file's calibration (None: the file has none, an older scan).
    applied : dict or None
        What the analysis applied (``analysis.calibration.AppliedCalibration.description``
        as written with the first analysed section); None before an analysis.
    warnings : list of str
        What could not be calibrated (the analysis' warnings, or the stored
        calibration's problems before an analysis) and what the flags say.
    flags : dict of str to FlagSummary
        Per channel, over every analysed tile.
    """

    stored: ScanCalibration | None
    applied: Mapping[str, Any] | None
    warnings: list[str] = field(default_factory=list)
    flags: Mapping[str, FlagSummary] = field(default_factory=dict)

    def channel_rows(self) -> list[dict[str, str]]:
        """One row per channel: offset, read noise, source, flat field, flags (strings for a table)."""
        stored = self.stored or ScanCalibration()
        applied = dict(self.applied or {})
        dark = dict(applied.get("dark") or {})
        flat = dict(applied.get("flat") or {})
        channels = list(dict.fromkeys([*dark, *stored.darks, *stored.flats, *self.flags]))
        rows = []
        for ch in channels:
            d = stored.darks.get(ch)
            used = dark.get(ch) or {}
            offset = used.get("offset_adu", None if d is None else d.offset_adu)
            source = used.get("source", "dark_frames" if d is not None else "—")
            f_used = flat.get(ch)
            f_stored = stored.flats.get(ch)
            if f_used:
                flat_text = f"{f_used.get('method')} ({_short(str(f_used.get('source')))})"
            elif f_stored is not None:
                flat_text = f"{f_stored.method}, {f_stored.n_images} images (not applied)"
            else:
                flat_text = "none"
            s = self.flags.get(ch)
            rows.append(
                {
                    "channel": ch,
                    "offset_adu": "—" if offset is None else f"{float(offset):.2f}",
                    "read_noise_adu": "—" if d is None else f"{d.read_noise_adu:.2f}",
                    "offset_source": str(source).replace("_", " "),
                    "dark_frames": "—"
                    if d is None
                    else f"{d.n_frames} × {d.exposure_ms:g} ms, {d.bit_depth}-bit",
                    "flat_field": flat_text,
                    "fall_off_pct": "—" if f_stored is None else f"{f_stored.fall_off_pct:.1f}",
                    "darker_than_offset": "—" if s is None else f"{s.n_darker_than_offset}/{s.n_tiles}",
                    "saturated": "—" if s is None else f"{s.n_with_saturation}/{s.n_tiles}",
                }
            )
        return rows

    def psf_line(self) -> str:
        """The PSF and the object-size rule, in one line."""
        stored = self.stored or ScanCalibration()
        applied = dict(self.applied or {})
        rule = applied.get("object_size")
        psf = applied.get("psf")
        if psf:
            text = (
                f"PSF {psf.get('source')}: FWHM {float(psf.get('fwhm_um', 0.0)):.2f} µm "
                f"(σ {float(psf.get('sigma_um', 0.0)):.3f} µm"
                + (f", {psf.get('n_beads')} beads" if psf.get("n_beads") else "")
                + f") from {_short(str(psf.get('from')))}"
            )
        elif stored.psf is not None:
            p = stored.psf
            text = (
                f"PSF {p.source}: FWHM {p.fwhm_um:.2f} µm ({p.n_beads} beads) from "
                f"{_short(stored.notes.get('psf', 'the file'))} (not applied yet)"
            )
        else:
            text = "no PSF calibration"
        if rule is not None:
            text += f"; object size: {rule}"
        return text

    def line(self) -> str:
        """The calibration in one line (``cordscope scan``)."""
        parts = []
        for row in self.channel_rows():
            text = f"{row['channel']} offset {row['offset_adu']} ADU ({row['offset_source']}"
            if row["read_noise_adu"] != "—":
                text += f", read noise {row['read_noise_adu']}"
            text += ")"
            if row["flat_field"] != "none":
                text += f", flat {row['flat_field']}"
            parts.append(text)
        parts.append(self.psf_line())
        return "calibration: " + "; ".join(parts)

    def flag_lines(self) -> list[str]:
        """One line per channel with flagged tiles (empty when none is)."""
        return [f"{ch}: {m}" for ch, s in self.flags.items() for m in s.messages()]

    def record(self) -> dict[str, Any]:
        """JSON-ready record (the file-level ``applied_json``)."""
        return {
            "applied": None if self.applied is None else dict(self.applied),
            "warnings": list(self.warnings),
            "flags": {
                ch: {
                    "n_tiles": s.n_tiles,
                    "n_darker_than_offset": s.n_darker_than_offset,
                    "n_with_saturation": s.n_with_saturation,
                    "n_saturated_pixels": s.n_saturated_pixels,
                }
                for ch, s in self.flags.items()
            },
            "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }


def _short(note: str) -> str:
    """A source note's file name without its folder and dates (for one-line reports)."""
    head = note.split(" (", 1)[0]
    return Path(head).name if head.endswith(".h5") else note


def _flags(scan: ScanFile) -> dict[str, FlagSummary]:
    counts: dict[str, list[int]] = {}
    for sid in scan.section_ids:
        flags = read_tile_flags(scan.section(sid).analysis_group)
        if flags is None:
            continue
        done = flags.analysed
        for c, ch in enumerate(flags.channel_names):
            n_sat = flags.n_saturated[done, c]
            acc = counts.setdefault(ch, [0, 0, 0, 0])
            acc[0] += int(done.sum())
            acc[1] += int(flags.darker_than_offset[done, c].sum())
            acc[2] += int(np.count_nonzero(n_sat > 0))
            acc[3] += int(n_sat.sum())
    return {ch: FlagSummary(*v) for ch, v in counts.items()}


def _applied(scan: ScanFile) -> dict[str, Any] | None:
    for sid in scan.section_ids:
        group = scan.section(sid).analysis_group
        if group is None or not len(group):
            continue
        try:
            params = read_analysis(group, with_mosaic=False).parameters
        except (ResultsFormatError, KeyError):
            continue
        if params.get("calibration") is not None:
            return dict(params["calibration"])
    return None


def calibration_report(
    scan: ScanFile, *, stored: ScanCalibration | Literal["read"] | None = "read"
) -> CalibrationReport:
    """How a scan is calibrated: its stored calibration, what its analysis applied, the flag counts.

    Parameters
    ----------
    scan : ScanFile
    stored : ScanCalibration or None, optional
        The file's calibration when already read (default: read it here).
    """
    problems: list[str] = []
    if stored == "read":
        try:
            stored = scan_calibration(scan)
        except CalibrationError as e:
            stored, problems = None, [str(e)]
    assert not isinstance(stored, str)
    applied = _applied(scan)
    warnings = (
        list(applied.get("warnings", [])) if applied else [*problems, *(stored.problems if stored else ())]
    )
    if stored is None and applied is None:
        warnings.append("the file holds no calibration (a scan made before CordScope took dark frames)")
    flags = _flags(scan)
    return CalibrationReport(stored, applied, warnings, flags)


def write_calibration_record(f: h5py.File, report: CalibrationReport) -> None:
    """Write the analysis' file-level calibration record (``/calibration`` attribute ``applied_json``)."""
    group = require_calibration_group(f)
    group.attrs["applied_json"] = json.dumps(report.record(), sort_keys=True)


# ------------------------------------------------------------ flat fields from a scan's tiles


def scan_flat_fields(
    path: str | Path,
    *,
    channels: Sequence[str] | None = None,
    settings: AnalysisSettings | None = None,
) -> dict[str, FlatField]:
    """Flat fields estimated from a scan's own done tiles (:func:`analysis.flatfield.flat_from_tiles`).

    Each channel's tiles (planes max-projected, as the analysis sees them)
    are dark-corrected with the offset the analysis applies (the scan's dark
    frames, or the plan's).

    Parameters
    ----------
    path : path
        A scan file (not being written).
    channels : sequence of str, optional
        Default: every channel of the scan.
    settings : AnalysisSettings, optional
        Default: the plan's stored in the file.

    Raises
    ------
    FlatFieldError
        If a channel's tiles do not cover the frame with tissue often enough.
    StorageError
        If the sections' channels or tile shapes differ, or a channel is unknown.
    """
    with ScanFile.open(path) as scan:
        settings = settings or settings_of_scan(scan.plan_yaml, source=f"{Path(path).name}:/plan")
        readers = [scan.section(sid) for sid in scan.section_ids]
        names = readers[0].channel_names
        if any(r.channel_names != names or r.tile_shape_px != readers[0].tile_shape_px for r in readers):
            raise StorageError(f"{path}: its sections differ in channels or tile shape")
        wanted = list(channels or names)
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise StorageError(f"{path}: no channel {', '.join(unknown)} (channels: {', '.join(names)})")
        offsets = dict(zip(names, dark_offsets_adu(settings, scan_calibration(scan), names), strict=True))

        def tiles(c: int) -> Iterator[NDArray[np.uint16]]:
            for r in readers:
                for t in r.done_indices():
                    yield r.read_tile(int(t))[c].max(axis=0)

        return {
            ch: flat_from_tiles(tiles(names.index(ch)), dark_offset_adu=offsets[ch], channel=ch)
            for ch in wanted
        }


def store_flat_fields(path: str | Path, flats: Mapping[str, FlatField]) -> None:
    """Store flat fields in a scan file's ``/calibration/flat/<channel>`` (replacing earlier ones).

    Their origin is recorded (``sources_json``); ``cordscope analyze`` then applies them.
    """
    with h5py.File(path, "r+") as f:
        group = require_calibration_group(f)
        for channel, flat in flats.items():
            parent = group.require_group("flat")
            if channel in parent:
                del parent[channel]
            write_flat(parent.create_group(channel), flat)
            record_source(
                group,
                f"flat/{channel}",
                {"kind": flat.method, "n_images": flat.n_images, "created": flat.created},
            )
