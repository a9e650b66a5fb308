"""Beads and size standards imaged by the demo slide's own renderer (test helper).

Until the demo slide has a bead area, calibration tests on the first image
model render beads (0.2 µm) and size-standard beads (2-4 µm) with the
demo's object renderer and camera model (dark offset 100 ADU, gain 0.5 e/ADU,
QE 0.8, read noise 1.6 e), at 10x, in focus.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from acquisition.demo import _slide_render as rnd

PIXEL_UM = 0.65
DARK_OFFSET_ADU = 100.0


def render_discs(
    shape: tuple[int, int],
    centres_rc: NDArray[np.float64],
    radius_um: float,
    photons_per_ms: float,
    rng: np.random.Generator | None,
    *,
    pixel_size_um: float = PIXEL_UM,
    exposure_ms: float = 50.0,
) -> NDArray[np.float32]:
    """Raw frame (ADU) of discs at pixel positions (row, col), rendered as the demo camera would."""
    h, w = shape
    p = pixel_size_um
    grid = rnd.FrameGrid.from_center((w * p / 2, h * p / 2), p, shape)
    x0, y0 = grid.bbox_um()[:2]
    x = x0 + (centres_rc[:, 1] + 0.5) * p
    y = y0 + (centres_rc[:, 0] + 0.5) * p
    r2 = np.full(len(x), radius_um**2)
    amp = np.full(len(x), photons_per_ms)
    objects = rnd.ObjectSet.build(x, y, r2, np.zeros(len(x)), r2, amp, isotropic=True)
    focal = rnd.FocalPlane(0.0, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0))
    rate = np.empty(shape, np.float32)
    rnd.render_frame(rate, grid, 0.0, focal, [], (0.0, 0.0), [objects])
    adu = rate * np.float32(exposure_ms * 0.8 / 0.5)
    if rng is not None:
        adu = adu + rng.standard_normal(shape).astype(np.float32) * np.sqrt(adu / 0.5 + (1.6 / 0.5) ** 2)
    return np.rint(adu + DARK_OFFSET_ADU).astype(np.float32)


def jittered_grid(rng: np.random.Generator, shape: tuple[int, int], spacing: int) -> NDArray[np.float64]:
    """Pixel positions on a grid, each moved by up to half a pixel (random sub-pixel phases)."""
    rows, cols = np.mgrid[spacing : shape[0] - spacing : spacing, spacing : shape[1] - spacing : spacing]
    pts = np.column_stack([rows.ravel(), cols.ravel()]).astype(np.float64)
    return pts + rng.uniform(-0.5, 0.5, pts.shape)


def bead_images(rng: np.random.Generator, shape: tuple[int, int] = (512, 512)) -> NDArray[np.float32]:
    """Sub-resolution beads (0.2 µm), 24 px apart."""
    return render_discs(shape, jittered_grid(rng, shape, 24), 0.1, 400.0, rng)


def size_standards(
    rng: np.random.Generator, diameters_um: tuple[float, ...] = (2.0, 3.0, 4.0)
) -> dict[float, NDArray[np.float32]]:
    """Dark-corrected frames of size-standard beads, one per diameter."""
    out = {}
    for d in diameters_um:
        raw = render_discs((512, 512), jittered_grid(rng, (512, 512), 36), d / 2.0, 14.0, rng)
        out[d] = raw - np.float32(DARK_OFFSET_ADU)
    return out
