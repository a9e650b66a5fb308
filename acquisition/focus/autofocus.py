"""Software autofocus at a stage position and focus maps over sections: the hardware calls."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..engine import AbortRequested, DeviceTimeoutError
from ..errors import CordScopeError
from .sharpness import _grid_um, _refine_peak_um, sharpness
from .surface import MIN_POINTS_SECTION_SURFACE, FocusSurface, focus_points_in_polygon

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: Default minimal peak/median sharpness ratio of the coarse sweep for a
#: usable focus. Over tissue at 10x the demo gives ratios of 10-40, over bare
#: glass 1.00-1.02.
DEFAULT_MIN_CONTRAST = 1.5


T = TypeVar("T")


class DeviceCall(Protocol):
    """Runs one device call: ``call(description, func)`` returns ``func()``.

    The scan passes :meth:`acquisition.engine.DeviceCalls.call` (a watchdog,
    retries and abort); the default calls ``func`` directly.
    """

    def __call__(self, description: str, func: Callable[[], T], /) -> T:
        """Run ``func``, a device call that ``description`` names for messages."""


def _direct(description: str, func: Callable[[], T], /) -> T:
    return func()


#: Errors that end an autofocus at once: the device stopped answering, or the scan is being stopped.
_NOT_RETRIED = (DeviceTimeoutError, AbortRequested)


# ====================================================================== errors


class AutofocusError(CordScopeError):
    """Autofocus cannot run as asked (bad settings, missing device role)."""


class FocusHardwareError(AutofocusError):
    """A device failed during autofocus; ``device`` is its label."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device


class FocusMapError(CordScopeError):
    """No focus surface can be built (no focus point succeeded anywhere)."""


# ================================================================== autofocus


@dataclass(frozen=True, eq=False)
class AutofocusResult:
    """Outcome of one software autofocus.

    Attributes
    ----------
    z_um : float or None
        Best focus (µm, focus drive coordinates), refined between samples;
        None when ``ok`` is False.
    sharpness_peak : float
        Highest :func:`sharpness` sampled.
    z_samples_um : (K,) float array
        Every z imaged (µm), ascending; z the stage refused (outside its
        travel) are not included.
    sharpness_samples : (K,) float array
        :func:`sharpness` at each ``z_samples_um``.
    ok : bool
        True when the sweep shows a clear peak inside the sampled range.
    reason : str
        Why ``ok`` is False (empty when ok; may note a fallback when ok).
    xy_um : (float, float) or None
        Stage position focused at (µm), as asked.
    """

    z_um: float | None
    sharpness_peak: float
    z_samples_um: FloatArray
    sharpness_samples: FloatArray
    ok: bool
    reason: str
    xy_um: tuple[float, float] | None = None


