"""Where an export puts each tile: positions, the stage-aligned mosaic frame, tiles turned into it.

Shared by the exports (:mod:`analysis.exports`: BDV, OME-Zarr), the QuPath
export (:mod:`analysis.qupath`) and the napari view. Coordinates: pixel
``(r, c)`` of a tile centred at stage ``(x, y)`` µm is at
``(x, y) + A·(c + 0.5 − W/2, r + 0.5 − H/2)``, ``A`` the section's pixel-size
affine (:mod:`acquisition.pixel_geometry`). A mosaic is stage-aligned
(columns along +x, rows along +y): tiles are turned into it exactly
(transposes and flips) for 90° turns and mirrors, by bilinear resampling for
any other affine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi

from acquisition.errors import CordScopeError
from acquisition.pixel_geometry import (
    AxisPermutation,
    axis_permutation,
    footprint_corners_um,
    inverse_affine,
    pixel_size_from_affine,
    pixel_to_stage_matrix,
    to_stage_orientation,
    validate_affine,
)
from acquisition.storage import SectionReader
from analysis.results_format import read_registered_tile_xy_um

__all__ = [
    "REGISTERED_XY",
    "ExportError",
    "MosaicGeometry",
    "bdv_view_affine",
    "mosaic_geometry",
    "oriented_tile",
    "place_done_tiles",
    "section_affine",
    "section_mosaic_geometry",
    "tile_positions_um",
]

#: Name of the registered tile positions in a section's analysis group.
REGISTERED_XY = "registered_tile_xy_um"


class ExportError(CordScopeError):
    """A scan cannot be exported as asked; the message says why."""


def tile_positions_um(section: SectionReader) -> NDArray[np.float64]:
    """Tile centres to place tiles at: registered where known and finite, else planned.

    Parameters
    ----------
    section : SectionReader

    Returns
    -------
    (n_tiles, 2) float64
        Stage x, y (µm) of each tile's centre. ``analysis/registered_tile_xy_um``
        (written by the live registration; NaN where a tile was not
        registered) wins over the planned ``tile_xy_um``, tile by tile.
    """
    planned = section.tile_xy_um
    registered = read_registered_tile_xy_um(section.analysis_group)
    if registered is None:
        return planned
    if registered.shape != planned.shape:
        raise ExportError(
            f"section {section.section_id}: analysis/{REGISTERED_XY} has shape {registered.shape}, "
            f"expected {planned.shape}"
        )
    use = np.isfinite(registered).all(axis=1)
    out = planned.copy()
    out[use] = registered[use]
    return out


@dataclass(frozen=True)
class MosaicGeometry:
    """Where a section's tiles land in its full-resolution, stage-aligned mosaic.

    Attributes
    ----------
    shape_px : (rows, cols)
        Mosaic size.
    origin_um : (x, y)
        Stage position of the centre of mosaic pixel ``(0, 0)``.
    pixel_size_um : float
    corners_px : (n_tiles, 2) int64
        ``(row, col)`` of each tile's top-left pixel in the mosaic: of the tile
        turned into the stage frame (:attr:`orientation`), or of the bounding box
        of its footprint when it is resampled.
    centres_um : (n_tiles, 2) float64
        Stage centre of each tile.
    tile_shape_px : (H, W)
        Camera frame of the tiles.
    affine_um : (2, 2) float64
        The tiles' pixel-size affine.
    orientation : AxisPermutation or None
        The transposes and flips that turn a tile into the stage frame (exact,
        tiles snapped to whole mosaic pixels), or None: the affine is no 90°
        turn or mirror of the mosaic's pixel, tiles are resampled.
    """

    shape_px: tuple[int, int]
    origin_um: tuple[float, float]
    pixel_size_um: float
    corners_px: NDArray[np.int64]
    centres_um: NDArray[np.float64]
    tile_shape_px: tuple[int, int]
    affine_um: NDArray[np.float64]
    orientation: AxisPermutation | None

    @property
    def placed_shape_px(self) -> tuple[int, int]:
        """(rows, cols) of a tile turned into the stage frame (exact orientations only)."""
        h, w = self.tile_shape_px
        return (w, h) if self.orientation is not None and self.orientation.transpose else (h, w)

    @property
    def resampled(self) -> bool:
        """Whether tiles are resampled (no exact orientation)."""
        return self.orientation is None


#: An affine whose scale differs from the mosaic's pixel by less than this (relative) is exact.
_EXACT_SCALE_RTOL = 1e-6


def _exact_orientation(affine_um: NDArray[np.float64], pixel_size_um: float) -> AxisPermutation | None:
    perm = axis_permutation(affine_um, rtol=_EXACT_SCALE_RTOL)
    if perm is None:
        return None
    scale = float(np.abs(affine_um).max())
    return perm if abs(scale - pixel_size_um) <= _EXACT_SCALE_RTOL * pixel_size_um else None


def mosaic_geometry(
    centres_um: NDArray[np.float64],
    tile_shape_px: tuple[int, int],
    pixel_size_um: float,
    *,
    affine_um: ArrayLike | None = None,
) -> MosaicGeometry:
    """Stage-aligned mosaic grid of a section's tiles, all tiles inside.

    When the affine is the pixel size times a 90° turn or mirror (or the
    identity), tiles are turned into the stage frame exactly and snapped to
    the nearest whole mosaic pixel, on the grid of the top- and left-most
    tiles. Otherwise (a camera rotated by 1–2°, say) the mosaic covers the
    bounding box of the tiles' footprints and tiles are resampled onto it
    (:func:`place_done_tiles`).

    Parameters
    ----------
    centres_um : (n_tiles, 2) float64
        Tile centres in stage µm (:func:`tile_positions_um`).
    tile_shape_px : (H, W)
        Camera frame of the tiles.
    pixel_size_um : float
        Mosaic pixel (µm): the section's pixel size.
    affine_um : (2, 2), optional
        Pixel-size affine of the tiles (default ``pixel_size_um · I``).
    """
    h, w = (int(tile_shape_px[0]), int(tile_shape_px[1]))
    p = float(pixel_size_um)
    a = p * np.eye(2) if affine_um is None else validate_affine(affine_um)
    centres = np.asarray(centres_um, dtype=np.float64).reshape(-1, 2)
    orientation = _exact_orientation(a, p)
    if orientation is not None:
        ph, pw = (w, h) if orientation.transpose else (h, w)
        # stage position of each turned tile's top-left pixel centre, in pixels
        left = centres[:, 0] / p + 0.5 - pw / 2
        top = centres[:, 1] / p + 0.5 - ph / 2
        # the grid is that of the top- and left-most tiles; the others snap to it
        col0, row0 = float(left.min()), float(top.min())
        cols = np.floor(left - col0 + 0.5).astype(np.int64)
        rows = np.floor(top - row0 + 0.5).astype(np.int64)
        shape = (int(rows.max()) + ph, int(cols.max()) + pw)
        origin = (col0 * p, row0 * p)
    else:
        corners = footprint_corners_um((0.0, 0.0), a, (h, w))
        lo = centres + corners.min(axis=0)  # (n, 2) footprint bounding boxes
        hi = centres + corners.max(axis=0)
        x0, y0 = lo.min(axis=0)
        x1, y1 = hi.max(axis=0)
        shape = (max(1, math.ceil((y1 - y0) / p - 1e-9)), max(1, math.ceil((x1 - x0) / p - 1e-9)))
        origin = (float(x0) + p / 2, float(y0) + p / 2)
        cols = np.floor((lo[:, 0] - x0) / p + 1e-9).astype(np.int64)
        rows = np.floor((lo[:, 1] - y0) / p + 1e-9).astype(np.int64)
    return MosaicGeometry(
        shape_px=shape,
        origin_um=(float(origin[0]), float(origin[1])),
        pixel_size_um=p,
        corners_px=np.stack([rows, cols], axis=1),
        centres_um=centres,
        tile_shape_px=(h, w),
        affine_um=a,
        orientation=orientation,
    )


def section_mosaic_geometry(sec: SectionReader, done: NDArray[np.intp]) -> MosaicGeometry:
    """:func:`mosaic_geometry` of a section's ``done`` tiles at their positions, with its pixel affine."""
    return mosaic_geometry(
        tile_positions_um(sec)[done], sec.tile_shape_px, sec.pixel_size_um, affine_um=section_affine(sec)
    )


