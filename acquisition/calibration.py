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
light path is blocked (``light_blocked=True``). A scan on such a
configuration takes none and says so (:func:`scan_dark_frames`); its
analysis then subtracts the plan's ``dark_offset_adu``.

Calibration files beside the configuration
------------------------------------------
What is measured once per rig and objective lives beside the ``.cfg``, in
``<cfg stem>.calibration/`` (:func:`calibration_dir`):
``<objective>-psf.h5`` (``cordscope calibrate``: the tracer's PSF from
beads) and ``<objective>-flat-<channel>.h5`` (``cordscope flatfield
--config``: a blank-field flat field). Every scan with that configuration
and objective copies them into its file (:func:`scan_calibration_files`),
so the file says what it was calibrated with even if the files change
later.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from numpy.typing import NDArray
from pymmcore_plus import CMMCorePlus

from acquisition.engine import AbortRequested, DeviceTimeoutError, unanswered_device_calls
from acquisition.errors import CordScopeError
from acquisition.storage import DarkFrames

if TYPE_CHECKING:
    from acquisition.plan import ScanPlan

__all__ = [
    "DARK_FRAMES_PER_CHANNEL",
    "CalibrationAcquisitionError",
    "CalibrationFrames",
    "ScanCalibrationInputs",
    "acquire_bead_stack",
    "acquire_blank_field",
    "acquire_dark_frames",
    "calibration_dir",
    "flat_file",
    "plan_calibration_inputs",
    "psf_file",
    "scan_calibration_files",
    "scan_calibration_inputs",
    "scan_dark_frames",
]

#: Dark frames a scan takes per channel at its start (two or more give the temporal read noise).
DARK_FRAMES_PER_CHANNEL = 4


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
    except (DeviceTimeoutError, AbortRequested):
        # a device that does not answer still holds its call (a time-out, or an abort while
        # waiting for it): touching it again would hang this thread too, and the command must end
        if not unanswered_device_calls():
            _put_back(core, group, channel, exposure, shutter, was_open, auto, xy, z)
        raise
    except BaseException:
        _put_back(core, group, channel, exposure, shutter, was_open, auto, xy, z)
        raise
    _put_back(core, group, channel, exposure, shutter, was_open, auto, xy, z)


def _put_back(
    core: CMMCorePlus,
    group: str,
    channel: str,
    exposure: float,
    shutter: str,
    was_open: bool,
    auto: bool,
    xy: Sequence[float] | None,
    z: float | None,
) -> None:
    if group and channel:
        core.setConfig(group, channel)
    core.setExposure(exposure)
    if shutter:
        core.setShutterOpen(shutter, was_open)
    core.setAutoShutter(auto)
    if xy is not None:
        core.setXYPosition(*xy)
        core.waitForDevice(core.getXYStageDevice())
    if z is not None:
        core.setPosition(z)
        core.waitForDevice(core.getFocusDevice())


def _set_channel(core: CMMCorePlus, channel: str, exposure_ms: float, group: str | None = None) -> None:
    group = group or core.getChannelGroup()
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


DeviceCall = Callable[[str, Callable[[], Any]], Any]
"""``call(description, func)``: runs one device call (e.g. under a watchdog, with retries)."""


def _direct(description: str, func: Callable[[], Any]) -> Any:
    return func()


