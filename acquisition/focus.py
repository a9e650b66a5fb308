"""Software autofocus and per-section focus maps.

A slide is never perfectly flat on the stage: it is tilted by a fraction of
a µm per mm and gently wavy, so one fixed focus drive position leaves tiles
at the far ends of a slide (and of a long horizontal section) visibly
blurred. This module finds focus in software, from images of the anatomy
channel (e.g. DAPI), and interpolates it across each section:

- :func:`sharpness` scores one image (higher = sharper);
- :func:`software_autofocus` sweeps the focus drive coarse-then-fine at one
  stage position and returns the z of maximal sharpness, or says why it
  could not (``ok=False``: bare glass, peak outside the sweep);
- :func:`focus_points_in_polygon` chooses where in a section to focus;
- :class:`FocusSurface` is a robust least-squares plane or quadratic
  z(x, y) through focus points;
- :func:`build_focus_map` focuses at a few points per section and fits one
  surface per section (:class:`FocusMap`), whose ``z_at(section_id, x, y)``
  gives every tile its focus.

Everything here talks to the microscope only through the ordinary core API
(``setPosition``, ``snapImage`` ...); nothing reads the demo slide's truth,
so the same code runs on a real rig.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import CordScopeError

__all__ = [
    "AutofocusError",
    "AutofocusResult",
    "FocusHardwareError",
    "FocusMap",
    "FocusMapError",
    "FocusSurface",
    "build_focus_map",
    "focus_points_in_polygon",
    "sharpness",
    "software_autofocus",
]

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: Default minimal peak/median sharpness ratio of the coarse sweep for a
#: usable focus. Over tissue at 10x the demo gives ratios of 10-40, over bare
#: glass 1.00-1.02.
DEFAULT_MIN_CONTRAST = 1.5

#: A surface is quadratic from this many (inlier) points on, a plane below.
MIN_POINTS_QUADRATIC = 6

#: A section needs this many successful focus points for a surface of its own;
#: with fewer it gets the global surface through all points of the slide.
MIN_POINTS_SECTION_SURFACE = 3


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


# =================================================================== sharpness


def sharpness(image: ArrayLike) -> float:
    """Focus score of one image: normalised variance of its Laplacian.

    The image is binned 2×2 (averaging four pixels halves the shot and read
    noise, so the score reflects structure, not noise), the 5-point
    Laplacian of the binned image is taken, and its variance is divided by
    the squared mean of the binned image. Defocus blur removes the fine
    structure the Laplacian responds to, so the score peaks sharply at focus
    (at 10x on the demo slide it drops to ~20 % of the peak 5 µm off focus).
    Dividing by the squared mean makes the score independent of brightness
    (exposure, lamp power, gain): ``sharpness(k * image) == sharpness(image)``.
    A camera offset only scales the score at all z alike, so it moves
    neither the peak nor the peak/median ratio.

    Parameters
    ----------
    image : (H, W) array
        One camera frame, any real dtype (uint16 typically). H, W ≥ 6.

    Returns
    -------
    float
        Dimensionless score ≥ 0; 0 for an all-dark (mean ≤ 0) image.
        About 5 ms for a 2048 × 2048 uint16 frame.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or smaller than 6 × 6 pixels.
    """
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"sharpness needs a 2-D image, got shape {a.shape}")
    h, w = a.shape
    if h < 6 or w < 6:
        raise ValueError(f"sharpness needs an image of at least 6 × 6 pixels, got {h} × {w}")
    h -= h % 2
    w -= w % 2
    a = a[:h, :w]
    # 2×2 sums in float32 (exact for 16-bit data); the score is scale-free, so
    # sums need no division. Few, reused buffers: fresh large arrays cost page faults.
    rows = np.add(a[0::2], a[1::2], dtype=np.float32)
    binned = np.add(rows[:, 0::2], rows[:, 1::2])
    mean = float(binned.mean(dtype=np.float64))
    if not mean > 0.0:
        return 0.0
    hb, wb = binned.shape
    quarter_lap = rows.reshape(-1)[: (hb - 2) * (wb - 2)].reshape(hb - 2, wb - 2)
    np.add(binned[1:-1, 2:], binned[1:-1, :-2], out=quarter_lap)
    quarter_lap += binned[2:, 1:-1]
    quarter_lap += binned[:-2, 1:-1]
    quarter_lap *= 0.25
    quarter_lap -= binned[1:-1, 1:-1]  # (mean of 4 neighbours − centre) = Laplacian / 4
    flat = quarter_lap.reshape(-1)
    lap_mean = float(flat.mean(dtype=np.float64))
    mean_square = float(np.dot(flat, flat)) / flat.size
    variance = 16.0 * max(mean_square - lap_mean * lap_mean, 0.0)
    return variance / (mean * mean)


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

    def __init__(self, core: Any, focus_label: str, camera_label: str, safe_z_um: float) -> None:
        self.core = core
        self.focus = focus_label
        self.camera = camera_label
        self.safe_z_um = safe_z_um  # a z the drive is known to reach
        self.samples: dict[float, float] = {}
        self.refused: set[float] = set()

    def _move(self, z_um: float) -> None:
        self.core.setPosition(self.focus, z_um)
        self.core.waitForDevice(self.focus)

    def _snap(self) -> np.ndarray:
        for attempt in (1, 2):
            try:
                self.core.snapImage()
                return np.asarray(self.core.getImage())
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
            except Exception as e:
                error = e
        if error is not None:
            try:
                self._move(self.safe_z_um)
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


def _grid_um(center_um: float, full_range_um: float, step_um: float) -> FloatArray:
    """Return z positions ``center ± range/2`` in whole steps (always with the centre)."""
    half = math.floor(full_range_um / 2.0 / step_um + 1e-9)
    return center_um + step_um * np.arange(-half, half + 1, dtype=np.float64)


def _refine_peak_um(z_um: FloatArray, s: FloatArray, best: int, fine_step_um: float) -> float | None:
    """Vertex of a parabola through log-sharpness near the best sample (a Gaussian fit).

    Uses the samples within two fine steps of the best one; None when there
    is no sample on one side or the fit has no maximum among them.
    """
    z0 = z_um[best]
    near = np.abs(z_um - z0) <= 2.0 * fine_step_um + 1e-9
    zn, sn = z_um[near] - z0, s[near]
    if not (np.any(zn < 0) and np.any(zn > 0)) or np.any(sn <= 0):
        return None
    design = np.column_stack([np.ones_like(zn), zn, zn * zn])
    (_, b, c), *_ = np.linalg.lstsq(design, np.log(sn), rcond=None)
    if not c < 0:
        return None
    vertex = -b / (2.0 * c)
    if not zn.min() <= vertex <= zn.max():
        return None
    return float(z0 + vertex)


@contextlib.contextmanager
def _restored(core: Any, channel_group: str, camera_label: str) -> Iterator[None]:
    """Put the channel preset and exposure back as they were on exit."""
    try:
        channel_before = str(core.getCurrentConfig(channel_group))
    except Exception:  # the group's settings match no preset now: nothing to restore
        channel_before = ""
    exposure_before = float(core.getExposure())
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        problem: FocusHardwareError | None = None
        try:
            if channel_before and str(core.getCurrentConfig(channel_group)) != channel_before:
                core.setConfig(channel_group, channel_before)
                core.waitForConfig(channel_group, channel_before)
        except Exception as e:
            problem = FocusHardwareError(
                _preset_devices(core, channel_group, channel_before),
                f"could not restore channel {channel_group}/{channel_before} after autofocus: {_one_line(e)}",
            )
        try:
            if float(core.getExposure()) != exposure_before:
                core.setExposure(exposure_before)
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

    Returns
    -------
    AutofocusResult
        ``ok=False`` with a ``reason`` when there is no clear peak; never a
        made-up z.

    Raises
    ------
    AutofocusError
        Bad sweep settings, unknown channel preset, no camera or focus role.
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
        try:
            core.setXYPosition(float(xy_um[0]), float(xy_um[1]))
            core.waitForDevice(xy_label)
        except Exception as e:
            raise FocusHardwareError(
                xy_label, f"move to ({xy_um[0]:.1f}, {xy_um[1]:.1f}) µm for autofocus failed: {_one_line(e)}"
            ) from e
        xy: tuple[float, float] | None = (float(xy_um[0]), float(xy_um[1]))
    else:
        xy = None

    try:
        z_now = float(core.getPosition(focus_label))
    except Exception as e:
        raise FocusHardwareError(focus_label, f"cannot read the focus position: {_one_line(e)}") from e
    z_center = z_now if z_center_um is None else float(z_center_um)

    with _restored(core, channel_group, camera_label):
        try:
            core.setConfig(channel_group, channel)
            core.waitForConfig(channel_group, channel)
        except Exception as e:
            raise FocusHardwareError(
                _preset_devices(core, channel_group, channel),
                f"cannot set channel {channel_group}/{channel}: {_one_line(e)}",
            ) from e
        try:
            core.setExposure(float(exposure_ms))
        except Exception as e:
            raise FocusHardwareError(
                camera_label, f"cannot set exposure {exposure_ms:g} ms: {_one_line(e)}"
            ) from e

        sweep = _Sweep(core, focus_label, camera_label, safe_z_um=z_now)
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


# ============================================================ focus points


def _polygon_vertices(polygon_um: ArrayLike) -> FloatArray:
    poly = np.asarray(polygon_um, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2:
        raise ValueError(f"polygon_um must be an (N, 2) array of stage µm, got shape {poly.shape}")
    if len(poly) > 1 and np.array_equal(poly[0], poly[-1]):
        poly = poly[:-1]  # closed ring: drop the repeated vertex
    if len(poly) < 3 or not np.all(np.isfinite(poly)):
        raise ValueError("polygon_um needs at least 3 finite vertices")
    return poly


def _signed_area_and_centroid(poly: FloatArray) -> tuple[float, FloatArray]:
    x, y = poly[:, 0] - poly[0, 0], poly[:, 1] - poly[0, 1]  # shifted for precision
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = 0.5 * float(cross.sum())
    if area == 0.0:
        return 0.0, poly.mean(axis=0)
    cx = float(((x + xn) * cross).sum()) / (6.0 * area)
    cy = float(((y + yn) * cross).sum()) / (6.0 * area)
    return area, np.array([cx + poly[0, 0], cy + poly[0, 1]])


def _inside(poly: FloatArray, pts: FloatArray) -> NDArray[np.bool_]:
    """Even-odd rule, vectorised over points (M, 2)."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0][None, :], poly[:, 1][None, :]
    x1, y1 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    hits = straddles & (x < x_cross)
    return np.asarray(hits.sum(axis=1) % 2 == 1)