class _Sweep:
    """Samples of one autofocus: moves the focus drive, snaps, scores."""

    def __init__(
        self,
        core: Any,
        focus_label: str,
        camera_label: str,
        safe_z_um: float,
        call: DeviceCall = _direct,
    ) -> None:
        self.core = core
        self.focus = focus_label
        self.camera = camera_label
        self.safe_z_um = safe_z_um  # a z the drive is known to reach
        self.call = call
        self.samples: dict[float, float] = {}
        self.refused: set[float] = set()

    def _move(self, z_um: float) -> None:
        def move() -> None:
            self.core.setPosition(self.focus, z_um)
            self.core.waitForDevice(self.focus)

        self.call(f"{self.focus}: focus to {z_um:.2f} µm", move)

    def _snap(self) -> np.ndarray:
        def snap() -> np.ndarray:
            self.core.snapImage()
            return np.asarray(self.core.getImage())

        for attempt in (1, 2):
            try:
                return self.call(f"{self.camera}: snap", snap)
            except _NOT_RETRIED:
                raise
            except Exception as e:
                if attempt == 2:
                    raise FocusHardwareError(
                        self.camera, f"snap failed twice during autofocus: {_one_line(e)}"
                    ) from e
                logger.warning("%s: snap failed during autofocus, retrying: %s", self.camera, _one_line(e))
        raise AssertionError("unreachable")  # pragma: no cover

    def sample(self, z_um: float) -> float | None:
        """Sharpness at ``z_um``, or None if the drive refuses that z (travel limit).

        A failed move is retried once. If it fails again and the drive still
        reaches a z it reached before, the z is taken as outside its travel
        and skipped; if the drive reaches nothing, it is broken.
        """
        z_um = round(float(z_um), 6)
        if z_um in self.samples:
            return self.samples[z_um]
        if z_um in self.refused:
            return None
        error: Exception | None = None
        for _ in (1, 2):
            try:
                self._move(z_um)
                error = None
                break
            except _NOT_RETRIED:
                raise
            except Exception as e:
                error = e
        if error is not None:
            try:
                self._move(self.safe_z_um)
            except _NOT_RETRIED:
                raise
            except Exception as e:
                raise FocusHardwareError(
                    self.focus,
                    f"focus drive failed: move to {z_um:.2f} µm ({_one_line(error)}), then back to "
                    f"{self.safe_z_um:.2f} µm ({_one_line(e)})",
                ) from e
            logger.info("%s: z %.2f µm refused, skipped (%s)", self.focus, z_um, _one_line(error))
            self.refused.add(z_um)
            return None
        self.safe_z_um = z_um
        value = sharpness(self._snap())
        self.samples[z_um] = value
        return value

    def arrays(self) -> tuple[FloatArray, FloatArray]:
        z = np.array(sorted(self.samples), dtype=np.float64)
        s = np.array([self.samples[v] for v in z], dtype=np.float64)
        return z, s


def _preset_devices(core: Any, group: str, preset: str) -> str:
    """Labels of the devices a configuration preset sets (the group name if unknown)."""
    try:
        labels = sorted({str(setting[0]) for setting in core.getConfigData(group, preset)})
    except Exception:  # naming the device must not hide the original error
        labels = []
    return ", ".join(labels) or group


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _set_config(core: Any, group: str, preset: str) -> None:
    core.setConfig(group, preset)
    core.waitForConfig(group, preset)


@contextlib.contextmanager
def _restored(core: Any, channel_group: str, camera_label: str, call: DeviceCall = _direct) -> Iterator[None]:
    """Put the channel preset and exposure back as they were on exit."""
    try:
        channel_before = str(
            call(f"{channel_group}: read preset", lambda: core.getCurrentConfig(channel_group))
        )
    except _NOT_RETRIED:
        raise
    except Exception:  # the group's settings match no preset now: nothing to restore
        channel_before = ""
    exposure_before = float(call(f"{camera_label}: read exposure", core.getExposure))
    try:
        yield
    except _NOT_RETRIED:
        raise  # a device that does not answer, or a stop: restoring would only wait on it again
    except BaseException:
        _restore(core, channel_group, channel_before, camera_label, exposure_before, call, failed=True)
        raise
    _restore(core, channel_group, channel_before, camera_label, exposure_before, call, failed=False)


def _restore(
    core: Any,
    channel_group: str,
    channel_before: str,
    camera_label: str,
    exposure_before: float,
    call: DeviceCall,
    *,
    failed: bool,
) -> None:
    problem: FocusHardwareError | None = None
    try:
        if channel_before and str(core.getCurrentConfig(channel_group)) != channel_before:
            call(
                f"{channel_group}: restore {channel_before}",
                lambda: _set_config(core, channel_group, channel_before),
            )
    except _NOT_RETRIED:
        if not failed:
            raise
    except Exception as e:
        problem = FocusHardwareError(
            _preset_devices(core, channel_group, channel_before),
            f"could not restore channel {channel_group}/{channel_before} after autofocus: {_one_line(e)}",
        )
    try:
        if float(call(f"{camera_label}: read exposure", core.getExposure)) != exposure_before:
            call(
                f"{camera_label}: exposure {exposure_before:g} ms", lambda: core.setExposure(exposure_before)
            )
    except _NOT_RETRIED:
        if not failed:
            raise
    except Exception as e:
        problem = problem or FocusHardwareError(
            camera_label,
            f"could not restore exposure {exposure_before:g} ms after autofocus: {_one_line(e)}",
        )
    if problem is not None:
        if not failed:  # never hide the error that is already on its way up
            raise problem
        logger.error("%s", problem)


