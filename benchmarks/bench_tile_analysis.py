"""Per-tile analysis latency on one core: segmentation alone, the whole live step, final results.

1. ``correct_tile`` + ``segment_axons`` (``analysis/tile.py``) of 20 different
   2048 × 2048 tdTomato tiles snapped once from the demo microscope (10x, in
   focus, noise on): the rubrospinal territory and the contralateral gray
   matter of intact/vehicle/treated sections at C5 and L2 (axon-rich),
   ipsilateral tissue and glass (axon-free), beaded fibres of horizontal
   sections; several rounds (``p50_ms`` / ``p95_ms`` wall, ``cpu_p50_ms`` /
   ``cpu_p95_ms`` CPU time of the thread: target p50 15 ms). The same with an
   object-size model (``size_model_*``: a calibrated scan's path; the demo
   optics' Gaussian PSF, σ 0.45 px, built once as a scan builds it).
2. The whole per-tile step of the live analysis, ``SectionAnalysis.add_tile``
   (both channels, correction and segmentation of the tracer, reduction to
   blocks, placement in the mosaic and the regional sums, registration
   against the already analysed edge neighbours): a 4 × 4 serpentine grid of
   two-channel 2048² tiles with 10 % overlap over rat01-C5, in scan order, the
   stage landing up to a few µm off target (``PositioningError_um`` 3), so
   registration has work to do (``add_tile_p50_ms`` / ``add_tile_p95_ms``:
   target 30 / 50 ms; ``add_tile_outside_tile_py_*``: the same minus the time
   spent in ``analysis/tile.py``; ``add_tile_cpu_*``: CPU time of the thread,
   which other jobs on a shared machine do not inflate).
3. ``SectionAnalysis.results()`` after the last tile (registration solve,
   placement at the registered positions, region masks, table, heatmaps): the
   4 × 4 grid above, and rat01-Th7 at 10x with 512² tiles (``results_*_ms``,
   target 2000 ms).

Everything runs pinned to one CPU with single-threaded numerics. Prints one
JSON line; the machine may be shared, so the numbers are what was measured,
not a bound.

Run: ``.venv/bin/python benchmarks/bench_tile_analysis.py [rounds]``
"""

from __future__ import annotations

import json
import sys
import time

from _one_core import CPU  # pins the process and sets one thread: before numpy

# isort: split
import numpy as np

from analysis.object_size import object_size_model
from analysis.psf import gaussian_psf
from analysis.tile import ObjectSizeModel, correct_tile, normalise_flat_field, segment_axons

TARGET_P50_MS = 15.0
TARGET_P95_MS = 30.0
ADD_TILE_P50_MS, ADD_TILE_P95_MS = 30.0, 50.0
RESULTS_MS = 2000.0
POSITIONING_ERROR_UM = 3.0
SENSOR_PX = 2048
PIXEL_UM = 0.65
EXPOSURE_MS = 50.0


def _positions(slide) -> list[tuple[str, str, tuple[float, float]]]:
    """(kind, section id, stage xy) of the 20 tiles."""
    out: list[tuple[str, str, tuple[float, float]]] = []
    for sec in slide.sections:
        spec = sec.spec
        if (
            spec.orientation == "coronal"
            and spec.level in ("C5", "L2")
            and spec.animal in ("rat01", "rat03", "rat05")
        ):
            rst = sec.rubrospinal_territory.mean(axis=0)
            mid = np.asarray(sec.midline_point_um)
            out.append(("axons", spec.section_id, (float(rst[0]), float(rst[1]))))
            gray = 0.5 * (rst + mid)
            out.append(("axons", spec.section_id, (float(gray[0]), float(gray[1]))))
            if spec.level == "C5":
                right = np.asarray(sec.right_direction)
                ipsi = rst - 2.0 * np.dot(rst - mid, right) * right
                out.append(("no_axons", spec.section_id, (float(ipsi[0]), float(ipsi[1]))))
        elif spec.orientation == "horizontal" and spec.animal in ("rat02", "rat04"):
            side = 1.0 if spec.tracer_side == "right" else -1.0
            for along in (2500.0, -1500.0):  # rostral (dense fibres), caudal (spared fibres)
                xy = np.asarray(sec.epicenter_um) + along * np.asarray(sec.rostral_direction)
                xy = xy + side * 700.0 * np.asarray(sec.right_direction)
                out.append(("axons", spec.section_id, (float(xy[0]), float(xy[1]))))
    out.append(("no_axons", "glass", (10_000.0, 12_000.0)))
    return out


