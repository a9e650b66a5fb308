"""A PSF from a bead z-stack, as ``cordscope calibrate`` takes it: the same PSF as from the in-focus plane.

Regression: a stack's maximum projection sits above each plane's median
(noise maxima of several planes), so every noise maximum counted as a
neighbour and almost no bead was isolated (9 beads, FWHM 1.26 µm on the demo
bead area); and the best plane was chosen by a 3 × 3 mean, which hardly
changes with focus for beads near the resolution, so beads were fitted in
defocused planes.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.psf import measure_psf_from_beads
from tests.analysis import _optics

PIXEL_UM = 0.65
SHAPE = (256, 256)
SIGMA_IN_FOCUS_UM = 0.4
DEFOCUS_SLOPE = 0.3  # σ grows by this many µm per µm of defocus


def bead_stack(rng, planes_um):
    beads = []
    for r in range(12, SHAPE[0] - 12, 20):
        for c in range(12, SHAPE[1] - 12, 20):
            row, col = r + rng.uniform(-3, 3), c + rng.uniform(-3, 3)
            beads.append(_optics.Ellipse(row, col, 0.05, 0.05, 0.0, 4.0e4))
    camera = _optics.Camera()
    frames = []
    for dz in planes_um:
        sigma = float(np.hypot(SIGMA_IN_FOCUS_UM, DEFOCUS_SLOPE * dz))
        rate = _optics.render(SHAPE, beads, pixel_size_um=PIXEL_UM, psf=("gaussian", sigma))
        frames.append(camera.expose(rate, 20.0, rng))
    return np.stack(frames), len(beads), camera.offset_adu


@pytest.mark.parametrize(
    "planes_um", [(-1.0, -0.5, 0.0, 0.5, 1.0), (-2.0, -1.0, 0.0, 1.0, 2.0)], ids=["1um", "2um"]
)
def test_a_stack_gives_the_in_focus_psf_from_most_beads(planes_um):
    rng = np.random.default_rng(4)
    stack, n_beads, offset = bead_stack(rng, planes_um)
    single, _ = measure_psf_from_beads(
        stack[len(planes_um) // 2], pixel_size_um=PIXEL_UM, dark_offset_adu=offset
    )
    psf, fit = measure_psf_from_beads(stack, pixel_size_um=PIXEL_UM, dark_offset_adu=offset)
    assert len(fit.used) >= 0.9 * n_beads  # every bead found and fitted
    assert np.mean(fit.z_index == len(planes_um) // 2) >= 0.9  # in its in-focus plane
    assert psf.n_beads >= 0.6 * n_beads
    assert psf.fwhm_um == pytest.approx(single.fwhm_um, rel=0.05)