def bdv_view_affine(
    center_um: ArrayLike,
    affine_um: ArrayLike,
    tile_shape_px: tuple[int, int],
    *,
    pixel_size_um: float | None = None,
    z_px: float = 0.0,
) -> NDArray[np.float64]:
    """A BDV view registration (3 × 4) placing a tile's pixels at their stage positions / pixel size.

    BigStitcher's convention: view pixel ``(x = column, y = row, z)`` maps to
    world coordinates in calibrated pixel units (µm / ``p``). The 3 × 3 part
    is ``A / p`` in x, y (z untouched), the translation is the stage
    position / ``p`` of the centre of pixel ``(0, 0)``:
    ``centre / p + (A / p)·(0.5 − W/2, 0.5 − H/2)``, and ``z_px`` in z.

    Parameters
    ----------
    center_um : (x, y)
        Stage position of the tile centre (µm).
    affine_um : (2, 2)
        Pixel-size affine.
    tile_shape_px : (H, W)
    pixel_size_um : float, optional
        ``p``, the voxel size of the dataset (default ``sqrt(|det A|)``).
    z_px : float
        z translation (calibrated pixels).
    """
    a = validate_affine(affine_um)
    p = pixel_size_from_affine(a) if pixel_size_um is None else float(pixel_size_um)
    cx, cy = (float(v) for v in np.asarray(center_um, dtype=np.float64).reshape(2))
    m = pixel_to_stage_matrix((cx, cy), a, tile_shape_px) / p
    out = np.zeros((3, 4), dtype=np.float64)
    out[:2, :2] = m[:2, :2]
    out[:2, 3] = m[:2, 2]
    out[2, 2] = 1.0
    out[2, 3] = z_px
    return out