def _snap_tiles() -> tuple[list[tuple[str, np.ndarray]], float]:
    from acquisition.demo import find_demo_hub
    from acquisition.hardware import build_core

    core = build_core()
    try:
        for prop, value in (
            ("SensorWidth", SENSOR_PX),
            ("SensorHeight", SENSOR_PX),
            ("Noise", "On"),
            ("NoiseSeed", 7),
        ):
            core.setProperty("Camera", prop, value)
        slide = find_demo_hub(core).slide
        core.setConfig("Objective", "10x")
        core.setConfig("Channel", "tdTomato")
        core.setExposure(EXPOSURE_MS)
        dark = float(core.getProperty(core.getCameraDevice(), "DarkOffset_ADU"))
        tiles = []
        for kind, _section, xy in _positions(slide):
            core.setXYPosition(*xy)
            core.setPosition(float(slide.focal_plane_z_um(*xy)))
            core.snapImage()
            tiles.append((kind, core.getImage().copy()))
        return tiles, dark
    finally:
        core.close()


def _section_grid(
    section_id: str, sensor_px: int, *, rows: int | None = None, cols: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Planned tile centres of a serpentine grid with 10 % overlap: ``rows × cols`` around the
    section's midline point, or covering its bounding box; the true positions and the section."""
    from acquisition.demo import find_demo_hub
    from acquisition.hardware import build_core

    core = build_core()
    try:
        core.setProperty("Camera", "SensorWidth", sensor_px)
        core.setProperty("Camera", "SensorHeight", sensor_px)
        core.setProperty("XYStage", "PositioningError_um", POSITIONING_ERROR_UM)
        core.setProperty("XYStage", "PositioningErrorSeed", 11)
        slide = find_demo_hub(core).slide
        sec = next(s for s in slide.sections if s.spec.section_id == section_id)
        fov = sensor_px * PIXEL_UM
        step = 0.9 * fov
        if rows is None or cols is None:
            x0, y0, x1, y1 = sec.bbox_um
            cols = int(np.ceil((x1 - x0 - fov) / step)) + 1
            rows = int(np.ceil((y1 - y0 - fov) / step)) + 1
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        else:
            cx, cy = np.asarray(sec.midline_point_um, dtype=np.float64)
        xy = [
            (cx + (j - (cols - 1) / 2) * step, cy + (i - (rows - 1) / 2) * step)
            for i in range(rows)
            for j in (range(cols) if i % 2 == 0 else reversed(range(cols)))
        ]
        core.setConfig("Objective", "10x")
        tiles, true = [], []
        for x, y in xy:
            core.setXYPosition(x, y)
            true.append(
                (
                    float(core.getProperty("XYStage", "TrueX_um")),
                    float(core.getProperty("XYStage", "TrueY_um")),
                )
            )
            core.setPosition(float(slide.focal_plane_z_um(x, y)))
            frames = []
            for channel, exposure in (("DAPI", 20.0), ("tdTomato", EXPOSURE_MS)):
                core.setConfig("Channel", channel)
                core.setExposure(exposure)
                core.snapImage()
                frames.append(core.getImage().copy())
            tiles.append(np.stack(frames))
        attrs = {"orientation": sec.spec.orientation, "injection_side": "left"}
        return np.asarray(xy), np.stack(tiles), {"true_um": np.asarray(true), "attrs": attrs}
    finally:
        core.close()


def _new_section(xy: np.ndarray, tiles: np.ndarray, attrs: dict):
    from analysis.section_analysis import SectionAnalysis

    return SectionAnalysis(
        section_id="bench",
        tile_xy_um=xy,
        tile_shape_px=tiles.shape[-2:],
        pixel_size_um=PIXEL_UM,
        n_channels=2,
        tracer_channel=1,
        anatomy_channel=0,
        channel_names=("DAPI", "tdTomato"),
        section_attrs=attrs,
        read_tile=lambda t: tiles[t],  # from memory: what a re-read would cost at best
    )


def _add_tile_ms(rounds: int) -> dict[str, object]:
    """add_tile wall and CPU times on the 2048² grid; results() after each round."""
    import analysis.section_analysis as sa

    xy, tiles, info = _section_grid("rat01-C5", SENSOR_PX, rows=4, cols=4)
    in_tile_py = [0.0, 0.0]  # wall, CPU

    def timed(f):
        def run(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                in_tile_py[0] += time.perf_counter() - t0
                in_tile_py[1] += time.thread_time() - c0

        return run

    wall, cpu, outside, outside_cpu, results, rebuilt = [], [], [], [], [], []
    real = sa.correct_tile, sa.segment_axons
    sa.correct_tile, sa.segment_axons = timed(real[0]), timed(real[1])
    try:
        for r in range(rounds + 1):  # the first round warms up
            section = _new_section(xy, tiles, info["attrs"])
            for t, tile in enumerate(tiles):
                in_tile_py[:] = [0.0, 0.0]
                c0, t0 = time.thread_time(), time.perf_counter()
                section.add_tile(tile, tile_index=t)
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                if r:
                    wall.append(dt * 1e3)
                    cpu.append(dc * 1e3)
                    outside.append((dt - in_tile_py[0]) * 1e3)
                    outside_cpu.append((dc - in_tile_py[1]) * 1e3)
            t0 = time.perf_counter()
            res = section.results()
            if r:
                results.append((time.perf_counter() - t0) * 1e3)
                rebuilt.append(res.rebuilt_at_registered_positions)
    finally:
        sa.correct_tile, sa.segment_axons = real

    def pct(v: list[float], q: float) -> float:
        return round(float(np.percentile(v, q)), 2)

    return {
        "add_tile_p50_ms": pct(wall, 50),
        "add_tile_p95_ms": pct(wall, 95),
        "add_tile_cpu_p50_ms": pct(cpu, 50),
        "add_tile_cpu_p95_ms": pct(cpu, 95),
        "add_tile_outside_tile_py_p50_ms": pct(outside, 50),
        "add_tile_outside_tile_py_p95_ms": pct(outside, 95),
        "add_tile_outside_tile_py_cpu_p50_ms": pct(outside_cpu, 50),
        "add_tile_outside_tile_py_cpu_p95_ms": pct(outside_cpu, 95),
        "add_tile_passed": pct(wall, 50) <= ADD_TILE_P50_MS and pct(wall, 95) <= ADD_TILE_P95_MS,
        "add_tile_n": len(wall),
        "results_2048_grid_ms": pct(results, 50),
        "results_2048_grid_rebuilt": all(rebuilt),
        "registration_error_median_px": _registration_error_px(res.registration, info["true_um"]),
    }


def _registration_error_px(reg, true_um: np.ndarray) -> float:
    """Median |registered − true| (px) over the largest group of tiles joined by used pairs.

    Registration measures relative positions: each group keeps its mean planned
    position, so the error is taken after removing the group's mean.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(true_um)
    used = reg.pairs[reg.pair_used]
    graph = coo_matrix((np.ones(len(used)), (used[:, 0], used[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    group = label == np.bincount(label).argmax()
    err = reg.positions_um[group] - true_um[group]
    err -= err.mean(axis=0)
    return round(float(np.median(np.hypot(*err.T))) / PIXEL_UM, 3)


def _results_ms(rounds: int) -> dict[str, object]:
    """results() of a whole demo section (rat01-Th7, 512² tiles), after its last tile."""
    import analysis.section_analysis as sa

    xy, tiles, info = _section_grid("rat01-Th7", 512)
    times, cpu, regions, rebuilt = [], [], [], []
    in_regions = [0.0]
    real = sa.section_regions

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            in_regions[0] += time.perf_counter() - t0

    sa.section_regions = timed
    try:
        for _ in range(max(1, rounds)):
            section = _new_section(xy, tiles, info["attrs"])
            for t, tile in enumerate(tiles):
                section.add_tile(tile, tile_index=t)
            in_regions[0] = 0.0
            c0, t0 = time.thread_time(), time.perf_counter()
            res = section.results()
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.thread_time() - c0) * 1e3)
            regions.append(in_regions[0] * 1e3)
            rebuilt.append(res.rebuilt_at_registered_positions)
    finally:
        sa.section_regions = real
    return {
        "results_th7_512_ms": round(float(np.median(times)), 1),
        "results_th7_512_max_ms": round(float(np.max(times)), 1),
        "results_th7_512_cpu_ms": round(float(np.median(cpu)), 1),
        "results_th7_512_region_masks_ms": round(float(np.median(regions)), 1),
        "results_th7_512_rebuilt": all(rebuilt),
        "results_th7_512_tiles": len(xy),
        "results_th7_512_registration_error_median_px": _registration_error_px(
            res.registration, info["true_um"]
        ),
        "results_passed": float(np.max(times)) <= RESULTS_MS,
    }


def _analyse_ms(
    image: np.ndarray, dark: float, flat: np.ndarray | None = None, size_model: ObjectSizeModel | None = None
) -> tuple[float, float, int, float]:
    """(wall ms, wall ms of the correction, axon pixels, CPU ms) of one tile."""
    c0, t0 = time.thread_time(), time.perf_counter()
    corrected = correct_tile(image, dark_offset_adu=dark, flat_field=flat)
    t1 = time.perf_counter()
    seg = segment_axons(corrected, pixel_size_um=PIXEL_UM, size_model=size_model)
    t2, c2 = time.perf_counter(), time.thread_time()
    return (t2 - t0) * 1e3, (t1 - t0) * 1e3, seg.axon_pixels, (c2 - c0) * 1e3


def main(rounds: int = 5) -> dict[str, object]:
    """Run the benchmark and return its result row."""
    tiles, dark = _snap_tiles()
    for _kind, image in tiles[:3]:  # warm up
        _analyse_ms(image, dark)
    total: list[float] = []
    total_cpu: list[float] = []
    correct: list[float] = []
    by_kind: dict[str, list[float]] = {"axons": [], "no_axons": []}
    axon_fraction = []
    for _ in range(rounds):
        for kind, image in tiles:
            t_all, t_corr, n_px, c_all = _analyse_ms(image, dark)
            total.append(t_all)
            total_cpu.append(c_all)
            correct.append(t_corr)
            by_kind[kind].append(t_all)
            axon_fraction.append(n_px / image.size)
    model = object_size_model(gaussian_psf(0.45 * PIXEL_UM, pixel_size_um=PIXEL_UM), pixel_size_um=PIXEL_UM)
    sized = [_analyse_ms(image, dark, size_model=model) for _ in range(rounds) for _kind, image in tiles]
    # with a flat field (a synthetic 20 % vignette) on the axon-rich tiles
    yy, xx = np.mgrid[0:SENSOR_PX, 0:SENSOR_PX] / SENSOR_PX - 0.5
    flat = normalise_flat_field(dark + 1000.0 * (1.0 - 0.8 * (xx**2 + yy**2)), dark_offset_adu=dark)
    with_flat = [_analyse_ms(image, dark, flat)[0] for kind, image in tiles if kind == "axons"]

    def pct(v: list[float], q: float) -> float:
        return round(float(np.percentile(v, q)), 2)

    p95 = float(np.percentile(total, 95))
    add_tile = _add_tile_ms(max(1, rounds // 2))
    final = _results_ms(max(1, rounds // 2))
    return {
        "benchmark": "tile_analysis_2048",
        "p50_ms": round(float(np.percentile(total, 50)), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(float(np.max(total)), 2),
        "cpu_p50_ms": pct(total_cpu, 50),
        "cpu_p95_ms": pct(total_cpu, 95),
        "size_model_p50_ms": pct([t[0] for t in sized], 50),
        "size_model_cpu_p50_ms": pct([t[3] for t in sized], 50),
        "size_model_cpu_p95_ms": pct([t[3] for t in sized], 95),
        "target_p50_ms": TARGET_P50_MS,
        "target_p95_ms": TARGET_P95_MS,
        "passed": p95 <= TARGET_P95_MS,
        "cpu_p50_passed": max(pct(total_cpu, 50), pct([t[3] for t in sized], 50)) <= TARGET_P50_MS,
        "axon_rich_p95_ms": round(float(np.percentile(by_kind["axons"], 95)), 2),
        "axon_free_p50_ms": round(float(np.percentile(by_kind["no_axons"], 50)), 2),
        "correct_p50_ms": round(float(np.percentile(correct, 50)), 2),
        "with_flat_field_p50_ms": round(float(np.percentile(with_flat, 50)), 2),
        **add_tile,
        **final,
        "n_tiles": len(tiles),
        "n_timings": len(total),
        "max_axon_fraction": round(float(max(axon_fraction)), 4),
        "cpu": CPU,
    }


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:]))))
