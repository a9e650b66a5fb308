"""``cordscope calibrate`` and ``cordscope flatfield``: what a lab images once per rig and objective.

- ``cordscope calibrate --config CFG --objective 10x``: a bead z-stack at the
  bead area, the tracer channel's PSF measured from it, written to
  ``<cfg stem>.calibration/<objective>-psf.h5`` beside the configuration.
- ``cordscope flatfield --config CFG --objective 10x``: frames of a uniformly
  fluorescent (dye) slide per channel, a flat field each, written to
  ``<cfg stem>.calibration/<objective>-flat-<channel>.h5``.
- ``cordscope flatfield SCAN.h5``: flat fields estimated from the scan's own
  tiles, stored in its ``/calibration`` (``cordscope analyze`` applies them).

Every scan with that configuration and objective copies the files into its
own ``/calibration`` (``acquisition.calibration.scan_calibration_files``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from acquisition.calibration import (
    CalibrationAcquisitionError,
    acquire_bead_stack,
    acquire_blank_field,
    acquire_dark_frames,
    flat_file,
    psf_file,
)
from acquisition.demo import find_demo_hub
from acquisition.hardware import build_core
from acquisition.rig_profile import load_rig_profile, rig_profile_path
from acquisition.roles import decide_channel_group, decide_objective_group
from acquisition.storage import StorageError, in_use
from analysis.calibration import measure_dark, write_calibration_file
from analysis.flatfield import flat_from_blank
from analysis.psf import measure_psf_from_beads
from analysis.scan_calibration import scan_flat_fields, store_flat_fields

__all__ = ["run_calibrate", "run_flatfield_from_config", "run_flatfield_from_scan"]

#: Fewer beads than this give a PSF, with a warning that it rests on few beads.
FEW_BEADS = 20
#: Fewer scan tiles than this give a flat field with a warning (errors of several %).
FEW_TILES = 300
#: Blank-field frames with more than this fraction of pixels at full scale are refused.
MAX_SATURATED_FRACTION = 1e-3


class _Microscope:
    """A core with the objective set and the channel group decided."""

    def __init__(
        self,
        config: Path | None,
        *,
        trust_config: bool,
        objective: str,
        channel_group: str | None,
        objective_group: str | None,
    ) -> None:
        self.core = build_core(config, trust_config=trust_config)
        self.config_path = Path(self.core.systemConfigurationFile() or config or "")
        group = decide_objective_group(self.core, objective_group).group
        presets = list(self.core.getAvailableConfigs(group))
        if objective not in presets:
            raise ValueError(f"--objective {objective}: {group} presets are {', '.join(presets)}")
        self.core.setConfig(group, objective)
        self.core.waitForConfig(group, objective)
        self.objective = objective
        self.channel_group = decide_channel_group(self.core, channel_group, objective_group=group).group
        self.channels = list(self.core.getAvailableConfigs(self.channel_group))

    def check_channel(self, channel: str) -> None:
        if channel not in self.channels:
            raise ValueError(
                f"--channel {channel}: {self.channel_group} presets are {', '.join(self.channels)}"
            )

    def dark_offset_adu(self, channel: str, exposure_ms: float, given: float | None) -> tuple[float, str]:
        """The camera offset at this channel's exposure: given, or from dark frames (shutter closed)."""
        if given is not None:
            return float(given), "given"
        if not self.core.getShutterDevice():
            raise CalibrationAcquisitionError(
                "no shutter device in the configuration: dark frames need the light blocked; block it "
                "and give the camera offset with --dark-offset-adu"
            )
        frames = acquire_dark_frames(self.core, {channel: exposure_ms}, channel_group=self.channel_group)[
            channel
        ]
        dark = measure_dark(
            frames.frames, channel=channel, exposure_ms=exposure_ms, bit_depth=frames.bit_depth
        )
        return dark.offset_adu, f"{dark.n_frames} dark frames, read noise {dark.read_noise_adu:.2f} ADU"

    def close(self) -> None:
        self.core.close()


def _position(
    m: _Microscope, x_um: float | None, y_um: float | None, *, what: str
) -> tuple[tuple[float, float] | None, str]:
    """Where to image: given; the rig profile's ``calibration`` position; the demo slide's; or here."""
    if (x_um is None) != (y_um is None):
        raise ValueError("give both --x-um and --y-um, or neither")
    if x_um is not None and y_um is not None:
        return (float(x_um), float(y_um)), "given"
    profile_path = rig_profile_path(m.config_path)
    if profile_path.is_file():
        positions = load_rig_profile(profile_path).calibration
        xy = None if positions is None else getattr(positions, f"{what}_xy_um")
        if xy is not None:
            return (float(xy[0]), float(xy[1])), f"{what}_xy_um of {profile_path.name}"
    hub = find_demo_hub(m.core)
    if what == "bead" and hub is not None:
        x0, y0, x1, y1 = hub.slide.beads().area_um
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0), "the demo slide's bead area"
    if what == "bead":
        raise ValueError(
            f"where are the beads? give --x-um and --y-um, or calibration.bead_xy_um in {profile_path.name}"
        )
    return None, "where the stage is"


