"""Both flat fields against the true vignetting (see README.md); prints one JSON line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.flatfield import flat_from_tiles
from analysis.tile import correct_tile
from tests.analysis import _optics as optics


def errors(flat: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    rel = flat / truth - 1
    return float(100 * np.max(np.abs(rel))), float(100 * np.sqrt(np.mean(rel**2)))


def uniformity(flat: np.ndarray, uniform: np.ndarray, offset: float) -> float:
    c = correct_tile(uniform, dark_offset_adu=offset, flat_field=flat.astype(np.float32))
    b = c.reshape(c.shape[0] // 16, 16, c.shape[1] // 16, 16).mean(axis=(1, 3))
    return float(100 * np.max(np.abs(b / b.mean() - 1)))


if __name__ == "__main__":
    d = np.load("/tmp/flatfield_basicpy_tiles.npz")
    truth = d["truth"]
    t0 = time.perf_counter()
    tiles = list(d["tiles"])
    ours = flat_from_tiles(tiles, dark_offset_adu=float(d["offset"]), channel="DAPI", block_px=16).image
    seconds = time.perf_counter() - t0
    basic = np.load("/tmp/flatfield_basicpy_flat.npy")
    basic = basic / basic.mean()
    camera = optics.Camera()
    uniform = camera.expose(25.0 * optics.vignetting(truth.shape, 0.12), 20.0, np.random.default_rng(9))
    row = {
        "benchmark": "flatfield_vs_basicpy",
        "ours_max_err_pct": round(errors(ours, truth)[0], 2),
        "ours_rms_err_pct": round(errors(ours, truth)[1], 2),
        "ours_uniformity_pct": round(uniformity(ours, uniform, camera.offset_adu), 2),
        "ours_seconds": round(seconds, 2),
        "basicpy_max_err_pct": round(errors(basic, truth)[0], 2),
        "basicpy_rms_err_pct": round(errors(basic, truth)[1], 2),
        "basicpy_uniformity_pct": round(uniformity(basic, uniform, camera.offset_adu), 2),
        "max_difference_pct": round(float(100 * np.max(np.abs(ours / basic - 1))), 2),
    }
    print(json.dumps(row))
