"""Calibration images from the microscope: dark frames, blank fields, bead z-stacks.

Pure pymmcore-plus calls on a loaded core; what the images mean is worked
out in ``analysis.calibration`` (dark offset, read noise), ``analysis.flatfield``
and ``analysis.psf``. Every function leaves the microscope as it found it:
channel, exposure, auto-shutter, shutter state, stage and focus positions
are restored (also when a device fails).

Dark frames and the shutter
---------------------------
With auto-shutter on, Micro-Manager opens the shutter for every snap and
closes it afterwards, so a snap is never dark. :func:`acquire_dark_frames`
switches auto-shutter off and closes the shutter for the duration, then
restores both. A configuration without a shutter device cannot take dark
frames unattended: the function refuses, unless the caller confirms the
light path is blocked (``light_blocked=True``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from pymmcore_plus import CMMCorePlus

from acquisition.errors import CordScopeError

__all__ = [
    "CalibrationAcquisitionError",
    "CalibrationFrames",
    "acquire_bead_stack",
    "acquire_blank_field",
    "acquire_dark_frames",
]


class CalibrationAcquisitionError(CordScopeError):
    """Calibration images cannot be taken with this configuration (the message says why)."""


@dataclass(frozen=True, eq=False)
class CalibrationFrames:
    """Frames of one calibration acquisition and how they were taken.

    Attributes
    ----------
    kind : {"dark", "blank_field", "beads"}
    frames : (N, H, W) array
        Raw camera frames (the camera's dtype), N frames or N focus planes.
    channel : str
        Channel preset.
    exposure_ms : float
    bit_depth : int
        Camera bit depth (full scale ``2**bit_depth − 1``).
    pixel_size_um : float
        Pixel size with the objective in use.
    objective : str
        Pixel-size configuration (objective) in use.
    xy_um : (float, float) or None
        Stage position (blank fields, beads).
    z_um : (N,) float64
        Focus of each frame.
    camera : str
        Camera device label.
    created : str
        ISO date and time.
    metadata : dict
        Anything else worth keeping (e.g. the shutter used).
    """

    kind: str
    frames: NDArray[np.generic]
    channel: str
    exposure_ms: float
    bit_depth: int
    pixel_size_um: float
    objective: str
    xy_um: tuple[float, float] | None
    z_um: NDArray[np.float64]
    camera: str
    created: str
    metadata: dict[str, object] = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _restored(core: CMMCorePlus) -> Iterator[None]:
    """Put channel, exposure, auto-shutter, shutter, stage and focus back afterwards."""
    group = core.getChannelGroup()
    channel = core.getCurrentConfig(group) if group else ""
    exposure = core.getExposure()
    auto = core.getAutoShutter()
    shutter = core.getShutterDevice()
    was_open = core.getShutterOpen() if shutter else False
    xy = core.getXYPosition() if core.getXYStageDevice() else None
    z = core.getPosition() if core.getFocusDevice() else None
    try:
        yield
    finally:
        if group and channel:
            core.setConfig(group, channel)
        core.setExposure(exposure)
        if shutter:
            core.setShutterOpen(was_open)
        core.setAutoShutter(auto)
        if xy is not None:
            core.setXYPosition(*xy)
            core.waitForDevice(core.getXYStageDevice())
        if z is not None:
            core.setPosition(z)
            core.waitForDevice(core.getFocusDevice())


def _set_channel(core: CMMCorePlus, channel: str, exposure_ms: float) -> None:
    group = core.getChannelGroup()
    if not group:
        raise CalibrationAcquisitionError("the configuration defines no channel group (Core, ChannelGroup)")
    if channel not in core.getAvailableConfigs(group):
        raise CalibrationAcquisitionError(
            f"unknown channel {channel!r}: {group} presets are {', '.join(core.getAvailableConfigs(group))}"
        )
    if not exposure_ms > 0:
        raise CalibrationAcquisitionError(f"{channel}: exposure must be > 0 ms, got {exposure_ms}")
    core.setConfig(group, channel)
    core.waitForConfig(group, channel)
    core.setExposure(float(exposure_ms))


def _snap(core: CMMCorePlus, n: int) -> NDArray[np.generic]:
    frames = []
    for _ in range(n):
        core.snapImage()
        frames.append(np.array(core.getImage(), copy=True))
    return np.stack(frames)


def _frames(
    core: CMMCorePlus,
    kind: str,
    frames: NDArray[np.generic],
    channel: str,
    exposure_ms: float,
    xy_um: tuple[float, float] | None,
    z_um: Sequence[float],
    **metadata: object,
) -> CalibrationFrames:
    return CalibrationFrames(
        kind=kind,
        frames=frames,
        channel=channel,
        exposure_ms=float(exposure_ms),
        bit_depth=int(core.getImageBitDepth()),
        pixel_size_um=float(core.getPixelSizeUm()),
        objective=str(core.getCurrentPixelSizeConfig()),
        xy_um=xy_um,
        z_um=np.asarray(z_um, dtype=np.float64),
        camera=str(core.getCameraDevice()),
        created=_now(),
        metadata=dict(metadata),
    )


def acquire_dark_frames(
    core: CMMCorePlus,
    exposures_ms: Mapping[str, float],
    *,
    n_frames: int = 4,
    light_blocked: bool = False,
) -> dict[str, CalibrationFrames]:
    """Dark frames at each channel's exposure, shutter closed (module docstring).

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core.
    exposures_ms : mapping of str to float
        Channel preset → exposure (ms) the scan uses for it.
    n_frames : int
        Frames per channel (≥ 2 gives the temporal read noise).
    light_blocked : bool
        Confirm the light path is blocked when the configuration has no shutter.

    Returns
    -------
    dict of str to CalibrationFrames
        Per channel, ``kind="dark"``.

    Raises
    ------
    CalibrationAcquisitionError
        If there is no shutter (and ``light_blocked`` is not set), or a
        channel or exposure is invalid.
    """
    if n_frames < 1:
        raise CalibrationAcquisitionError(f"n_frames must be ≥ 1, got {n_frames}")
    shutter = core.getShutterDevice()
    if not shutter and not light_blocked:
        raise CalibrationAcquisitionError(
            "no shutter device in the configuration: dark frames need the light blocked; block it and "
            "pass light_blocked=True, or set the plan's dark offset"
        )
    out: dict[str, CalibrationFrames] = {}
    with _restored(core):
        core.setAutoShutter(False)
        if shutter:
            core.setShutterOpen(False)
        for channel, exposure in exposures_ms.items():
            _set_channel(core, channel, exposure)
            frames = _snap(core, n_frames)
            z = core.getPosition() if core.getFocusDevice() else float("nan")
            out[channel] = _frames(
                core, "dark", frames, channel, exposure, None, [z] * n_frames, shutter=shutter or "none"
            )
    return out


def acquire_blank_field(
    core: CMMCorePlus,
    channel: str,
    exposure_ms: float,
    *,
    xy_um: tuple[float, float] | None = None,
    z_um: float | None = None,
    n_frames: int = 8,
) -> CalibrationFrames:
    """Frames of a uniform fluorescent specimen (for :func:`analysis.flatfield.flat_from_blank`).

    Parameters
    ----------
    core : CMMCorePlus
    channel : str
        Channel preset.
    exposure_ms : float
        Exposure; fill the camera well above its offset without saturating.
    xy_um, z_um : optional
        Where to image (default: where the stage is).
    n_frames : int
        Frames to average.
    """
    with _restored(core):
        if xy_um is not None:
            core.setXYPosition(*xy_um)
            core.waitForDevice(core.getXYStageDevice())
        if z_um is not None:
            core.setPosition(z_um)
            core.waitForDevice(core.getFocusDevice())
        _set_channel(core, channel, exposure_ms)
        core.setAutoShutter(True)
        frames = _snap(core, n_frames)
        xy: tuple[float, float] | None = None
        if core.getXYStageDevice():
            x, y = core.getXYPosition()
            xy = (float(x), float(y))
        z = core.getPosition() if core.getFocusDevice() else float("nan")
        return _frames(core, "blank_field", frames, channel, exposure_ms, xy, [z] * n_frames)


def acquire_bead_stack(
    core: CMMCorePlus,
    channel: str,
    exposure_ms: float,
    *,
    xy_um: tuple[float, float],
    z_center_um: float,
    z_range_um: float = 4.0,
    z_step_um: float = 0.5,
) -> CalibrationFrames:
    """A small z-stack through a bead area (for :func:`analysis.psf.measure_psf_from_beads`).

    Parameters
    ----------
    core : CMMCorePlus
    channel : str
        Channel preset of the beads (the tracer's, so the PSF is the tracer's).
    exposure_ms : float
    xy_um : (float, float)
        Stage position of the bead area.
    z_center_um : float
        Focus of the beads (best guess); the stack spans ± ``z_range_um`` / 2.
    z_range_um, z_step_um : float
        Extent and step of the stack (µm).
    """
    if not (z_step_um > 0 and z_range_um >= 0):
        raise CalibrationAcquisitionError(
            f"z_step_um must be > 0 and z_range_um ≥ 0, got {z_step_um}, {z_range_um}"
        )
    if not core.getFocusDevice():
        raise CalibrationAcquisitionError("the configuration has no focus device: a bead z-stack needs one")
    half = int(np.floor(z_range_um / 2 / z_step_um + 1e-9))
    planes = z_center_um + z_step_um * np.arange(-half, half + 1)
    with _restored(core):
        core.setXYPosition(*xy_um)
        core.waitForDevice(core.getXYStageDevice())
        _set_channel(core, channel, exposure_ms)
        core.setAutoShutter(True)
        frames = []
        for z in planes:
            core.setPosition(float(z))
            core.waitForDevice(core.getFocusDevice())
            frames.append(_snap(core, 1)[0])
        xy = (float(core.getXYPosition()[0]), float(core.getXYPosition()[1]))
        return _frames(core, "beads", np.stack(frames), channel, exposure_ms, xy, planes.tolist())