def _snap(core: CMMCorePlus, n: int, call: DeviceCall = _direct) -> NDArray[np.generic]:
    def one() -> NDArray[np.generic]:
        core.snapImage()
        return np.array(core.getImage(), copy=True)

    camera = core.getCameraDevice()
    return np.stack([call(f"{camera}: snap", one) for _ in range(n)])


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
    channel_group: str | None = None,
    device_call: DeviceCall = _direct,
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
    channel_group : str, optional
        Config group of the channel presets (default: the core's channel group).
    device_call : callable, optional
        Runs each snap (``device_call(description, func)``), e.g. under a watchdog
        with retries; default: directly.

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
        if shutter:  # named: pymmcore-plus' one-argument form announces a Python shutter as ""
            core.setShutterOpen(shutter, False)
        for channel, exposure in exposures_ms.items():
            _set_channel(core, channel, exposure, channel_group)
            frames = _snap(core, n_frames, device_call)
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


# ------------------------------------------------------------- scans


def scan_dark_frames(
    core: CMMCorePlus,
    exposures_ms: Mapping[str, float],
    *,
    channel_group: str,
    n_frames: int = DARK_FRAMES_PER_CHANNEL,
    device_call: DeviceCall = _direct,
) -> tuple[list[DarkFrames], str | None]:
    """A scan's dark frames, ready for the scan file; or none, and why, without a shutter.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core, objective set.
    exposures_ms : mapping of str to float
        Channel preset → the scan's exposure (ms).
    channel_group : str
        Config group of the channel presets.
    n_frames : int
        Frames per channel.
    device_call : callable, optional
        Runs each snap (see :func:`acquire_dark_frames`).

    Returns
    -------
    (list of DarkFrames, str or None)
        The frames (empty without a shutter, or when the camera failed) and,
        when none could be taken, one line saying so.

    Raises
    ------
    AbortRequested, DeviceTimeoutError
        From ``device_call``: the scan was stopped, or the camera did not answer.
    """
    if not core.getShutterDevice():
        return [], (
            "no shutter device in the configuration: no dark frames taken (the light path cannot be "
            "closed unattended); the analysis subtracts the plan's dark_offset_adu"
        )
    try:
        frames = acquire_dark_frames(
            core, exposures_ms, n_frames=n_frames, channel_group=channel_group, device_call=device_call
        )
    except (AbortRequested, DeviceTimeoutError):
        raise  # stopped, or a camera that does not answer: the scan cannot go on either
    except Exception as e:  # the tiles matter more: the scan goes on and says what it lacks
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return [], (f"no dark frames taken ({first}); the analysis subtracts the plan's dark_offset_adu")
    return [
        DarkFrames(
            channel=f.channel,
            frames=f.frames,
            exposure_ms=f.exposure_ms,
            bit_depth=f.bit_depth,
            attrs={
                "camera": f.camera,
                "shutter": str(f.metadata.get("shutter", "")),
                "objective": f.objective,
                "created": f.created,
            },
        )
        for f in frames.values()
    ], None


def _file_part(name: str) -> str:
    """A preset name as a file-name part (letters, digits, ``.``, ``_``, ``-``; others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.strip()) or "_"


def calibration_dir(config_path: str | Path) -> Path:
    """Folder of a configuration's calibration files: ``<cfg stem>.calibration`` beside the ``.cfg``."""
    path = Path(config_path)
    return path.with_name(f"{path.stem}.calibration")


def psf_file(config_path: str | Path, objective: str) -> Path:
    """The PSF calibration file of an objective (``cordscope calibrate`` writes it)."""
    return calibration_dir(config_path) / f"{_file_part(objective)}-psf.h5"


def flat_file(config_path: str | Path, objective: str, channel: str) -> Path:
    """The blank-field flat-field file of an objective and channel (``cordscope flatfield --config``)."""
    return calibration_dir(config_path) / f"{_file_part(objective)}-flat-{_file_part(channel)}.h5"


def scan_calibration_files(
    config_path: str | Path | None, objective: str, channels: Sequence[str], *, tracer_channel: str
) -> tuple[dict[Path, list[str]], list[str]]:
    """The calibration files a scan copies into its file, the parts of each, and what does not fit.

    The objective's PSF file, if it was measured in the tracer's channel
    (a PSF depends on the wavelength), and per channel its flat-field file.

    Parameters
    ----------
    config_path : path or None
        The hardware configuration the scan runs with (None: no files).
    objective : str
        Objective preset of the scan.
    channels : sequence of str
        The scan's channel presets.
    tracer_channel : str
        The tracer's preset.

    Returns
    -------
    (dict of Path to list of str, list of str)
        Existing files and their parts to copy; one line per file left out, and why.
    """
    if not config_path:
        return {}, []
    found: dict[Path, list[str]] = {}
    skipped: list[str] = []
    psf = psf_file(config_path, objective)
    if psf.is_file():
        measured_in = _root_attr(psf, "channel")
        if measured_in not in (None, tracer_channel):
            skipped.append(
                f"{psf.name} was measured in {measured_in}, not in the tracer channel "
                f"{tracer_channel}: not used"
            )
        else:
            found[psf] = ["psf"]
    for channel in channels:
        flat = flat_file(config_path, objective, channel)
        if flat.is_file():
            found[flat] = [f"flat/{channel}"]
    return found, skipped


def _root_attr(path: Path, name: str) -> str | None:
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(name)
    except OSError as e:
        raise CalibrationAcquisitionError(f"cannot read the calibration file {path}: {e}") from e
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return None if value is None else str(value)


@dataclass(frozen=True, eq=False)
class ScanCalibrationInputs:
    """What a scan stores in its ``/calibration`` group at its start, and what to tell the user.

    Attributes
    ----------
    dark_frames : list of DarkFrames
        Taken now (channels the file already holds are not taken again).
    files : dict of Path to list of str
        Calibration files beside the configuration and the parts to copy.
    info : str
        One line: what the scan is calibrated with.
    warnings : list of str
        One line per calibration the scan cannot take or use.
    """

    dark_frames: list[DarkFrames]
    files: dict[Path, list[str]]
    info: str
    warnings: list[str]


def scan_calibration_inputs(
    core: CMMCorePlus,
    *,
    channel_group: str,
    exposures_ms: Mapping[str, float],
    tracer_channel: str,
    objective: str,
    config_path: str | Path | None,
    have_dark_frames: Sequence[str] = (),
    n_frames: int = DARK_FRAMES_PER_CHANNEL,
    device_call: DeviceCall = _direct,
) -> ScanCalibrationInputs:
    """Take a scan's dark frames and find its calibration files (the scan's *preparing* step).

    Nothing moves the stage: the shutter is closed, channels and exposures
    are switched and put back.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core, the scan's objective set.
    channel_group : str
    exposures_ms : mapping of str to float
        The scan's channels and exposures.
    tracer_channel : str
    objective : str
    config_path : path or None
        The configuration the core was loaded from (its calibration folder is searched).
    have_dark_frames : sequence of str
        Channels whose dark frames the file already holds (a resumed scan keeps them).
    n_frames : int
        Dark frames per channel.
    device_call : callable, optional
        Runs each snap (see :func:`acquire_dark_frames`).
    """
    missing = {ch: ms for ch, ms in exposures_ms.items() if ch not in set(have_dark_frames)}
    warnings: list[str] = []
    darks: list[DarkFrames] = []
    if missing:
        darks, why_not = scan_dark_frames(
            core, missing, channel_group=channel_group, n_frames=n_frames, device_call=device_call
        )
        if why_not:
            warnings.append(why_not)
    files, skipped = scan_calibration_files(
        config_path, objective, list(exposures_ms), tracer_channel=tracer_channel
    )
    warnings += skipped
    parts = []
    if darks:
        parts.append(
            f"dark frames of {', '.join(d.channel for d in darks)} ({n_frames} each, shutter closed)"
        )
    kept = [ch for ch in exposures_ms if ch in set(have_dark_frames)]
    if kept:
        parts.append(f"dark frames of {', '.join(kept)} kept from the start of the scan")
    psf = [p for p, what in files.items() if "psf" in what]
    parts.append(f"PSF from {psf[0].parent.name}/{psf[0].name}" if psf else "no PSF calibration file")
    flats = [p for p, what in files.items() if any(w.startswith("flat/") for w in what)]
    parts.append(f"flat fields from {', '.join(f.name for f in flats)}" if flats else "no flat-field file")
    return ScanCalibrationInputs(darks, files, "calibration: " + "; ".join(parts), warnings)


def plan_calibration_inputs(
    core: CMMCorePlus,
    plan: ScanPlan,
    have_dark_frames: Sequence[str] = (),
    *,
    device_call: DeviceCall = _direct,
) -> ScanCalibrationInputs:
    """:func:`scan_calibration_inputs` for a scan plan (groups resolved, its objective set)."""
    return scan_calibration_inputs(
        core,
        channel_group=plan.groups[0],
        exposures_ms={ch.preset: ch.exposure_ms for ch in plan.channels},
        tracer_channel=plan.tracer_channel.preset,
        objective=plan.objective,
        config_path=core.systemConfigurationFile() or plan.hardware_config,
        have_dark_frames=have_dark_frames,
        device_call=device_call,
    )