def section_affine(section: SectionReader) -> NDArray[np.float64]:
    """The section's pixel affine, checked (:class:`ExportError` naming the section if it is unusable)."""
    try:
        return validate_affine(section.pixel_affine_um)
    except ValueError as e:
        raise ExportError(f"section {section.section_id}: {e}") from e


def place_done_tiles(
    sec: SectionReader, done: NDArray[np.intp], geometry: MosaicGeometry, dest: Any, *, z_projection: bool
) -> Iterator[int]:
    """Write each done tile into a full-resolution, stage-aligned mosaic array; yield each tile index.

    ``dest`` is ``(C, rows, cols)`` (single-plane tiles, or ``z_projection``: planes
    max-projected) or ``(C, Z, rows, cols)``; later tiles overwrite earlier ones where
    they overlap. Tiles are turned into the stage frame first (:func:`oriented_tile`):
    exactly, written whole at their corner, or resampled, written only at the mosaic
    pixels whose centres lie in the tile's footprint (so no tile paints its
    surroundings with zeros).
    """
    for k, t in enumerate(done):
        pixels = sec.read_tile(int(t))  # (C, Z, H, W)
        if z_projection:
            block = pixels.max(axis=1)
        else:
            block = pixels[:, 0] if len(dest.shape) == 3 else pixels
        rows, cols, placed, inside = oriented_tile(block, geometry, k)
        lead = placed.shape[:-2]
        where = (*[slice(None)] * len(lead), rows, cols)
        if inside is None:
            dest[where] = placed
        elif inside.any():
            dest[where] = np.where(inside, placed, np.asarray(dest[where]))
        yield int(t)


