"""Synthetic tissue tiles with a known vignetting, for the flat-field comparison (see README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.analysis import _optics as optics
from tests.analysis.test_calibration import FLAT_SHAPE, tissue_tiles

OUT = Path("/tmp/flatfield_basicpy_tiles.npz")

if __name__ == "__main__":
    rng = np.random.default_rng(4)
    vignette = optics.vignetting(FLAT_SHAPE, 0.12)
    camera = optics.Camera()
    tiles = np.stack(tissue_tiles(rng, 300, vignette, camera)).astype(np.float32)
    np.savez(OUT, tiles=tiles, truth=vignette / vignette.mean(), offset=camera.offset_adu)