def _check_sweep_settings(**settings: float) -> None:
    for name, value in settings.items():
        if not (math.isfinite(value) and value > 0):
            raise AutofocusError(f"autofocus setting {name} must be a positive number, got {value!r}")
    if settings["coarse_step_um"] * 2 > settings["coarse_range_um"]:
        raise AutofocusError(
            f"coarse_range_um ({settings['coarse_range_um']:g}) must span at least two coarse steps "
            f"({settings['coarse_step_um']:g} µm) so the sweep can show a peak"
        )
    if settings["fine_step_um"] > settings["fine_range_um"]:
        raise AutofocusError(
            f"fine_step_um ({settings['fine_step_um']:g}) must be <= fine_range_um "
            f"({settings['fine_range_um']:g})"
        )


def software_autofocus(
    core: Any,
    *,
    xy_um: tuple[float, float] | None,
    channel_group: str,
    channel: str,
    exposure_ms: float,
    z_center_um: float | None = None,
    coarse_range_um: float = 60.0,
    coarse_step_um: float = 5.0,
    fine_range_um: float = 8.0,
    fine_step_um: float = 1.0,
    min_contrast: float = DEFAULT_MIN_CONTRAST,
    device_call: DeviceCall = _direct,
) -> AutofocusResult:
    """Find focus by a coarse-then-fine z sweep maximising :func:`sharpness`.

    1. Coarse sweep: ``z_center ± coarse_range/2`` in ``coarse_step`` steps,
       bottom to top (one direction, so drive backlash is the same for every
       sample). The peak must stand out: max / median of the coarse samples
       ≥ ``min_contrast`` (bare glass gives ≈ 1.0), and must not be the first
       or last z reached (focus may lie beyond the sweep).
    2. Fine sweep: ``best coarse z ± fine_range/2`` in ``fine_step`` steps,
       extended by up to one coarse step if the best fine sample is at its end.
    3. Refinement: a parabola through log-sharpness of the best sample and its
       neighbours within two fine steps (i.e. a Gaussian fit); the best
       sample itself if that fit has no maximum there (noted in ``reason``).

    Z the focus drive refuses (outside its travel) are skipped, with a log
    line; see ``FocusHardwareError`` below for when a refusal is a failure.

    State afterwards: the channel preset and exposure are restored to what
    they were; XY stays at ``xy_um``; the focus drive is left at the found
    focus when ``ok``, otherwise back where it was before the call.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core with Camera, Focus (and, if ``xy_um`` is given, XYStage) roles.
    xy_um : (float, float) or None
        Stage position (µm) to focus at; None: where the stage is.
    channel_group, channel : str
        Configuration group and preset of the anatomy channel (e.g.
        ``"Channel"``, ``"DAPI"``): structure that fills the field.
    exposure_ms : float
        Exposure for the sweep (ms).
    z_center_um : float, optional
        Centre of the coarse sweep (µm). Default: the current focus position.
    coarse_range_um, coarse_step_um : float
        Full range and step of the coarse sweep (µm); the range must span at
        least two steps.
    fine_range_um, fine_step_um : float
        Full range and step of the fine sweep (µm).
    min_contrast : float
        Minimal max/median sharpness ratio of the coarse sweep (see
        :data:`DEFAULT_MIN_CONTRAST`).
    device_call : callable, optional
        Runs each device call (:class:`DeviceCall`); a scan passes
        :meth:`acquisition.engine.DeviceCalls.call` (watchdog, retries, abort).
        Default: direct calls.

    Returns
    -------
    AutofocusResult
        ``ok=False`` with a ``reason`` when there is no clear peak; never a
        made-up z.

    Raises
    ------
    AutofocusError
        Bad sweep settings, unknown channel preset, no camera or focus role.
    DeviceTimeoutError, AbortRequested
        From ``device_call``: a device stopped answering, or the scan is being stopped.
    FocusHardwareError
        Naming the device: the XY stage cannot move, the camera fails twice
        in a row, the channel cannot be set, or the focus drive refuses a z
        twice and then cannot return to a z it reached before (a refusal it
        can recover from is a travel limit and is skipped), or fewer than
        three z of the coarse sweep lie within the drive's travel.
    """
    _check_sweep_settings(
        exposure_ms=float(exposure_ms),
        coarse_range_um=float(coarse_range_um),
        coarse_step_um=float(coarse_step_um),
        fine_range_um=float(fine_range_um),
        fine_step_um=float(fine_step_um),
        min_contrast=float(min_contrast),
    )
    focus_label = str(core.getFocusDevice())
    camera_label = str(core.getCameraDevice())
    if not focus_label:
        raise AutofocusError(
            "autofocus needs a focus drive: set the Core 'Focus' role in the hardware config"
        )
    if not camera_label:
        raise AutofocusError("autofocus needs a camera: set the Core 'Camera' role in the hardware config")
    if channel_group not in core.getAvailableConfigGroups():
        raise AutofocusError(f"no configuration group {channel_group!r} for the autofocus channel")
    if channel not in core.getAvailableConfigs(channel_group):
        raise AutofocusError(
            f"no preset {channel!r} in group {channel_group!r}; "
            f"known: {list(core.getAvailableConfigs(channel_group))}"
        )

    if xy_um is not None:
        xy_label = str(core.getXYStageDevice())
        if not xy_label:
            raise AutofocusError("autofocus at a stage position needs an XY stage (Core 'XYStage' role)")

        def move_xy() -> None:
            core.setXYPosition(float(xy_um[0]), float(xy_um[1]))
            core.waitForDevice(xy_label)

        try:
            device_call(f"{xy_label}: move to ({xy_um[0]:.1f}, {xy_um[1]:.1f}) µm", move_xy)
        except _NOT_RETRIED:
            raise
        except Exception as e:
            raise FocusHardwareError(
                xy_label, f"move to ({xy_um[0]:.1f}, {xy_um[1]:.1f}) µm for autofocus failed: {_one_line(e)}"
            ) from e
        xy: tuple[float, float] | None = (float(xy_um[0]), float(xy_um[1]))
    else:
        xy = None

    try:
        z_now = float(device_call(f"{focus_label}: read position", lambda: core.getPosition(focus_label)))
    except _NOT_RETRIED:
        raise
    except Exception as e:
        raise FocusHardwareError(focus_label, f"cannot read the focus position: {_one_line(e)}") from e
    z_center = z_now if z_center_um is None else float(z_center_um)

    with _restored(core, channel_group, camera_label, device_call):
        try:
            device_call(f"channel {channel}", lambda: _set_config(core, channel_group, channel))
        except _NOT_RETRIED:
            raise
        except Exception as e:
            raise FocusHardwareError(
                _preset_devices(core, channel_group, channel),
                f"cannot set channel {channel_group}/{channel}: {_one_line(e)}",
            ) from e
        try:
            device_call(
                f"{camera_label}: exposure {exposure_ms:g} ms", lambda: core.setExposure(float(exposure_ms))
            )
        except _NOT_RETRIED:
            raise
        except Exception as e:
            raise FocusHardwareError(
                camera_label, f"cannot set exposure {exposure_ms:g} ms: {_one_line(e)}"
            ) from e

        sweep = _Sweep(core, focus_label, camera_label, safe_z_um=z_now, call=device_call)
        result = _sweep_for_focus(
            sweep,
            z_center=z_center,
            coarse_range_um=float(coarse_range_um),
            coarse_step_um=float(coarse_step_um),
            fine_range_um=float(fine_range_um),
            fine_step_um=float(fine_step_um),
            min_contrast=float(min_contrast),
            xy=xy,
        )
        _park(sweep, result.z_um if result.z_um is not None else z_now)
    return result


