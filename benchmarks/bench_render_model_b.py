"""Render latency of model B's virtual slide on one core.

Renders 2048 × 2048 frames at 0.454 µm/px (10x/0.30) at varied positions
over tissue (within 30 % of a random section's centre), in both channels, in
focus; then the same positions defocused by 5-25 µm (autofocus sweeps); a
few frames at 4x and 20x; the densest frame of the slide (a rubrospinal
territory at C5); and whole noisy camera frames through the core
(``hardware_configs/demo-model-b.cfg``). Sections' content is built on first
use, so every position is rendered once before timing. Prints one JSON
line: wall-clock and CPU time (the machine may be shared) per frame.

Run: ``.venv/bin/python benchmarks/bench_render_model_b.py [n_positions]``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from _one_core import CPU  # pins the process and sets one thread: before numpy

# isort: split
import numpy as np

from acquisition.demo.model_b import optics
from acquisition.demo.model_b.slide import CHANNELS, ModelBSlide, model_b_slide

TARGET_MS = 60.0
SHAPE = (2048, 2048)
P10X = optics.SENSOR_PIXEL_UM / 10.0


def _positions(slide: ModelBSlide, n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    sections = slide.sections
    out = []
    for k in rng.integers(0, len(sections), n):
        x0, y0, x1, y1 = sections[k].bbox_um
        out.append(
            (
                (x0 + x1) / 2 + rng.uniform(-0.3, 0.3) * (x1 - x0),
                (y0 + y1) / 2 + rng.uniform(-0.3, 0.3) * (y1 - y0),
            )
        )
    return out


def _time(slide: ModelBSlide, out: np.ndarray, **kw: Any) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    slide.render(out=out, **kw)
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def _camera_frames_ms(
    positions: list[tuple[float, float]], slide: ModelBSlide
) -> tuple[list[float], list[float]]:
    from acquisition.hardware import build_core

    cfg = Path(__file__).resolve().parents[1] / "hardware_configs" / "demo-model-b.cfg"
    core = build_core(cfg)  # 2048 × 2048, 16-bit, noise and fixed pattern on
    wall, cpu = [], []
    try:
        for xy in positions:
            for channel in CHANNELS:
                core.setXYPosition(*xy)
                core.setPosition(float(slide.focal_plane_z_um(*xy)))
                core.setConfig("Channel", channel)
                w0, c0 = time.perf_counter(), time.process_time()
                core.snapImage()
                core.getImage()
                wall.append((time.perf_counter() - w0) * 1e3)
                cpu.append((time.process_time() - c0) * 1e3)
    finally:
        core.close()
    return wall, cpu


def main(n_positions: int = 20) -> dict[str, object]:
    """Run the benchmark and return its result row."""
    t0 = time.perf_counter()
    slide = model_b_slide()
    rng = np.random.default_rng(7)
    positions = _positions(slide, n_positions, rng)
    out = np.empty(SHAPE, dtype=np.float32)

    def focus(xy: tuple[float, float]) -> float:
        return float(slide.focal_plane_z_um(*xy))

    for xy in positions:  # build the sections' content, fit the PSF tables
        for channel in CHANNELS:
            slide.render(
                center_um=xy, pixel_size_um=P10X, shape=SHAPE, channel=channel, z_um=focus(xy), out=out
            )
    warm_s = time.perf_counter() - t0
    wall: dict[str, list[float]] = {c: [] for c in CHANNELS}
    cpu: dict[str, list[float]] = {c: [] for c in CHANNELS}
    defocused: list[float] = []
    for xy in positions:
        for channel in CHANNELS:
            w, c = _time(
                slide, out, center_um=xy, pixel_size_um=P10X, shape=SHAPE, channel=channel, z_um=focus(xy)
            )
            wall[channel].append(w)
            cpu[channel].append(c)
        dz = float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 25.0))
        channel = str(rng.choice(CHANNELS))
        kw = dict(center_um=xy, pixel_size_um=P10X, shape=SHAPE, channel=channel, z_um=focus(xy) + dz)
        defocused.append(_time(slide, out, **kw)[1])
    other: dict[str, list[float]] = {"4x": [], "20x": []}
    for xy in positions[:6]:
        for channel in CHANNELS:
            for name in other:
                mag = optics.OBJECTIVE_NA[name][0]
                p = optics.SENSOR_PIXEL_UM / mag
                kw = dict(center_um=xy, pixel_size_um=p, shape=SHAPE, channel=channel, z_um=focus(xy))
                slide.render(out=out, **kw)  # warm: this objective's PSF tables
                other[name].append(_time(slide, out, **kw)[1])
    rst = slide.section("rat11-C5").rubrospinal_territory
    assert rst is not None
    dense_xy = (float(rst[:, 0].mean()), float(rst[:, 1].mean()))
    dense = {
        c: _time(
            slide, out, center_um=dense_xy, pixel_size_um=P10X, shape=SHAPE, channel=c, z_um=focus(dense_xy)
        )[1]
        for c in CHANNELS
    }
    cam_wall, cam_cpu = _camera_frames_ms(positions[:6], slide)
    all_wall = np.concatenate([np.asarray(v) for v in wall.values()])
    all_cpu = np.concatenate([np.asarray(v) for v in cpu.values()])

    def pct(values: list[float] | np.ndarray, q: float) -> float:
        return round(float(np.percentile(values, q)), 1)

    return {
        "benchmark": "render_2048_model_b",
        "p50_ms": pct(all_wall, 50),
        "p95_ms": pct(all_wall, 95),
        "cpu_p50_ms": pct(all_cpu, 50),
        "cpu_p95_ms": pct(all_cpu, 95),
        "target_ms": TARGET_MS,
        "meets_target_cpu_p50": bool(np.percentile(all_cpu, 50) <= TARGET_MS),
        "n_frames": int(all_wall.size),
        "pixel_size_um": P10X,
        "cpu_p50_ms_by_channel": {c: pct(v, 50) for c, v in cpu.items()},
        "cpu_p95_ms_by_channel": {c: pct(v, 95) for c, v in cpu.items()},
        "cpu_defocused_5_25um_p50_ms": pct(defocused, 50),
        "cpu_p50_ms_4x": pct(other["4x"], 50),
        "cpu_p50_ms_20x": pct(other["20x"], 50),
        "cpu_densest_frame_ms": {c: round(v, 1) for c, v in dense.items()},
        "camera_frame_p50_ms": pct(cam_wall, 50),
        "camera_frame_cpu_p50_ms": pct(cam_cpu, 50),
        "first_renders_s": round(warm_s, 1),
        "cpu": CPU,
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(json.dumps(main(n)))