def oriented_tile(
    pixels: NDArray[Any], geometry: MosaicGeometry, index: int
) -> tuple[slice, slice, NDArray[Any], NDArray[np.bool_] | None]:
    """One tile turned into the mosaic's stage-aligned frame, and where it goes.

    Parameters
    ----------
    pixels : (..., H, W) array
        The tile as the camera took it (any leading axes: channels, planes).
    geometry : MosaicGeometry
    index : int
        The tile's row in ``geometry.centres_um`` / ``corners_px``.

    Returns
    -------
    rows, cols : slice
        The mosaic pixels the result covers (clipped to the mosaic).
    placed : (..., n_rows, n_cols) array
        For an exact orientation the tile's pixels turned by transposes and
        flips (:func:`~acquisition.pixel_geometry.to_stage_orientation`, a view;
        ``pixels``' dtype). Otherwise the tile bilinearly interpolated at the mosaic
        pixel centres (edge pixels repeated half a pixel outwards), rounded to
        ``pixels``' dtype when it is an integer type.
    inside : (n_rows, n_cols) bool or None
        None when the whole block is the tile's; else the mosaic pixels whose
        centres lie in the tile's footprint (the rest must keep their values).
    """
    r0, c0 = (int(v) for v in geometry.corners_px[index])
    if geometry.orientation is not None:
        turned = to_stage_orientation(pixels, geometry.affine_um)
        ph, pw = turned.shape[-2:]
        return slice(r0, r0 + ph), slice(c0, c0 + pw), turned, None
    h, w = geometry.tile_shape_px
    p = geometry.pixel_size_um
    centre = geometry.centres_um[index]
    corners = footprint_corners_um(centre, geometry.affine_um, (h, w))
    ox, oy = geometry.origin_um
    # mosaic pixels whose centres may lie in the footprint, clipped to the mosaic
    n_rows, n_cols = geometry.shape_px
    rs = max(0, math.floor((corners[:, 1].min() - oy) / p))
    re = min(n_rows, math.ceil((corners[:, 1].max() - oy) / p) + 1)
    cs = max(0, math.floor((corners[:, 0].min() - ox) / p))
    ce = min(n_cols, math.ceil((corners[:, 0].max() - ox) / p) + 1)
    rs, cs = min(rs, re), min(cs, ce)
    inv = inverse_affine(geometry.affine_um)
    # tile (row, col) of mosaic pixel (rs + i, cs + j): an affine map of (i, j)
    dx0 = ox + cs * p - centre[0]
    dy0 = oy + rs * p - centre[1]
    matrix = p * np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    offset = np.array(
        [
            inv[1, 0] * dx0 + inv[1, 1] * dy0 + h / 2 - 0.5,
            inv[0, 0] * dx0 + inv[0, 1] * dy0 + w / 2 - 0.5,
        ]
    )
    out_shape = (re - rs, ce - cs)
    i = np.arange(out_shape[0], dtype=np.float64)[:, None]
    j = np.arange(out_shape[1], dtype=np.float64)[None, :]
    tr = matrix[0, 0] * i + matrix[0, 1] * j + offset[0]
    tc = matrix[1, 0] * i + matrix[1, 1] * j + offset[1]
    inside = (tr >= -0.5) & (tr < h - 0.5) & (tc >= -0.5) & (tc < w - 0.5)
    lead = pixels.shape[:-2]
    planes = np.asarray(pixels).reshape(-1, h, w)
    out = np.empty((planes.shape[0], *out_shape), dtype=np.float32)
    for n, plane in enumerate(planes):
        ndi.affine_transform(
            plane.astype(np.float32, copy=False),
            matrix,
            offset=offset,
            output_shape=out_shape,
            output=out[n],
            order=1,
            mode="nearest",
        )
    placed: NDArray[Any] = out.reshape(*lead, *out_shape)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        placed = np.clip(np.rint(placed), info.min, info.max).astype(pixels.dtype)
    return slice(rs, re), slice(cs, ce), placed, inside