def _distance_to_boundary(poly: FloatArray, pts: FloatArray) -> FloatArray:
    a = poly[None, :, :]
    b = np.roll(poly, -1, axis=0)[None, :, :]
    p = pts[:, None, :]
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=2), 1e-300)
    t = np.clip(((p - a) * ab).sum(axis=2) / denom, 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.asarray(np.sqrt(((p - closest) ** 2).sum(axis=2)).min(axis=1))


def _ray_exit_um(poly: FloatArray, start: FloatArray, direction: FloatArray) -> float:
    """Distance from ``start`` along unit ``direction`` to the first polygon edge."""
    a = poly
    e = np.roll(poly, -1, axis=0) - poly
    w = a - start
    denom = direction[0] * e[:, 1] - direction[1] * e[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[:, 0] * e[:, 1] - w[:, 1] * e[:, 0]) / denom
        u = (w[:, 0] * direction[1] - w[:, 1] * direction[0]) / denom
    ok = (denom != 0) & (t > 0) & (u >= 0) & (u <= 1)
    return float(t[ok].min()) if np.any(ok) else 0.0


def _principal_axes(poly: FloatArray) -> tuple[FloatArray, FloatArray, float, float]:
    """Return unit major/minor axes and the outline's spread (µm, SD) along each."""
    # resample the outline evenly by arc length, so dense vertices do not bias the axes
    closed = np.vstack([poly, poly[:1]])
    seg = np.sqrt((np.diff(closed, axis=0) ** 2).sum(axis=1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], 512, endpoint=False)
    ring = np.column_stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])])
    evals, evecs = np.linalg.eigh(np.cov(ring.T))
    major, minor = evecs[:, 1], evecs[:, 0]
    return major, minor, float(np.sqrt(max(evals[1], 0.0))), float(np.sqrt(max(evals[0], 0.0)))