def _bead_focus(m: _Microscope, xy: tuple[float, float], channel: str, exposure_ms: float) -> float:
    from acquisition.focus import software_autofocus

    result = software_autofocus(
        m.core, xy_um=xy, channel_group=m.channel_group, channel=channel, exposure_ms=exposure_ms
    )
    if not result.ok or result.z_um is None:
        raise CalibrationAcquisitionError(
            f"autofocus on the beads at x {xy[0]:.0f}, y {xy[1]:.0f} µm failed ({result.reason}); "
            "focus on them and give --z-um"
        )
    return float(result.z_um)


def run_calibrate(
    console: Console,
    *,
    config: Path | None,
    trust_config: bool,
    objective: str,
    channel: str,
    exposure_ms: float,
    x_um: float | None,
    y_um: float | None,
    z_um: float | None,
    z_range_um: float,
    z_step_um: float,
    size_offset_um2: float,
    dark_offset_adu: float | None,
    channel_group: str | None,
    objective_group: str | None,
) -> Path:
    """Image the bead area, measure the PSF, write the objective's PSF file; return its path."""
    if not exposure_ms > 0:
        raise ValueError(f"--exposure-ms must be > 0, got {exposure_ms}")
    m = _Microscope(
        config,
        trust_config=trust_config,
        objective=objective,
        channel_group=channel_group,
        objective_group=objective_group,
    )
    try:
        m.check_channel(channel)
        xy, where = _position(m, x_um, y_um, what="bead")
        assert xy is not None
        offset, offset_note = m.dark_offset_adu(channel, exposure_ms, dark_offset_adu)
        if z_um is None:
            z_um, focus_note = _bead_focus(m, xy, channel, exposure_ms), "autofocus"
        else:
            focus_note = "given"
        stack = acquire_bead_stack(
            m.core,
            channel,
            exposure_ms,
            xy_um=xy,
            z_center_um=z_um,
            z_range_um=z_range_um,
            z_step_um=z_step_um,
        )
        psf, beads = measure_psf_from_beads(
            stack.frames, pixel_size_um=stack.pixel_size_um, dark_offset_adu=offset, objective=objective
        )
        if size_offset_um2:
            psf = psf.with_size_offset(size_offset_um2)
        planes = np.bincount(beads.z_index[beads.used], minlength=len(stack.z_um))
        out = write_calibration_file(
            psf_file(m.config_path, objective),
            psf=psf,
            channel=channel,
            objective=objective,
            config_file=m.config_path,
            pixel_size_um=stack.pixel_size_um,
            extra={
                "xy_um": list(xy),
                "xy_source": where,
                "z_um": z_um,
                "z_source": focus_note,
                "z_planes_um": stack.z_um.tolist(),
                "beads_per_plane": planes.tolist(),
                "n_beads_fitted": len(beads.used),
                "exposure_ms": exposure_ms,
                "dark_offset_adu": offset,
                "dark_offset_source": offset_note,
            },
        )
    finally:
        m.close()
    console.print(
        f"PSF of {objective} in {channel}: FWHM {psf.fwhm_um:.2f} µm (σ {psf.sigma_um:.3f} µm) from "
        f"{psf.n_beads} beads of {len(beads.used)} fitted, at x {xy[0]:.0f}, y {xy[1]:.0f} µm ({where}), "
        f"z {z_um:.2f} µm ({focus_note}); offset {offset:.2f} ADU ({offset_note})",
        highlight=False,
    )
    if psf.n_beads < FEW_BEADS:
        console.print(
            f"[yellow]only {psf.n_beads} beads: image a denser bead area for a firmer PSF", highlight=False
        )
    if len(planes) >= 3 and (planes[0] + planes[-1]) > 0.3 * planes.sum():
        console.print(
            "[yellow]many beads were sharpest at the ends of the stack: the focus is off; give --z-um or a "
            "wider --z-range-um",
            highlight=False,
        )
    console.print(f"wrote {out}; scans with {m.config_path.name} at {objective} use it", highlight=False)
    return out


