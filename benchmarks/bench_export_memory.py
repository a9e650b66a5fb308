"""Peak memory of exporting a 1,000-tile scan vs a 100-tile scan (BDV, OME-Zarr, CSV).

Makes two synthetic scan files with ``ScanWriter`` in a temporary folder (no
microscope): 2 sections × 50 tiles and 2 sections × 500 tiles, 2 channels
of 256 × 256 uint16 pixels on a 10 %-overlap grid, every tile done, plus
an analysis group with a heatmap and a region table. Each export runs in
a fresh process, which reports its peak resident memory (``ru_maxrss``)
minus its resident memory just before exporting (after imports), and the
peak of Python/numpy allocations (``tracemalloc``). An export that held a
section (or the slide) at full resolution would grow by ~100 (~250) MB
from the small scan to the large one. The target: the growth differs by
less than :data:`BOUND_MB` (half a full-resolution section mosaic of the
large scan, a fifth of its pixels). What does grow with the number of
tiles is metadata, not pixels: the BDV XML tree (~15 elements per view)
and HDF5's metadata cache (capped by HDF5, 32 MB by default). Prints one
JSON line.

``--camera rot1.5`` (or ``rot90``) stores the tiles as taken through a camera
turned by that much (the section's ``pixel_affine_um``), so OME-Zarr turns
(resamples) every tile into the stage frame: its memory must stay bounded too.

Run: ``.venv/bin/python benchmarks/bench_export_memory.py [--camera aligned|rot90|rot1.5]``
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# isort: split
from acquisition.storage import ScanWriter, SectionLayout  # noqa: E402
from analysis.maps import Heatmaps, RegionRow, write_analysis  # noqa: E402

TILE_PX = 256
PIXEL_UM = 0.65
CHANNELS = ("DAPI", "tdTomato")
BOUND_MB = 50.0
FORMATS = ("bdv", "ome-zarr", "csv")
_T = np.radians(1.5)
#: Pixel-size affine of the tiles (µm per pixel step along columns, rows) per ``--camera``.
CAMERAS = {
    "aligned": PIXEL_UM * np.eye(2),
    "rot90": PIXEL_UM * np.array([[0.0, -1.0], [1.0, 0.0]]),
    "rot1.5": PIXEL_UM * np.array([[np.cos(_T), -np.sin(_T)], [np.sin(_T), np.cos(_T)]]),
}


def _grid(n_tiles: int, x0: float) -> np.ndarray:
    step = 0.9 * TILE_PX * PIXEL_UM
    cols = int(np.ceil(np.sqrt(n_tiles)))
    return np.array([[x0 + (i % cols) * step, 1000.0 + (i // cols) * step] for i in range(n_tiles)])


def make_scan(path: Path, tiles_per_section: int, camera: str = "aligned") -> None:
    """Write a synthetic finished, analysed scan of 2 sections (tiles through ``CAMERAS[camera]``)."""
    layouts = [
        SectionLayout(
            f"S{s + 1}",
            _grid(tiles_per_section, 1000.0 + 20_000.0 * s),
            CHANNELS,
            1,
            (TILE_PX, TILE_PX),
            PIXEL_UM,
            (TILE_PX * PIXEL_UM, TILE_PX * PIXEL_UM),
            pixel_affine_um=CAMERAS[camera],
        )
        for s in range(2)
    ]
    ramp = (np.arange(TILE_PX * TILE_PX, dtype=np.uint32).reshape(TILE_PX, TILE_PX) * 7) % 4096
    with ScanWriter.create(
        path,
        plan_yaml="name: bench\n",
        sections=layouts,
        config_path="demo.cfg",
        config_text="",
        core_state={},
    ) as writer:
        for layout in layouts:
            for t in range(tiles_per_section):
                for c in range(len(CHANNELS)):
                    writer.write_image(layout.section_id, t, c, 0, (ramp + 100 * t + c).astype(np.uint16))
                writer.complete_tile(layout.section_id, t, z_um=0.0, meta={})
    pct = np.linspace(0, 10, 40 * 40, dtype=np.float32).reshape(40, 40)
    maps = Heatmaps(pct, pct, np.ones_like(pct), np.array([1000.0, 1000.0]), 50.0, 5)
    with h5py.File(path, "r+") as f:
        for layout in layouts:
            write_analysis(
                f[f"sections/{layout.section_id}/analysis"],
                maps=maps,
                masks={},
                table=[RegionRow("section", 1e6, 5e4, 5.0, 300.0, 1.0)],
                parameters={},
            )


def child(fmt: str, scan: Path, out: Path) -> dict[str, float]:
    """Run one export in this process; return its memory growth and time."""
    from analysis.exports import export_bdv, export_csv, export_ome_zarr

    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    if fmt == "bdv":
        export_bdv(scan, out)
    elif fmt == "ome-zarr":
        export_ome_zarr(scan, out)
    else:
        export_csv(scan, out / "regions.csv")
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rss_growth_mb": round((peak_kb - before_kb) / 1024, 1),
        "traced_peak_mb": round(traced_peak / 2**20, 1),
        "seconds": round(seconds, 2),
    }


def _run_child(fmt: str, scan: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", fmt, str(scan), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{fmt} export of {scan.name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(camera: str = "aligned") -> dict[str, object]:
    """Build both scans, export each in every format in a fresh process, compare."""
    result: dict[str, object] = {
        "benchmark": "export_memory",
        "camera": camera,
        "tile_px": TILE_PX,
        "channels": len(CHANNELS),
    }
    with tempfile.TemporaryDirectory(prefix="cordscope-bench-export-") as tmp:
        scans = {}
        for n_tiles in (100, 1000):
            path = Path(tmp) / f"scan{n_tiles}.h5"
            make_scan(path, n_tiles // 2, camera)
            scans[n_tiles] = path
        tile_mb = 1000 * len(CHANNELS) * TILE_PX * TILE_PX * 2 / 2**20
        result["large_scan_pixels_mb"] = round(tile_mb, 1)
        result["large_section_mosaic_mb"] = round(tile_mb / 2 * 0.81, 1)  # 10 % overlap each way
        passed = True
        for fmt in FORMATS:
            small = _run_child(fmt, scans[100], Path(tmp) / f"{fmt}-100")
            large = _run_child(fmt, scans[1000], Path(tmp) / f"{fmt}-1000")
            diff = round(large["rss_growth_mb"] - small["rss_growth_mb"], 1)
            passed = passed and diff < BOUND_MB
            result[fmt] = {
                "tiles_100": small,
                "tiles_1000": large,
                "rss_growth_difference_mb": diff,
                "traced_peak_difference_mb": round(large["traced_peak_mb"] - small["traced_peak_mb"], 1),
            }
    result["bound_mb"] = BOUND_MB
    result["passed"] = passed
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        args = sys.argv[1:]
        chosen = args[args.index("--camera") + 1] if "--camera" in args else "aligned"
        if chosen not in CAMERAS:
            sys.exit(f"unknown --camera {chosen!r}: choose from {', '.join(CAMERAS)}")
        print(json.dumps(main(chosen)))