def _park(sweep: _Sweep, z_um: float) -> None:
    try:
        sweep._move(z_um)
    except _NOT_RETRIED:
        raise
    except Exception as e:
        raise FocusHardwareError(
            sweep.focus, f"cannot move to {z_um:.2f} µm after autofocus: {_one_line(e)}"
        ) from e


def _sweep_for_focus(
    sweep: _Sweep,
    *,
    z_center: float,
    coarse_range_um: float,
    coarse_step_um: float,
    fine_range_um: float,
    fine_step_um: float,
    min_contrast: float,
    xy: tuple[float, float] | None,
) -> AutofocusResult:
    def result(z_um: float | None, ok: bool, reason: str) -> AutofocusResult:
        z, s = sweep.arrays()
        peak = float(s.max()) if s.size else 0.0
        return AutofocusResult(z_um, peak, z, s, ok, reason, xy)

    coarse = [(z, sweep.sample(z)) for z in _grid_um(z_center, coarse_range_um, coarse_step_um)]
    reached = [(z, v) for z, v in coarse if v is not None]
    where = f"at ({xy[0]:.0f}, {xy[1]:.0f}) µm" if xy is not None else "here"
    if len(reached) < 3:
        raise FocusHardwareError(
            sweep.focus,
            f"only {len(reached)} of {len(coarse)} z of the coarse sweep around {z_center:.1f} µm are "
            "within the focus drive's travel; centre the sweep inside the travel",
        )
    z_coarse = np.array([z for z, _ in reached])
    s_coarse = np.array([v for _, v in reached])
    best = int(np.argmax(s_coarse))
    median = float(np.median(s_coarse))
    contrast = float(s_coarse[best] / median) if median > 0 else 0.0
    if contrast < min_contrast:
        return result(
            None,
            False,
            f"no clear focus peak {where}: sharpness max/median {contrast:.2f} < {min_contrast:g} "
            "(bare glass, or no structure in this channel)",
        )
    if best in (0, len(reached) - 1):
        return result(
            None,
            False,
            f"focus peak {where} at the end of the coarse sweep ({z_coarse[best]:.1f} µm of "
            f"{z_coarse[0]:.1f}..{z_coarse[-1]:.1f} µm): focus may lie outside it",
        )

    z_best_coarse = float(z_coarse[best])
    fine = _grid_um(z_best_coarse, fine_range_um, fine_step_um)
    for z in fine:
        sweep.sample(z)
    # extend the fine sweep while its best sample sits at its end (at most one coarse step)
    lo, hi = float(fine[0]), float(fine[-1])
    for _ in range(math.ceil(coarse_step_um / fine_step_um)):
        z_all, s_all = sweep.arrays()
        window = (z_all >= lo - 1e-9) & (z_all <= hi + 1e-9)
        zw, sw = z_all[window], s_all[window]
        k = int(np.argmax(sw))
        if k == len(zw) - 1 and sweep.sample(hi + fine_step_um) is not None:
            hi += fine_step_um
        elif k == 0 and sweep.sample(lo - fine_step_um) is not None:
            lo -= fine_step_um
        else:
            break

    z_all, s_all = sweep.arrays()
    window = (z_all >= lo - 1e-9) & (z_all <= hi + 1e-9)
    zw, sw = z_all[window], s_all[window]
    k = int(np.argmax(sw))
    z_fit = _refine_peak_um(zw, sw, k, fine_step_um)
    if z_fit is None:
        return result(float(zw[k]), True, "peak fit failed; best fine sample used")
    return result(z_fit, True, "")