def run_flatfield_from_config(
    console: Console,
    *,
    config: Path | None,
    trust_config: bool,
    objective: str,
    channels: Sequence[str],
    exposure_ms: float,
    x_um: float | None,
    y_um: float | None,
    n_frames: int,
    dark_offset_adu: float | None,
    channel_group: str | None,
    objective_group: str | None,
) -> list[Path]:
    """Blank-field flat fields per channel from a uniform (dye) slide; write one file each."""
    if not exposure_ms > 0 or n_frames < 1:
        raise ValueError(f"--exposure-ms must be > 0 and --frames ≥ 1, got {exposure_ms}, {n_frames}")
    m = _Microscope(
        config,
        trust_config=trust_config,
        objective=objective,
        channel_group=channel_group,
        objective_group=objective_group,
    )
    written: list[Path] = []
    try:
        for ch in channels:
            m.check_channel(ch)
        xy, where = _position(m, x_um, y_um, what="blank")
        hub = find_demo_hub(m.core)
        put_back = None
        if hub is not None and xy is None:
            # the demo microscope: its uniform dye slide goes on the stage for the blank field
            put_back = str(m.core.getProperty(hub.get_label(), "Slide"))
            m.core.setProperty(hub.get_label(), "Slide", "dye")
            where = "the demo's dye slide, put on the stage for it"
        try:
            for ch in channels or m.channels:
                flat = _blank_field_flat(console, m, ch, exposure_ms, xy, n_frames, dark_offset_adu, where)
                written.append(flat)
        finally:
            if hub is not None and put_back is not None:
                m.core.setProperty(hub.get_label(), "Slide", put_back)
    finally:
        m.close()
    console.print(f"scans with {m.config_path.name} at {objective} use them", highlight=False)
    return written


def _blank_field_flat(
    console: Console,
    m: _Microscope,
    channel: str,
    exposure_ms: float,
    xy: tuple[float, float] | None,
    n_frames: int,
    dark_offset_adu: float | None,
    where: str,
) -> Path:
    offset, offset_note = m.dark_offset_adu(channel, exposure_ms, dark_offset_adu)
    frames = acquire_blank_field(m.core, channel, exposure_ms, xy_um=xy, n_frames=n_frames)
    top = 2**frames.bit_depth - 1
    saturated = float(np.mean(frames.frames >= top))
    if saturated > MAX_SATURATED_FRACTION:
        raise CalibrationAcquisitionError(
            f"{channel}: {100 * saturated:.1f} % of the blank-field pixels are saturated: "
            "shorten --exposure-ms"
        )
    flat = flat_from_blank(frames.frames, dark_offset_adu=offset, channel=channel)
    out = write_calibration_file(
        flat_file(m.config_path, m.objective, channel),
        flat=flat,
        channel=channel,
        objective=m.objective,
        config_file=m.config_path,
        pixel_size_um=frames.pixel_size_um,
        extra={
            "xy_um": None if frames.xy_um is None else list(frames.xy_um),
            "xy_source": where,
            "exposure_ms": exposure_ms,
            "dark_offset_adu": offset,
            "dark_offset_source": offset_note,
            "mean_signal_adu": float(frames.frames.mean() - offset),
        },
    )
    console.print(
        f"flat field of {channel} at {m.objective}: fall-off {flat.fall_off_pct:.1f} % to the corners, fit "
        f"residual {flat.fit_residual_pct:.2f} %, from {flat.n_images} frames ({where}) → {out}",
        highlight=False,
    )
    return out


def run_flatfield_from_scan(console: Console, scan_file: Path, channels: Sequence[str]) -> dict[str, Any]:
    """Flat fields from a scan's own tiles, stored in its ``/calibration``; return them per channel."""
    if scan_file.is_file() and in_use(scan_file):
        raise StorageError(
            f"{scan_file} is in use (a running scan writes it, or a program has it open); estimate its "
            "flat fields once that scan has ended or the program has closed it"
        )
    flats = scan_flat_fields(scan_file, channels=list(channels) or None)
    store_flat_fields(scan_file, flats)
    for ch, flat in flats.items():
        console.print(
            f"flat field of {ch} from {flat.n_images} tiles of {scan_file.name}: fall-off "
            f"{flat.fall_off_pct:.1f} % to the corners, fit residual {flat.fit_residual_pct:.2f} %",
            highlight=False,
        )
        if flat.n_images < FEW_TILES:
            console.print(
                f"[yellow]{ch}: only {flat.n_images} tiles: a flat field from a scan's own tiles is off by "
                f"several % until a few hundred tiles (4-5 % from 60 tiles of the demo slide); a blank "
                "field is within 1 % (cordscope flatfield --config CFG --objective OBJ)",
                highlight=False,
            )
    console.print(
        f"stored in {scan_file}'s /calibration; apply it: cordscope analyze {scan_file}", highlight=False
    )
    return dict(flats)