def _ring_angles(k: int, offset: float = 0.0) -> FloatArray:
    # An odd number of evenly spaced angles: no two points opposite each other,
    # so no three focus points are collinear with the centre and a single bad
    # point stays identifiable by the surface fit (see FocusSurface).
    slots = k if k % 2 == 1 else k + 1
    return offset + 2.0 * np.pi * np.arange(k) / slots


def focus_points_in_polygon(polygon_um: ArrayLike, n: int, *, reach: float = 0.65) -> FloatArray:
    """Well-spread focus points strictly inside a section outline.

    The first point is the centroid (or, for an outline whose centroid lies
    outside it, the inside point farthest from its edge). The others lie on
    a ring around it, ``reach`` of the way from it to the outline, in
    directions evenly spread in the frame of the outline's principal axes
    (so an elongated horizontal section gets points along its length); from
    8 points on, a third of them sit on an inner ring at half that reach.
    Rings have an odd number of direction slots, so no two points are
    opposite each other through the centre: three collinear points would
    let a bad focus point hide from the surface fit.

    Parameters
    ----------
    polygon_um : (N, 2) float array
        Section outline in stage µm (open or closed ring, no holes).
    n : int
        Number of points, ≥ 1.
    reach : float
        Fraction (0, 1) of the way from the centre to the outline.

    Returns
    -------
    (n, 2) float array
        Stage positions (x, y) in µm, all strictly inside the outline.

    Raises
    ------
    ValueError
        Fewer than 3 vertices, zero area, ``n < 1`` or ``reach`` outside (0, 1).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < reach < 1.0:
        raise ValueError(f"reach must be in (0, 1), got {reach!r}")
    poly = _polygon_vertices(polygon_um)
    area, centre = _signed_area_and_centroid(poly)
    if abs(area) <= 1e-9 * float(np.ptp(poly, axis=0).max()) ** 2:
        raise ValueError("polygon_um has zero area")
    if not (_inside(poly, centre[None])[0] and _distance_to_boundary(poly, centre[None])[0] > 0):
        # concave outline: the inside point farthest from the edge, on a 64 × 64 grid
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 66)[1:-1], np.linspace(lo[1], hi[1], 66)[1:-1])
        cand = np.column_stack([gx.ravel(), gy.ravel()])
        cand = cand[_inside(poly, cand)]
        centre = cand[int(np.argmax(_distance_to_boundary(poly, cand)))]

    n = int(n)
    m = n - 1
    m_outer = m if m < 7 else math.ceil(2 * m / 3)
    m_inner = m - m_outer
    major, minor, sd_major, sd_minor = _principal_axes(poly)
    sd_minor = max(sd_minor, 1e-3 * sd_major)
    rings = [(_ring_angles(m_outer), reach)]
    if m_inner:
        rings.append((_ring_angles(m_inner, offset=np.pi / max(m_inner, 1)), reach / 2.0))

    points = [centre]
    for angles, frac in rings:
        for theta in angles:
            d = np.cos(theta) * sd_major * major + np.sin(theta) * sd_minor * minor
            d /= np.linalg.norm(d)
            exit_um = _ray_exit_um(poly, centre, d)
            f = frac
            p = centre + f * exit_um * d
            # a concave outline can make the point land outside: pull it in
            while (
                not (_inside(poly, p[None])[0] and _distance_to_boundary(poly, p[None])[0] > 0) and f > 1e-3
            ):
                f /= 2.0
                p = centre + f * exit_um * d
            points.append(p)
    return np.asarray(points, dtype=np.float64).reshape(n, 2)


# ============================================================ focus surface

SurfaceModel = Literal["constant", "plane", "quadratic"]
_N_PARAMS: dict[str, int] = {"constant": 1, "plane": 3, "quadratic": 6}


def _design(model: str, u: FloatArray, v: FloatArray) -> FloatArray:
    cols = [np.ones_like(u)]
    if model in ("plane", "quadratic"):
        cols += [u, v]
    if model == "quadratic":
        cols += [u * u, u * v, v * v]
    return np.stack(cols, axis=-1)


def _model_for(n_points: int) -> str:
    if n_points >= MIN_POINTS_QUADRATIC:
        return "quadratic"
    if n_points >= 3:
        return "plane"
    return "constant"


def _lstsq(model: str, u: FloatArray, v: FloatArray, z: FloatArray) -> FloatArray:
    coef, *_ = np.linalg.lstsq(_design(model, u, v), z, rcond=None)
    return np.asarray(coef, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class FocusSurface:
    """Focus z (µm) over the stage: a robust least-squares surface through focus points.

    Model by the number of inlier points: one or two points → constant (their
    mean), 3–5 → plane ``z = a + b·x + c·y``, ≥ :data:`MIN_POINTS_QUADRATIC`
    → quadratic ``+ d·x² + e·x·y + f·y²`` (slide waviness) — but only if a
    plane leaves an RMS residual above ``plane_tolerance_um``: a quadratic
    through few points amplifies focus noise between and beyond them, so it
    is used only where curvature is really there. Coordinates are
    centred on the points' mean and scaled to mm for conditioning
    (``origin_um``, ``scale_um``); points along a line leave the slope across
    it at 0 (minimum-norm fit). Outside the points' hull a quadratic
    extrapolates; keep focus points spread over the section.

    Robustness: while at least two more points than the screening model has
    parameters remain, the point whose removal leaves the best fit is tested;
    it is dropped if its residual from the fit without it, divided by
    ``sqrt(1 + leverage)`` (a prediction far from the other points is less
    certain), exceeds both ``outlier_mad_factor`` × the robust SD (1.4826 ×
    MAD) of the other residuals and ``outlier_floor_um``. One point at a
    time, then refit. The screening model is the largest
    that can be tested this way (a plane for 5–7 points, the final model
    otherwise), so a quadratic through 6–7 points is screened as a plane.
    With 4 or fewer points nothing can be screened.

    Build with :meth:`fit` or :meth:`constant`.

    Attributes
    ----------
    model : {"constant", "plane", "quadratic"}
    coefficients : tuple of float
        In the order of the model's terms, in scaled coordinates
        ``u = (x − origin_x)/scale``, ``v = (y − origin_y)/scale``.
    origin_um : (float, float)
    scale_um : float
    points_um : (K, 3) float array
        All points given (x, y, z in µm), including dropped outliers.
    inliers : (K,) bool array
        Points the final fit used.
    rms_residual_um : float
        RMS residual of the inliers (µm).
    """

    model: SurfaceModel
    coefficients: tuple[float, ...]
    origin_um: tuple[float, float]
    scale_um: float
    points_um: FloatArray = field(repr=False)
    inliers: NDArray[np.bool_] = field(repr=False)
    rms_residual_um: float

    @classmethod
    def constant(cls, z_um: float) -> FocusSurface:
        """Return a flat surface at ``z_um`` (the "fixed" focus strategy)."""
        if not math.isfinite(z_um):
            raise ValueError(f"z_um must be finite, got {z_um!r}")
        return cls(
            model="constant",
            coefficients=(float(z_um),),
            origin_um=(0.0, 0.0),
            scale_um=1000.0,
            points_um=np.zeros((0, 3)),
            inliers=np.zeros(0, dtype=bool),
            rms_residual_um=0.0,
        )

    @classmethod
    def fit(
        cls,
        points_um: ArrayLike,
        *,
        outlier_mad_factor: float = 3.0,
        outlier_floor_um: float = 1.0,
        plane_tolerance_um: float = 0.5,
    ) -> FocusSurface:
        """Fit a surface through focus points, dropping outliers.

        Parameters
        ----------
        points_um : (K, 3) float array
            Focus points (x, y, z) in µm, K ≥ 1, all finite.
        outlier_mad_factor : float
            A point is an outlier beyond this many robust SDs of the others' residuals...
        outlier_floor_um : float
            ... and beyond this many µm (about half the depth of field of a
            10x/0.45 objective), so that near-exact fits drop nothing.
        plane_tolerance_um : float
            With ≥ :data:`MIN_POINTS_QUADRATIC` inliers, keep a plane unless
            its RMS residual exceeds this (µm; a fraction of the depth of field).

        Returns
        -------
        FocusSurface

        Raises
        ------
        ValueError
            If ``points_um`` is not (K, 3) with K ≥ 1 and finite values.
        """
        pts = np.asarray(points_um, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
            raise ValueError(f"points_um must be a (K, 3) array with K >= 1, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("points_um must be finite (leave failed focus points out)")
        origin = pts[:, :2].mean(axis=0)
        scale = 1000.0  # mm: keeps the quadratic terms well conditioned
        u = (pts[:, 0] - origin[0]) / scale
        v = (pts[:, 1] - origin[1]) / scale
        z = pts[:, 2]
        keep = np.ones(len(pts), dtype=bool)

        while True:
            n_keep = int(keep.sum())
            final = _model_for(n_keep)
            screen = final if n_keep >= _N_PARAMS[final] + 2 else "plane"
            if n_keep < _N_PARAMS[screen] + 2:
                break
            idx = np.flatnonzero(keep)
            # (rms of the rest, index, residual, standardised residual, robust SD of the rest)
            best: tuple[float, int, float, float, float] | None = None
            for i in idx:
                rest = idx[idx != i]
                design_rest = _design(screen, u[rest], v[rest])
                coef = _lstsq(screen, u[rest], v[rest], z[rest])
                r_rest = z[rest] - design_rest @ coef
                rms = float(np.sqrt(np.mean(r_rest**2)))
                x_i = _design(screen, u[i : i + 1], v[i : i + 1])[0]
                r_i = float(z[i] - x_i @ coef)
                # a prediction far from the other points is uncertain: standardise the
                # residual by its leverage, 1 + x_i (XᵀX)⁻¹ x_iᵀ, before testing it
                lever = float(x_i @ np.linalg.pinv(design_rest.T @ design_rest) @ x_i)
                t_i = r_i / math.sqrt(1.0 + max(lever, 0.0))
                sd = 1.4826 * float(np.median(np.abs(r_rest - np.median(r_rest))))
                if best is None or rms < best[0]:
                    best = (rms, int(i), r_i, t_i, sd)
            assert best is not None
            _, i_worst, r_worst, t_worst, sd = best
            if abs(t_worst) > max(outlier_mad_factor * sd, outlier_floor_um):
                keep[i_worst] = False
                logger.info(
                    "focus point (%.0f, %.0f) µm z=%.2f µm dropped: %.2f µm off the surface of the others",
                    pts[i_worst, 0],
                    pts[i_worst, 1],
                    z[i_worst],
                    r_worst,
                )
            else:
                break

        final = _model_for(int(keep.sum()))
        coef = _lstsq(final, u[keep], v[keep], z[keep])
        resid = z[keep] - _design(final, u[keep], v[keep]) @ coef
        if final == "quadratic":
            plane_coef = _lstsq("plane", u[keep], v[keep], z[keep])
            plane_resid = z[keep] - _design("plane", u[keep], v[keep]) @ plane_coef
            if float(np.sqrt(np.mean(plane_resid**2))) <= plane_tolerance_um:
                final, coef, resid = "plane", plane_coef, plane_resid
        return cls(
            model=final,  # type: ignore[arg-type]
            coefficients=tuple(float(c) for c in coef),
            origin_um=(float(origin[0]), float(origin[1])),
            scale_um=scale,
            points_um=pts.copy(),
            inliers=keep,
            rms_residual_um=float(np.sqrt(np.mean(resid**2))),
        )

    def z_at(self, x_um: ArrayLike, y_um: ArrayLike) -> FloatArray:
        """Focus z (µm) at stage positions; broadcasts like numpy (0-d for scalars)."""
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        x, y = np.broadcast_arrays(x, y)
        u = (x - self.origin_um[0]) / self.scale_um
        v = (y - self.origin_um[1]) / self.scale_um
        return np.asarray(_design(self.model, u, v) @ np.asarray(self.coefficients), dtype=np.float64)


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

    Returns
    -------
    FocusMap

    Raises
    ------
    FocusMapError
        If not a single focus point succeeded (nothing to fit).
    AutofocusError, FocusHardwareError
        From :func:`software_autofocus`; a device failure stops the map.
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
