"""Pixel ↔ stage geometry of a camera on a stage: Micro-Manager's pixel-size affine (pure numpy).

Shared by acquisition (tile spacing, the overview) and analysis (mosaics,
registration, exports, napari): one definition of the convention.

The pixel-size affine
---------------------
Micro-Manager describes how the camera sits on the stage by the pixel-size
affine (``core.getPixelSizeAffine()`` → ``(a, b, c, d, e, f)``). CordScope
uses its 2 × 2 part ``A = [[a, b], [d, e]]`` (µm per pixel, binning applied;
``c`` and ``f`` are ignored): the stage displacement of a pixel offset
``(u, v)`` from the image centre (``u`` along columns, ``v`` along rows) is::

    dx = a·u + b·v,    dy = d·u + e·v

with pixel centres at ``u = c + 0.5 − W/2``, ``v = r + 0.5 − H/2`` for the
pixel in row ``r``, column ``c`` of an ``(H, W)`` image. An identity affine
``(1, 0, 0, 0, 1, 0)`` in a config means "not set": then ``A = p·I`` with
``p`` the pixel size (:func:`affine_from_core`). Scan files store ``A`` per
section as the attribute ``pixel_affine_um`` (JSON ``[[a, b], [d, e]]``);
files without it mean ``pixel_size_um · I`` (:func:`affine_from_attr`). The
pixel size is ``sqrt(|det A|)``.

Rotations by multiples of 90° and mirrors (``A`` a scaled signed
permutation) are exact: an image in the camera's frame turns into the stage
frame by transposes and flips (:func:`to_stage_orientation`, views, no
copy). Any other ``A`` (a camera rotated by 1–2°, say) needs resampling.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "IDENTITY_AFFINE6",
    "AxisPermutation",
    "affine_from_attr",
    "affine_from_core",
    "affine_to_attr",
    "axis_permutation",
    "covered_extent_um",
    "footprint_bbox_um",
    "footprint_corners_um",
    "inverse_affine",
    "pixel_size_from_affine",
    "pixel_to_stage_matrix",
    "pixel_to_stage_um",
    "px_offset_to_stage_um",
    "stage_offset_to_px",
    "stage_to_pixel",
    "to_stage_orientation",
    "validate_affine",
]

F64 = NDArray[np.float64]

#: Micro-Manager's affine when none is configured (treated as "use the pixel size").
IDENTITY_AFFINE6 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# entries this small relative to the pixel size are float noise of a config, not a rotation
_ZERO_REL = 1e-9


# ---------------------------------------------------------------- the affine


def validate_affine(affine_um: ArrayLike) -> F64:
    """The 2 × 2 pixel-size affine as float64, entries of float-noise size set to zero.

    Parameters
    ----------
    affine_um : (2, 2) array
        ``[[a, b], [d, e]]``, µm of stage per pixel (see the module docstring).

    Returns
    -------
    (2, 2) float64

    Raises
    ------
    ValueError
        If it is not a finite, invertible 2 × 2 matrix.
    """
    a = np.array(affine_um, dtype=np.float64)
    if a.shape != (2, 2) or not np.isfinite(a).all():
        raise ValueError(f"the pixel affine must be a finite 2 × 2 matrix [[a, b], [d, e]], got {a.tolist()}")
    det = float(a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0])
    if not det:
        raise ValueError(f"the pixel affine {a.tolist()} is singular (its pixels have no area)")
    scale = math.sqrt(abs(det))
    a[np.abs(a) < _ZERO_REL * scale] = 0.0
    return a


def pixel_size_from_affine(affine_um: ArrayLike) -> float:
    """Pixel size (µm) of an affine: ``sqrt(|det A|)``."""
    a = validate_affine(affine_um)
    return math.sqrt(abs(float(a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0])))


def affine_from_core(affine6: Sequence[float], pixel_size_um: float) -> F64:
    """The 2 × 2 affine from ``core.getPixelSizeAffine()``; identity means "not set".

    Parameters
    ----------
    affine6 : (a, b, c, d, e, f)
        Micro-Manager's pixel-size affine (binning already applied by the core).
    pixel_size_um : float
        ``core.getPixelSizeUm()``, used when the affine is the identity.

    Returns
    -------
    (2, 2) float64
        ``[[a, b], [d, e]]``, or ``pixel_size_um · I`` for ``(1, 0, 0, 0, 1, 0)``.
    """
    v = tuple(float(x) for x in affine6)
    if len(v) != 6:
        raise ValueError(f"a pixel-size affine has 6 numbers (a, b, c, d, e, f), got {len(v)}")
    if v == IDENTITY_AFFINE6:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel size must be positive, got {pixel_size_um!r}")
        return float(pixel_size_um) * np.eye(2)
    return validate_affine([[v[0], v[1]], [v[3], v[4]]])


def affine_from_attr(value: Any, pixel_size_um: float) -> F64:
    """A section's affine from its ``pixel_affine_um`` attribute (JSON text, nested list or array).

    ``None`` (an older file) gives ``pixel_size_um · I``.

    Raises
    ------
    ValueError
        If the attribute is not a 2 × 2 invertible matrix.
    """
    if value is None:
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel size must be positive, got {pixel_size_um!r}")
        return float(pixel_size_um) * np.eye(2)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"pixel_affine_um is not JSON [[a, b], [d, e]]: {value!r}") from e
    return validate_affine(value)


def affine_to_attr(affine_um: ArrayLike) -> str:
    """The ``pixel_affine_um`` attribute text (JSON ``[[a, b], [d, e]]``) of an affine."""
    return json.dumps(validate_affine(affine_um).tolist())


def inverse_affine(affine_um: F64) -> F64:
    """The inverse of a (validated) pixel affine: pixel steps per stage µm."""
    a, b, d, e = affine_um[0, 0], affine_um[0, 1], affine_um[1, 0], affine_um[1, 1]
    det = a * e - b * d
    # exact zeros stay exact zeros (diagonal and anti-diagonal affines stay separable)
    return np.array([[e / det, -b / det], [-d / det, a / det]], dtype=np.float64) + 0.0


# ---------------------------------------------------------------- points


def _offsets(n: int) -> F64:
    return np.arange(n, dtype=np.float64) + 0.5 - n / 2


def pixel_to_stage_um(
    rows: ArrayLike,
    cols: ArrayLike,
    *,
    center_um: Sequence[float],
    affine_um: ArrayLike,
    tile_shape: tuple[int, int],
) -> tuple[F64, F64]:
    """Stage position (µm) of pixel centres of a tile.

    Parameters
    ----------
    rows, cols : arrays (broadcast together)
        Pixel indices (fractional allowed).
    center_um : (x, y)
        Stage position of the tile centre.
    affine_um : (2, 2)
    tile_shape : (H, W)

    Returns
    -------
    (x_um, y_um) arrays of the broadcast shape
    """
    a = validate_affine(affine_um)
    h, w = tile_shape
    u = np.asarray(cols, dtype=np.float64) + 0.5 - w / 2
    v = np.asarray(rows, dtype=np.float64) + 0.5 - h / 2
    return center_um[0] + a[0, 0] * u + a[0, 1] * v, center_um[1] + a[1, 0] * u + a[1, 1] * v


def stage_to_pixel(
    x_um: ArrayLike,
    y_um: ArrayLike,
    *,
    center_um: Sequence[float],
    affine_um: ArrayLike,
    tile_shape: tuple[int, int],
) -> tuple[F64, F64]:
    """Fractional pixel indices (rows, cols) of stage points in a tile (inverse of pixel_to_stage_um)."""
    inv = inverse_affine(validate_affine(affine_um))
    h, w = tile_shape
    dx = np.asarray(x_um, dtype=np.float64) - center_um[0]
    dy = np.asarray(y_um, dtype=np.float64) - center_um[1]
    u = inv[0, 0] * dx + inv[0, 1] * dy
    v = inv[1, 0] * dx + inv[1, 1] * dy
    return v - 0.5 + h / 2, u - 0.5 + w / 2


def stage_offset_to_px(delta_um: ArrayLike, affine_um: ArrayLike) -> F64:
    """Pixel-frame offset ``(du, dv)`` (columns, rows) of a stage displacement ``(dx, dy)``: ``A⁻¹ Δ``."""
    d = np.asarray(delta_um, dtype=np.float64)
    return np.asarray(d @ inverse_affine(validate_affine(affine_um)).T, dtype=np.float64)


def px_offset_to_stage_um(delta_px: ArrayLike, affine_um: ArrayLike) -> F64:
    """Stage displacement ``(dx, dy)`` (µm) of pixel-frame offsets ``(du, dv)`` (rows): ``A Δ``."""
    d = np.asarray(delta_px, dtype=np.float64)
    return np.asarray(d @ validate_affine(affine_um).T, dtype=np.float64)


def footprint_corners_um(
    center_um: Sequence[float], affine_um: ArrayLike, tile_shape: tuple[int, int]
) -> F64:
    """(4, 2) stage corners (µm) of a tile's footprint (pixel edges, not centres), in order around it."""
    a = validate_affine(affine_um)
    h, w = tile_shape
    uv = np.array([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)])
    return np.asarray(uv @ a.T + np.asarray(center_um, dtype=np.float64), dtype=np.float64)