# ================================================================== focus map


@dataclass(frozen=True, eq=False)
class FocusMap:
    """One focus surface per section, and the focus points they came from.

    Attributes
    ----------
    surfaces : dict of str to FocusSurface
        Per section id. A section with fewer than
        :data:`MIN_POINTS_SECTION_SURFACE` successful points has the global
        surface (through all successful points of the slide); see
        ``fallback_sections``.
    results : dict of str to tuple of AutofocusResult
        Every autofocus run per section, in order (for logs and reports).
    points_um : dict of str to (K, 3) float array
        Per section: focus point x, y (µm, where focus was tried) and the
        found z (µm; NaN where autofocus failed), for the scan file.
    fallback_sections : tuple of str
        Sections whose surface is the global one.
    """

    surfaces: dict[str, FocusSurface]
    results: dict[str, tuple[AutofocusResult, ...]]
    points_um: dict[str, FloatArray]
    fallback_sections: tuple[str, ...] = ()

    def z_at(self, section_id: str, x_um: ArrayLike, y_um: ArrayLike) -> FloatArray:
        """Focus z (µm) of a section at stage positions (µm); broadcasts like numpy.

        Matches the ``focus_z_um(section_id, x_um, y_um)`` callable that
        ``acquisition.plan.compile_plan`` takes (``float()`` of the 0-d
        result for scalars).
        """
        try:
            surface = self.surfaces[section_id]
        except KeyError:
            raise KeyError(
                f"no focus surface for section {section_id!r}; known: {sorted(self.surfaces)}"
            ) from None
        return surface.z_at(x_um, y_um)


