"""Re-analysis after a region edit, from the stored sums, against re-segmenting every tile.

Scans the demo slide's ``rat01-Th7`` section (66 tiles at 10x, 512² sensor, live
analysis) on the demo microscope into a temporary folder (or uses ``--scan FILE``),
then moves the rubrospinal territory's boundary 20 µm outward (its outline
buffered, as an anatomist dragging it would) and times:

* ``reanalyse_ms``: the pure re-analysis (edit applied, region table and heatmaps
  from the stored per-cell sums; :func:`analysis.region_edits.reanalyse_section`),
  median of 7;
* ``apply_to_file_ms``: the same through the scan file (read, re-analyse, write the
  section's regions/table/maps and the CSV; :func:`analysis.region_edits.apply_region_edits`),
  median of 3;
* ``full_reanalysis_s``: ``cordscope analyze`` of the file (every tile corrected and
  segmented again), once;
* ``qupath_export_s`` / ``ome_tiff_mb``: :func:`analysis.qupath.export_qupath` of the section.

Prints one JSON line. Target: ``reanalyse_ms`` well under 1,000.

Run: ``.venv/bin/python benchmarks/bench_region_reanalysis.py [--scan FILE.h5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import shapely
from shapely.geometry import mapping, shape

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# isort: split
from analysis.qupath import export_qupath  # noqa: E402
from analysis.region_edits import (  # noqa: E402
    RegionEdit,
    SectionRegionSet,
    apply_region_edits,
    reanalyse_section,
)
from analysis.results_format import read_analysis  # noqa: E402

SECTION = "rat01-Th7"


def scan_demo_section(path: Path) -> None:
    """The demo section scanned with the live analysis, as ``cordscope scan`` does."""
    from tests.conftest import run_live_scan

    run_live_scan(path, section_ids=(SECTION,))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", type=Path, help="an analysed scan file holding rat01-Th7")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.scan or Path(tmp) / "th7.h5"
        if args.scan is None:
            t0 = time.perf_counter()
            scan_demo_section(path)
            scan_s = time.perf_counter() - t0
        else:
            scan_s = float("nan")
        with h5py.File(path, "r") as f:
            saved = read_analysis(f[f"sections/{SECTION}/analysis"])
        regions = SectionRegionSet.from_saved(saved)
        outline = regions.outline_um("rubrospinal_territory")
        assert outline is not None
        moved = json.loads(json.dumps(mapping(shape(outline).buffer(20.0, join_style="mitre"))))
        edit = RegionEdit("rubrospinal_territory", "edited", geometry_um=moved, who="bench", source="bench")

        pure = []
        for _ in range(7):
            result = reanalyse_section(saved, [edit])
            pure.append(result.elapsed_s)
        before = {r.region: r for r in saved.table}["rubrospinal_territory"]
        after = {r.region: r for r in result.table}["rubrospinal_territory"]

        to_file = []
        for _ in range(3):
            t0 = time.perf_counter()
            apply_region_edits(path, {SECTION: [edit]})
            to_file.append(time.perf_counter() - t0)

        from analysis.scan_analysis import analyze_scan

        t0 = time.perf_counter()
        analyze_scan(path)
        full_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        written = export_qupath(path, Path(tmp) / "qupath", overwrite=True)
        qupath_s = time.perf_counter() - t0
        tif = next(p for p in written if p.suffix == ".tif")
        print(
            json.dumps(
                {
                    "benchmark": "region_reanalysis",
                    "section": SECTION,
                    "grid_cells": int(saved.masks["section"].size),
                    "regions": len(saved.masks),
                    "scan_s": round(scan_s, 1),
                    "reanalyse_ms": round(1000 * statistics.median(pure), 1),
                    "apply_to_file_ms": round(1000 * statistics.median(to_file), 1),
                    "full_reanalysis_s": round(full_s, 1),
                    "speedup": round(full_s / statistics.median(to_file), 0),
                    "territory_area_mm2": [round(before.area_um2 / 1e6, 4), round(after.area_um2 / 1e6, 4)],
                    "territory_pct_axonal_area": [
                        round(before.pct_axonal_area, 3),
                        round(after.pct_axonal_area, 3),
                    ],
                    "qupath_export_s": round(qupath_s, 1),
                    "ome_tiff_mb": round(tif.stat().st_size / 1e6, 1),
                    "target_reanalyse_ms": 1000,
                    "shapely": shapely.__version__,
                }
            )
        )


if __name__ == "__main__":
    main()