def footprint_bbox_um(
    centres_um: ArrayLike, affine_um: ArrayLike, tile_shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Stage bounding box ``(x0, y0, x1, y1)`` (µm) of the footprints of tiles at ``centres_um`` ((n, 2))."""
    c = np.asarray(centres_um, dtype=np.float64).reshape(-1, 2)
    if not len(c):
        raise ValueError("no tile centres")
    corners = footprint_corners_um((0.0, 0.0), affine_um, tile_shape)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    x0, y0 = c.min(axis=0) + lo
    x1, y1 = c.max(axis=0) + hi
    return float(x0), float(y0), float(x1), float(y1)


def pixel_to_stage_matrix(
    center_um: Sequence[float], affine_um: ArrayLike, tile_shape: tuple[int, int]
) -> F64:
    """3 × 3 homogeneous matrix taking ``(col, row, 1)`` pixel indices to stage ``(x, y, 1)`` (µm).

    Pixel index ``(0, 0)`` is the centre of the first pixel (exports and
    viewers that place pixel corners at integers add half a pixel).
    """
    a = validate_affine(affine_um)
    h, w = tile_shape
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = np.asarray(center_um, dtype=np.float64) + a @ np.array([0.5 - w / 2, 0.5 - h / 2])
    return m


# ---------------------------------------------------------------- 90° rotations and mirrors


@dataclasses.dataclass(frozen=True)
class AxisPermutation:
    """How a camera image turns into the stage frame when the affine is a scaled signed permutation.

    Apply in order: transpose (rows ↔ columns), then flip rows, then flip
    columns. The result has rows along +y and columns along +x.
    """

    transpose: bool
    flip_rows: bool
    flip_cols: bool


def axis_permutation(affine_um: ArrayLike, *, rtol: float = 1e-9) -> AxisPermutation | None:
    """The transposes and flips equivalent to an affine, or None if it is not a 90°-multiple/mirror.

    Parameters
    ----------
    affine_um : (2, 2)
    rtol : float
        Relative tolerance on the zero entries and on equal magnitudes.
    """
    a = validate_affine(affine_um)
    p = pixel_size_from_affine(a)
    if abs(a[0, 1]) <= rtol * p and abs(a[1, 0]) <= rtol * p and abs(abs(a[0, 0]) - abs(a[1, 1])) <= rtol * p:
        # x ← ±u (columns), y ← ±v (rows)
        return AxisPermutation(transpose=False, flip_rows=a[1, 1] < 0, flip_cols=a[0, 0] < 0)
    if abs(a[0, 0]) <= rtol * p and abs(a[1, 1]) <= rtol * p and abs(abs(a[0, 1]) - abs(a[1, 0])) <= rtol * p:
        # x ← ±v (rows), y ← ±u (columns): transposed, then flipped
        return AxisPermutation(transpose=True, flip_rows=a[1, 0] < 0, flip_cols=a[0, 1] < 0)
    return None


def to_stage_orientation(image: ArrayLike, affine_um: ArrayLike) -> NDArray[Any]:
    """A view of a camera image (``(..., H, W)``) with rows along +y and columns along +x.

    Raises
    ------
    ValueError
        If the affine is not a multiple of 90° or a mirror (that needs resampling).
    """
    perm = axis_permutation(affine_um)
    if perm is None:
        raise ValueError(
            f"the pixel affine {validate_affine(affine_um).tolist()} is not a 90° rotation or mirror; "
            "resample the image instead"
        )
    out = np.asarray(image)
    if perm.transpose:
        out = out.swapaxes(-1, -2)
    if perm.flip_rows:
        out = out[..., ::-1, :]
    if perm.flip_cols:
        out = out[..., :, ::-1]
    return out


def covered_extent_um(affine_um: ArrayLike, image_px: Sequence[int]) -> tuple[float, float]:
    """Width and height (µm, along stage x and y) of the stage-aligned rectangle one image surely covers.

    A camera aligned with the stage covers ``W·p × H·p``; one turned by 90°
    swaps them; a slightly rotated one covers a slightly smaller centred
    rectangle inside its rotated field, which is what tiles must be spaced by
    so that no gap opens between them.

    Parameters
    ----------
    affine_um : (2, 2) array
        Pixel affine, µm per pixel step (column 0: along image columns).
    image_px : (int, int)
        Image (width, height) in pixels.
    """
    a = np.abs(validate_affine(affine_um))
    w, h = float(image_px[0]), float(image_px[1])
    out = []
    for row in a:
        along_w, along_h = row[0] * w, row[1] * h
        out.append(abs(along_w - along_h) if along_w and along_h else along_w + along_h)
    return (out[0], out[1])