def build_focus_map(
    core: Any,
    sections: Mapping[str, ArrayLike],
    *,
    points_per_section: int = 5,
    channel_group: str,
    channel: str,
    exposure_ms: float,
    coarse_range_um: float = 60.0,
    coarse_step_um: float = 5.0,
    fine_range_um: float = 8.0,
    fine_step_um: float = 1.0,
    z_start_um: float | None = None,
    tracking_range_um: float | None = None,
    min_contrast: float = DEFAULT_MIN_CONTRAST,
    progress: Callable[[str, int, int], None] | None = None,
    device_call: DeviceCall = _direct,
) -> FocusMap:
    """Autofocus at a few points per section and fit a focus surface to each.

    Points come from :func:`focus_points_in_polygon`. The first autofocus is
    a full coarse sweep around ``z_start_um``; each later one is centred on
    the last focus found (the slide surface is smooth, so it is close) and
    sweeps only ``tracking_range_um``; if that finds no clear peak (e.g. the
    focus moved more than expected between sections), it is repeated with
    the full coarse range. Points that still fail (over a lesion cavity, a
    tear, bare glass) are logged and left out of the fit.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core (Camera, Focus and XYStage roles).
    sections : mapping of str to (N, 2) float array
        Section id → outline polygon in stage µm, in scan order.
    points_per_section : int
        Focus points per section (≥ 1).
    channel_group, channel : str
        The anatomy channel (e.g. ``"Channel"``, ``"DAPI"``).
    exposure_ms : float
        Exposure for focusing (ms).
    coarse_range_um, coarse_step_um, fine_range_um, fine_step_um : float
        Sweep settings (µm), as in :func:`software_autofocus`.
    z_start_um : float, optional
        Centre of the first coarse sweep (µm). Default: the current focus.
    tracking_range_um : float, optional
        Coarse range (µm) of the sweeps after a success. Default:
        ``min(coarse_range_um, 4 × coarse_step_um)``.
    min_contrast : float
        See :func:`software_autofocus`.
    progress : callable, optional
        ``progress(section_id, points_done, points_total)`` after every focus
        point (counts over all sections), e.g. for a progress bar.
    device_call : callable, optional
        Runs each device call (see :func:`software_autofocus`); a scan's
        watchdog, retries and abort.

    Returns
    -------
    FocusMap

    Raises
    ------
    FocusMapError
        If not a single focus point succeeded (nothing to fit).
    AutofocusError, FocusHardwareError, DeviceTimeoutError, AbortRequested
        From :func:`software_autofocus`; a device failure (or a stop) ends the map.
    ValueError
        Bad polygons or ``points_per_section < 1``.
    """
    if tracking_range_um is None:
        tracking_range_um = min(coarse_range_um, 4.0 * coarse_step_um)
    if tracking_range_um < 2 * coarse_step_um:
        raise AutofocusError(
            f"tracking_range_um ({tracking_range_um:g}) must span at least two coarse steps "
            f"({coarse_step_um:g} µm)"
        )
    plan_points = {sid: focus_points_in_polygon(poly, points_per_section) for sid, poly in sections.items()}
    total = sum(len(p) for p in plan_points.values())
    sweep_kw: dict[str, Any] = {
        "channel_group": channel_group,
        "channel": channel,
        "exposure_ms": exposure_ms,
        "coarse_step_um": coarse_step_um,
        "fine_range_um": fine_range_um,
        "fine_step_um": fine_step_um,
        "min_contrast": min_contrast,
        "device_call": device_call,
    }

    last_z: float | None = None
    done = 0
    results: dict[str, tuple[AutofocusResult, ...]] = {}
    points_um: dict[str, FloatArray] = {}
    for sid, xy_points in plan_points.items():
        section_results = []
        for x, y in xy_points:
            xy = (float(x), float(y))
            if last_z is None:
                res = software_autofocus(
                    core, xy_um=xy, z_center_um=z_start_um, coarse_range_um=coarse_range_um, **sweep_kw
                )
            else:
                res = software_autofocus(
                    core, xy_um=xy, z_center_um=last_z, coarse_range_um=tracking_range_um, **sweep_kw
                )
                if not res.ok and tracking_range_um < coarse_range_um:
                    logger.info("section %s: focus at (%.0f, %.0f) µm: %s; full sweep", sid, x, y, res.reason)
                    res = software_autofocus(
                        core, xy_um=xy, z_center_um=last_z, coarse_range_um=coarse_range_um, **sweep_kw
                    )
            if res.ok and res.z_um is not None:
                last_z = res.z_um
            else:
                logger.warning("section %s: focus point (%.0f, %.0f) µm failed: %s", sid, x, y, res.reason)
            section_results.append(res)
            done += 1
            if progress is not None:
                progress(sid, done, total)
        results[sid] = tuple(section_results)
        points_um[sid] = np.array(
            [
                [r.xy_um[0], r.xy_um[1], r.z_um if r.ok and r.z_um is not None else np.nan]
                for r in section_results
                if r.xy_um is not None
            ],
            dtype=np.float64,
        ).reshape(-1, 3)

    good = {sid: p[np.isfinite(p[:, 2])] for sid, p in points_um.items()}
    all_good = np.concatenate(list(good.values())) if good else np.zeros((0, 3))
    if len(all_good) == 0:
        raise FocusMapError(
            f"no focus point succeeded in sections {sorted(sections)}: check the anatomy channel "
            f"{channel!r}, its exposure ({exposure_ms:g} ms) and the focus search range"
        )
    global_surface: FocusSurface | None = None
    surfaces: dict[str, FocusSurface] = {}
    fallback: list[str] = []
    for sid, pts in good.items():
        if len(pts) >= min(MIN_POINTS_SECTION_SURFACE, points_per_section):
            surfaces[sid] = FocusSurface.fit(pts)
        else:
            if global_surface is None:
                global_surface = FocusSurface.fit(all_good)
            logger.warning(
                "section %s: only %d of %d focus points succeeded; using the slide-wide focus surface",
                sid,
                len(pts),
                len(points_um[sid]),
            )
            surfaces[sid] = global_surface
            fallback.append(sid)
    return FocusMap(
        surfaces=surfaces, results=results, points_um=points_um, fallback_sections=tuple(fallback)
    )
