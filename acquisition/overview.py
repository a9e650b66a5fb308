"""A low-resolution overview of the slide, to find the sections on it.

:func:`acquire_overview` tiles a stage region with the camera's field of view
at a low-magnification objective (4x by default) in the anatomy channel
(DAPI), reduces each tile by block-averaging to about 8 µm pixels and places
it into one float32 overview image by its stage position. At this pixel size
stage repeatability (a few µm) is below one overview pixel, so tiles are
placed by the stage position alone, without registration.
:func:`save_overview` / :func:`load_overview` store it as a TIFF whose
ImageDescription holds the stage geometry as JSON, so any reader (Fiji,
tifffile) gets the pixels and the coordinates without CordScope.

Finding the sections in the overview is analysis
(:func:`analysis.sections.find_sections`); it takes the overview's
``image``, ``origin_um`` and ``pixel_size_um``.

Geometry
--------
The overview pixel ``(r, c)`` covers stage x ∈ ``[ox + c·P, ox + (c+1)·P)``,
y ∈ ``[oy + r·P, oy + (r+1)·P)``, with ``(ox, oy) = origin_um`` and
``P = pixel_size_um``: rows go with +y, columns with +x, as in every camera
frame (pixel ``(r, c)`` of a frame of shape ``(H, W)`` taken at stage centre
``(xc, yc)`` with pixel size ``p`` is centred at
``x = xc + (c + 0.5 − W/2)·p``, ``y = yc + (r + 0.5 − H/2)·p`` for a camera
aligned with the stage). A rotated or mirrored camera's frames are turned
into that stage frame first (:class:`StageFrame`, through the pixel-size
affine): exactly by transposes and flips for 90° turns and mirrors, by
bilinear resampling of the stage-aligned rectangle inside the field for any
other angle; the overview is then laid out and reduced as for an aligned
camera, so the same slide gives the same overview whatever the camera's
orientation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import ArrayLike, NDArray
from pymmcore_plus import CMMCorePlus

from .errors import CordScopeError
from .pixel_geometry import (
    AxisPermutation,
    axis_permutation,
    covered_extent_um,
    inverse_affine,
    to_stage_orientation,
    validate_affine,
)

__all__ = [
    "OVERVIEW_FORMAT",
    "Overview",
    "OverviewCancelledError",
    "OverviewError",
    "StageFrame",
    "acquire_overview",
    "load_overview",
    "overview_tile_grid",
    "save_overview",
]

logger = logging.getLogger(__name__)

#: ``format`` key of the JSON ImageDescription of an overview TIFF.
OVERVIEW_FORMAT = "cordscope-overview"
_FORMAT_VERSION = 1

#: Default region: the slide right of the label (x0, y0, x1, y1), stage µm.
DEFAULT_REGION_UM: tuple[float, float, float, float] = (20_000.0, 0.0, 75_000.0, 25_000.0)

#: Neighbouring tiles overlap by this many overview pixels, so a stage that
#: reports a position a few µm off its target leaves no uncovered pixel.
_OVERLAP_PX = 1


class OverviewError(CordScopeError):
    """The overview cannot be acquired or read; the message says why."""


class OverviewCancelledError(OverviewError):
    """The overview was stopped by the user (``should_stop`` returned True)."""


# ================================================================= the result


@dataclass(frozen=True, eq=False)
class Overview:
    """A low-resolution image of a slide region, placed in stage coordinates.

    Attributes
    ----------
    image : (H, W) float32 array
        Mean camera counts (ADU, dark offset included) per overview pixel.
    origin_um : (float, float)
        Stage (x, y) in µm of the top-left corner of pixel (0, 0).
    pixel_size_um : float
        Edge of one overview pixel on the slide (µm): an integer multiple of
        the camera pixel size at ``objective``.
    channel : str
        Channel preset the tiles were taken in.
    objective : str
        Objective preset the tiles were taken with.
    """

    image: NDArray[np.float32]
    origin_um: tuple[float, float]
    pixel_size_um: float
    channel: str
    objective: str

    @property
    def shape(self) -> tuple[int, int]:
        """Image (H, W) in pixels."""
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def bbox_um(self) -> tuple[float, float, float, float]:
        """Stage area the image covers: (xmin, ymin, xmax, ymax) in µm."""
        h, w = self.shape
        ox, oy = self.origin_um
        p = self.pixel_size_um
        return (ox, oy, ox + w * p, oy + h * p)

    def pixel_to_stage_um(
        self, rows: ArrayLike, cols: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Stage position (µm) of pixel coordinates.

        Parameters
        ----------
        rows, cols : array_like of float
            Pixel coordinates (broadcast together); integers are pixel
            centres, ``-0.5`` is the top/left edge of the image.

        Returns
        -------
        xs, ys : float64 arrays
            Stage x and y (µm), shaped like the broadcast input.
        """
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        p = self.pixel_size_um
        xs, ys = np.broadcast_arrays(self.origin_um[0] + (c + 0.5) * p, self.origin_um[1] + (r + 0.5) * p)
        return xs.copy(), ys.copy()

    def stage_to_pixel(self, xs: ArrayLike, ys: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Pixel coordinates of stage positions; inverse of :meth:`pixel_to_stage_um`.

        Parameters
        ----------
        xs, ys : array_like of float
            Stage x and y (µm), broadcast together.

        Returns
        -------
        rows, cols : float64 arrays
            Fractional pixel coordinates (integers are pixel centres; round
            to get the pixel a point falls in).
        """
        x = np.asarray(xs, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        p = self.pixel_size_um
        cols = (x - self.origin_um[0]) / p - 0.5
        rows = (y - self.origin_um[1]) / p - 0.5
        r, c = np.broadcast_arrays(rows, cols)
        return r.copy(), c.copy()


# ================================================================ tile layout


@dataclass(frozen=True)
class OverviewTileGrid:
    """Where the overview's tiles go and how each is cut down.

    All tiles are cropped to the same central ``(crop_h, crop_w)`` camera
    pixels (a multiple of ``factor``) and block-averaged by ``factor``, so
    every reduced tile is ``(tile_h, tile_w)`` overview pixels and falls on
    the overview's pixel grid.

    Attributes
    ----------
    origin_um : (float, float)
        Stage (x, y) of the overview's top-left corner (µm): the region's.
    shape : (int, int)
        Overview (H, W) in pixels.
    pixel_size_um : float
        Overview pixel (µm) = ``factor`` × camera pixel.
    factor : int
        Block-averaging factor (camera pixels per overview pixel, per axis).
    crop_rc : (int, int)
        First camera row and column of the crop.
    tile_hw : (int, int)
        Reduced tile (height, width) in overview pixels.
    offsets_px : (n_tiles, 2) int array
        Overview (row, col) of each reduced tile's top-left pixel, in
        acquisition (serpentine) order; may be negative or run past the
        image: the parts outside the region are dropped.
    centres_um : (n_tiles, 2) float array
        Stage (x, y) to move to for each tile (µm), same order.
    """

    origin_um: tuple[float, float]
    shape: tuple[int, int]
    pixel_size_um: float
    factor: int
    crop_rc: tuple[int, int]
    tile_hw: tuple[int, int]
    offsets_px: NDArray[np.int64]
    centres_um: NDArray[np.float64]

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return int(self.offsets_px.shape[0])


def _axis_offsets(region_px: int, tile_px: int) -> NDArray[np.int64]:
    """Tile start offsets along one axis: fewest tiles, excess split evenly."""
    step = tile_px - _OVERLAP_PX if tile_px > _OVERLAP_PX else tile_px
    n = 1 if region_px <= tile_px else 1 + math.ceil((region_px - tile_px) / step)
    covered = tile_px + (n - 1) * step
    # centring the grid on the region keeps every tile centre inside it
    # (so inside the stage travel whenever the region is)
    shift = (covered - region_px) // 2
    return np.arange(n, dtype=np.int64) * step - shift


def overview_tile_grid(
    region_um: tuple[float, float, float, float],
    *,
    camera_pixel_um: float,
    image_hw: tuple[int, int],
    overview_pixel_um: float,
) -> OverviewTileGrid:
    """Lay out the tiles of an overview (pure geometry, no hardware).

    Parameters
    ----------
    region_um : (x0, y0, x1, y1)
        Stage region to cover (µm), ``x0 < x1``, ``y0 < y1``.
    camera_pixel_um : float
        Camera pixel size on the slide at the overview objective (µm).
    image_hw : (int, int)
        Camera image (height, width) in pixels; the tile's field of view is
        this times ``camera_pixel_um``.
    overview_pixel_um : float
        Wanted overview pixel (µm); the real one is the nearest integer
        multiple (≥ 1) of ``camera_pixel_um``.

    Returns
    -------
    OverviewTileGrid
        Tiles in serpentine order: rows of tiles top (small y) to bottom,
        even rows left to right, odd rows right to left.
    """
    x0, y0, x1, y1 = (float(v) for v in region_um)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or not (x1 > x0 and y1 > y0):
        raise OverviewError(
            f"region_um must be finite (x0, y0, x1, y1) with x0 < x1, y0 < y1, got {region_um}"
        )
    p = float(camera_pixel_um)
    if not (math.isfinite(p) and p > 0):
        raise OverviewError(
            f"camera pixel size is {camera_pixel_um!r} µm: define a pixel size for the overview objective"
        )
    if not (math.isfinite(overview_pixel_um) and overview_pixel_um > 0):
        raise OverviewError(f"overview_pixel_um must be > 0, got {overview_pixel_um!r}")
    h, w = (int(image_hw[0]), int(image_hw[1]))
    factor = max(1, round(overview_pixel_um / p))
    tile_h, tile_w = h // factor, w // factor
    if tile_h < 1 or tile_w < 1:
        raise OverviewError(
            f"a {w}×{h} px camera image is smaller than one {factor * p:.2f} µm overview pixel; "
            "lower overview_pixel_um"
        )
    pixel = factor * p
    shape = (max(1, math.ceil((y1 - y0) / pixel - 1e-9)), max(1, math.ceil((x1 - x0) / pixel - 1e-9)))
    crop_r, crop_c = (h - tile_h * factor) // 2, (w - tile_w * factor) // 2
    rows = _axis_offsets(shape[0], tile_h)
    cols = _axis_offsets(shape[1], tile_w)
    offsets, centres = [], []
    # stage centre of a tile whose reduced top-left pixel is overview (r, c):
    # the crop's top-left camera pixel edge lies at xc + (crop_c - W/2)·p
    cx_of = x0 + (w / 2 - crop_c) * p
    cy_of = y0 + (h / 2 - crop_r) * p
    for i, r in enumerate(rows):
        for c in cols if i % 2 == 0 else cols[::-1]:
            offsets.append((int(r), int(c)))
            centres.append((cx_of + c * pixel, cy_of + r * pixel))
    return OverviewTileGrid(
        origin_um=(x0, y0),
        shape=shape,
        pixel_size_um=pixel,
        factor=factor,
        crop_rc=(crop_r, crop_c),
        tile_hw=(tile_h, tile_w),
        offsets_px=np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
        centres_um=np.asarray(centres, dtype=np.float64).reshape(-1, 2),
    )


@dataclass(frozen=True)
class StageFrame:
    """How a camera frame is turned into the stage frame (rows along +y, columns along +x).

    The result is centred on the frame's centre, with pixels of the camera's
    pixel size: for an affine that is the pixel size times a 90° turn or a
    mirror, the whole frame transposed and flipped (exact); otherwise the
    largest stage-aligned rectangle inside the field
    (:func:`~acquisition.pixel_geometry.covered_extent_um`), bilinearly
    resampled.

    Attributes
    ----------
    affine_um : (2, 2) float64
        The camera's pixel-size affine.
    pixel_size_um : float
        Pixel of the result (the camera's pixel size).
    frame_hw : (int, int)
        Camera frame (height, width).
    shape : (int, int)
        Result (height, width).
    permutation : AxisPermutation or None
        The exact transposes and flips, or None (resampled).
    """

    affine_um: NDArray[np.float64]
    pixel_size_um: float
    frame_hw: tuple[int, int]
    shape: tuple[int, int]
    permutation: AxisPermutation | None

    @classmethod
    def for_camera(cls, affine_um: ArrayLike, pixel_size_um: float, frame_hw: tuple[int, int]) -> StageFrame:
        """The turn of frames of shape ``frame_hw`` taken through ``affine_um``.

        Raises
        ------
        OverviewError
            If the affine is not invertible or the field holds no stage-aligned pixel.
        """
        try:
            a = validate_affine(affine_um)
        except ValueError as e:
            raise OverviewError(f"camera pixel-size affine: {e}") from e
        p = float(pixel_size_um)
        h, w = (int(frame_hw[0]), int(frame_hw[1]))
        perm = axis_permutation(a, rtol=1e-6)
        if perm is not None and abs(float(np.abs(a).max()) - p) <= 1e-6 * p:
            return cls(a, p, (h, w), (w, h) if perm.transpose else (h, w), perm)
        width_um, height_um = covered_extent_um(a, (w, h))
        shape = (math.floor(height_um / p + 1e-9), math.floor(width_um / p + 1e-9))
        if min(shape) < 1:
            raise OverviewError(
                f"a {w}×{h} px frame through the pixel affine {a.tolist()} covers no stage-aligned pixel"
            )
        return cls(a, p, (h, w), shape, None)

    def apply(self, frame: NDArray[Any]) -> NDArray[Any]:
        """The frame ((H, W)) in the stage frame: a view (exact), or float32 (resampled)."""
        if self.permutation is not None:
            return to_stage_orientation(frame, self.affine_um)
        from scipy import ndimage

        h, w = self.frame_hw
        hs, ws = self.shape
        p = self.pixel_size_um
        inv = inverse_affine(self.affine_um)
        # frame (row, col) of result pixel (i, j), centred at stage offset p·(j + ½ − ws/2, i + ½ − hs/2)
        matrix = p * np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
        di, dj = (0.5 - hs / 2) * p, (0.5 - ws / 2) * p
        offset = np.array(
            [inv[1, 0] * dj + inv[1, 1] * di + h / 2 - 0.5, inv[0, 0] * dj + inv[0, 1] * di + w / 2 - 0.5]
        )
        out = np.empty(self.shape, dtype=np.float32)
        ndimage.affine_transform(
            np.asarray(frame, dtype=np.float32), matrix, offset=offset, output=out, order=1, mode="nearest"
        )
        return out


def _block_mean(frame: NDArray[Any], grid: OverviewTileGrid) -> NDArray[np.float32]:
    f = grid.factor
    th, tw = grid.tile_hw
    r0, c0 = grid.crop_rc
    crop = frame[r0 : r0 + th * f, c0 : c0 + tw * f]
    if f == 1:
        return crop.astype(np.float32)
    sums = np.add.reduceat(crop, np.arange(0, tw * f, f), axis=1, dtype=np.float32)
    sums = np.add.reduceat(sums, np.arange(0, th * f, f), axis=0)
    sums *= np.float32(1.0 / (f * f))
    return sums


# ================================================================ acquisition


@dataclass(frozen=True)
class _CoreState:
    objective: str
    channel: str
    exposure_ms: float
    xy_um: tuple[float, float]
    z_um: float | None


def _check_preset(core: CMMCorePlus, group: str, preset: str, what: str) -> None:
    if not core.isGroupDefined(group):
        raise OverviewError(f"{what} group {group!r} is not defined in the hardware config")
    available = list(core.getAvailableConfigs(group))
    if preset not in available:
        raise OverviewError(f"unknown {what} {preset!r}: {group} presets are {', '.join(available)}")


def _save_state(core: CMMCorePlus, objective_group: str, channel_group: str) -> _CoreState:
    x, y = core.getXYPosition()
    focus = core.getFocusDevice()
    return _CoreState(
        objective=core.getCurrentConfig(objective_group),
        channel=core.getCurrentConfig(channel_group),
        exposure_ms=float(core.getExposure()),
        xy_um=(float(x), float(y)),
        z_um=float(core.getPosition()) if focus else None,
    )


def _restore_state(core: CMMCorePlus, state: _CoreState, objective_group: str, channel_group: str) -> None:
    # the objective first: its change may move the focus (parfocality offsets)
    for group, preset in ((objective_group, state.objective), (channel_group, state.channel)):
        if preset:  # "" = the group matched no preset before; nothing to go back to
            core.setConfig(group, preset)
            core.waitForConfig(group, preset)
    core.setExposure(state.exposure_ms)
    core.setXYPosition(*state.xy_um)
    if state.z_um is not None:
        core.setPosition(state.z_um)
    core.waitForSystem()


def acquire_overview(
    core: CMMCorePlus,
    *,
    region_um: tuple[float, float, float, float] = DEFAULT_REGION_UM,
    objective_group: str = "Objective",
    objective: str = "4x",
    channel_group: str = "Channel",
    channel: str = "DAPI",
    exposure_ms: float = 20.0,
    z_um: float | None = None,
    overview_pixel_um: float = 8.0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Overview:
    """Tile a stage region at low magnification into one overview image.

    The region is covered by the camera's field of view at ``objective``
    (image size × pixel size, read from the core, never assumed), with the
    fewest tiles that cover it (neighbours overlap by one overview pixel),
    the grid centred on the region, visited in serpentine order. Each tile
    is snapped, its central part block-averaged by the integer factor
    nearest to ``overview_pixel_um`` / camera pixel, and written into the
    overview at the stage position the stage reports after the move; pixels
    seen by two tiles get their mean. Parts of tiles outside the region are
    dropped.

    The core's objective, channel preset, exposure, XY position and focus
    are restored afterwards, also after an error or a cancel: the overview
    is a side trip before a scan at another objective, and the user's live
    view should come back as it was.

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core with an XY stage, a camera and pixel sizes per objective.
    region_um : (x0, y0, x1, y1)
        Stage region to image (µm); default: the slide right of the label.
        Every tile centre lies inside it, so it must lie inside the stage travel.
    objective_group, objective : str
        Config group and preset of the overview objective.
    channel_group, channel : str
        Config group and preset of the anatomy channel.
    exposure_ms : float
        Camera exposure per tile (ms).
    z_um : float, optional
        Focus position for all tiles (µm); default: stay where the focus is
        (at 4x the depth of field covers a flat slide).
    overview_pixel_um : float
        Wanted overview pixel size (µm); see ``Overview.pixel_size_um`` for
        the one used.
    progress : callable(done, total), optional
        Called after each tile with the number of tiles done and the total.
    should_stop : callable() -> bool, optional
        Polled before each tile; returning True cancels the overview.

    Returns
    -------
    Overview
        ``image`` is float32 (H, W) with H = ⌈(y1 − y0) / P⌉,
        W = ⌈(x1 − x0) / P⌉, ``origin_um = (x0, y0)``.

    Raises
    ------
    OverviewError
        Unknown group or preset, no pixel size at the objective, bad region
        or exposure.
    OverviewCancelledError
        ``should_stop`` returned True; nothing is returned.
    CordScopeError, RuntimeError
        Whatever the devices raise for a failed move or snap.
    """
    if not (math.isfinite(exposure_ms) and exposure_ms >= 0):
        raise OverviewError(f"exposure_ms must be ≥ 0, got {exposure_ms!r}")
    if not core.getXYStageDevice():
        raise OverviewError("the hardware config defines no XY stage (Core, XYStage): cannot tile a region")
    _check_preset(core, objective_group, objective, "objective")
    _check_preset(core, channel_group, channel, "channel")
    state = _save_state(core, objective_group, channel_group)
    try:
        overview = _acquire(
            core,
            region_um=region_um,
            objective_group=objective_group,
            objective=objective,
            channel_group=channel_group,
            channel=channel,
            exposure_ms=exposure_ms,
            z_um=z_um,
            overview_pixel_um=overview_pixel_um,
            progress=progress,
            should_stop=should_stop,
        )
    except BaseException:
        try:
            _restore_state(core, state, objective_group, channel_group)
        except Exception:
            # do not hide the error that stopped the overview behind this one
            logger.exception("overview: could not restore the microscope state after an error")
        raise
    _restore_state(core, state, objective_group, channel_group)
    return overview


def _acquire(
    core: CMMCorePlus,
    *,
    region_um: tuple[float, float, float, float],
    objective_group: str,
    objective: str,
    channel_group: str,
    channel: str,
    exposure_ms: float,
    z_um: float | None,
    overview_pixel_um: float,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> Overview:
    core.setConfig(objective_group, objective)
    core.waitForConfig(objective_group, objective)
    core.setConfig(channel_group, channel)
    core.waitForConfig(channel_group, channel)
    core.setExposure(float(exposure_ms))
    if z_um is not None:
        core.setPosition(float(z_um))
    core.waitForSystem()

    camera_pixel_um = float(core.getPixelSizeUm())
    frame_hw = (int(core.getImageHeight()), int(core.getImageWidth()))
    turn = _stage_frame(core, camera_pixel_um, frame_hw)
    grid = overview_tile_grid(
        region_um,
        camera_pixel_um=camera_pixel_um,
        image_hw=frame_hw if turn is None else turn.shape,
        overview_pixel_um=overview_pixel_um,
    )
    h, w = grid.shape
    th, tw = grid.tile_hw
    p_cam = grid.pixel_size_um / grid.factor
    r0, c0 = grid.crop_rc
    # stage position of the crop's top-left corner relative to the tile centre
    stage_h, stage_w = frame_hw if turn is None else turn.shape
    crop_dx = (c0 - stage_w / 2) * p_cam
    crop_dy = (r0 - stage_h / 2) * p_cam
    total = np.zeros((h, w), dtype=np.float32)
    count = np.zeros((h, w), dtype=np.uint8)
    n = grid.n_tiles
    logger.info(
        "overview: %d tiles of %.0f × %.0f µm at %s/%s, %.2f µm pixels (%d × %d)",
        n,
        tw * grid.pixel_size_um,
        th * grid.pixel_size_um,
        objective,
        channel,
        grid.pixel_size_um,
        w,
        h,
    )
    t0 = time.perf_counter()
    for k, (xc, yc) in enumerate(grid.centres_um):
        if should_stop is not None and should_stop():
            raise OverviewCancelledError(f"overview cancelled after {k} of {n} tiles")
        core.setXYPosition(float(xc), float(yc))
        core.waitForDevice(core.getXYStageDevice())
        core.snapImage()
        frame = core.getImage()
        reduced = _block_mean(frame if turn is None else turn.apply(frame), grid)
        # place by where the stage says it is, not where it was sent
        xr, yr = core.getXYPosition()
        row = round((yr + crop_dy - grid.origin_um[1]) / grid.pixel_size_um)
        col = round((xr + crop_dx - grid.origin_um[0]) / grid.pixel_size_um)
        _add_tile(total, count, reduced, row, col)
        if progress is not None:
            progress(k + 1, n)
    logger.info("overview: %d tiles in %.1f s", n, time.perf_counter() - t0)
    image = _mean_of_tiles(total, count)
    return Overview(
        image=image,
        origin_um=grid.origin_um,
        pixel_size_um=float(grid.pixel_size_um),
        channel=channel,
        objective=objective,
    )


def _stage_frame(core: CMMCorePlus, camera_pixel_um: float, frame_hw: tuple[int, int]) -> StageFrame | None:
    """The turn of the camera's frames into the stage frame, or None for an aligned camera.

    None too without a pixel size: the tile grid reports that.
    """
    if not (math.isfinite(camera_pixel_um) and camera_pixel_um > 0):
        return None
    from .roles import pixel_affine_um

    affine = pixel_affine_um(core)
    if np.array_equal(affine, camera_pixel_um * np.eye(2)):
        return None
    turn = StageFrame.for_camera(affine, camera_pixel_um, frame_hw)
    logger.info(
        "overview: camera frames turned into the stage frame (%s), %d × %d px used of %d × %d",
        "resampled" if turn.permutation is None else "exact",
        turn.shape[1],
        turn.shape[0],
        frame_hw[1],
        frame_hw[0],
    )
    return turn


def _add_tile(
    total: NDArray[np.float32], count: NDArray[np.uint8], tile: NDArray[np.float32], row: int, col: int
) -> None:
    h, w = total.shape
    th, tw = tile.shape
    r_lo, r_hi = max(row, 0), min(row + th, h)
    c_lo, c_hi = max(col, 0), min(col + tw, w)
    if r_lo >= r_hi or c_lo >= c_hi:
        return
    total[r_lo:r_hi, c_lo:c_hi] += tile[r_lo - row : r_hi - row, c_lo - col : c_hi - col]
    count[r_lo:r_hi, c_lo:c_hi] += 1


def _mean_of_tiles(total: NDArray[np.float32], count: NDArray[np.uint8]) -> NDArray[np.float32]:
    covered = count > 0
    np.divide(total, count, out=total, where=covered)
    if not covered.all() and covered.any():
        # only a stage reporting positions far off target leaves gaps; fill
        # them from the nearest covered pixel along rows, then columns,
        # rather than with a fake 0, darker than any glass
        logger.warning(
            "overview: %d pixels seen by no tile (stage position off target?)", int((~covered).sum())
        )
        total, covered = _fill_along_rows(total, covered)
        total_t, _ = _fill_along_rows(total.T.copy(), covered.T.copy())
        total = np.ascontiguousarray(total_t.T)
    return total


def _fill_along_rows(
    image: NDArray[np.float32], covered: NDArray[np.bool_]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Fill uncovered pixels from the nearest covered one in the same row."""
    w = image.shape[1]
    cols = np.arange(w)
    left = np.maximum.accumulate(np.where(covered, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(covered, cols, w)[:, ::-1], axis=1)[:, ::-1]
    has_left, has_right = left >= 0, right < w
    use_left = has_left & (~has_right | (cols - left <= right - cols))
    src = np.where(use_left, left, np.where(has_right, right, cols))
    filled = np.take_along_axis(image, src, axis=1)
    row_any = covered.any(axis=1, keepdims=True)
    return np.where(row_any, filled, image).astype(np.float32), np.broadcast_to(row_any, covered.shape).copy()


# ================================================================== TIFF I/O


def save_overview(path: str | Path, overview: Overview) -> Path:
    """Write an overview as a float32 TIFF with its geometry as JSON.

    The ImageDescription is a JSON object: ``format`` ("cordscope-overview"),
    ``format_version``, ``origin_um`` ([x, y] of the top-left corner of pixel
    (0, 0)), ``pixel_size_um``, ``channel``, ``objective``. Pixels and
    numbers round-trip exactly through :func:`load_overview`.

    Parameters
    ----------
    path : str or Path
        File to write (overwritten).
    overview : Overview

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    meta = {
        "format": OVERVIEW_FORMAT,
        "format_version": _FORMAT_VERSION,
        "origin_um": [float(overview.origin_um[0]), float(overview.origin_um[1])],
        "pixel_size_um": float(overview.pixel_size_um),
        "channel": overview.channel,
        "objective": overview.objective,
        "units": {"image": "camera ADU (mean per overview pixel)", "origin_um": "stage µm"},
    }
    image = np.ascontiguousarray(overview.image, dtype=np.float32)
    # metadata=None: the description is ours alone, not tifffile's shape JSON
    tifffile.imwrite(
        path,
        image,
        description=json.dumps(meta),
        metadata=None,
        resolution=(1e4 / overview.pixel_size_um, 1e4 / overview.pixel_size_um),
        resolutionunit="CENTIMETER",
        software="CordScope",
    )
    return path


def load_overview(path: str | Path) -> Overview:
    """Read an overview written by :func:`save_overview`.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Overview
        ``image`` as float32 (H, W).

    Raises
    ------
    OverviewError
        Missing file, not a CordScope overview, or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise OverviewError(f"overview file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            description = page.description
            image = page.asarray()
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise OverviewError(f"cannot read overview {path}: {e}") from e
    try:
        meta = json.loads(description)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != OVERVIEW_FORMAT:
        raise OverviewError(f"{path} is not a CordScope overview (no '{OVERVIEW_FORMAT}' description)")
    try:
        ox, oy = (float(v) for v in meta["origin_um"])
        overview = Overview(
            image=np.asarray(image, dtype=np.float32),
            origin_um=(ox, oy),
            pixel_size_um=float(meta["pixel_size_um"]),
            channel=str(meta["channel"]),
            objective=str(meta["objective"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise OverviewError(f"{path}: overview description is incomplete or malformed ({e})") from e
    if overview.image.ndim != 2:
        raise OverviewError(f"{path}: overview image must be 2-D, got shape {overview.image.shape}")
    return overview
